"""Probe: the field recipe's CV with each patient of a subtype drawn equally often (the subtype's
share of the batches unchanged, 1/sqrt of its count), instead of each image.

Within a subtype one patient may hold most images (mucinous carcinoma: 87 of 159 from one patient),
so the network may learn that patient rather than the subtype. Scratch probe: it wraps
core.training.field_fit.sampling (which sees only subtypes) with the rows' patients, and runs the
installed recipe's CV unchanged otherwise.

    PYTHONPATH=. python experiments/i25/patient_draw_probe.py -- <train options>
"""

import sys

import numpy as np

import core.training.field_fit as field_fit
import core.training.field_run as field_run
from core.cli import main

original_fit, original_sampling = field_run.fit_classifier, field_fit.sampling
cases = {}


def fit_classifier(fields, rows, config, writer, phase="fields"):
    cases["now"] = rows["case"].to_numpy()
    return original_fit(fields, rows, config, writer, phase)


def sampling(subtypes):
    draw, class_weights, subtype_weights = original_sampling(subtypes)
    subtypes, patients = np.asarray(subtypes), cases.get("now")
    if patients is None or len(patients) != len(subtypes):
        return draw, class_weights, subtype_weights
    balanced = np.zeros_like(draw)
    for s in np.unique(subtypes):  # the subtype's total share stays; its patients split it equally
        mine = subtypes == s
        people = np.unique(patients[mine])
        for p in people:
            theirs = mine & (patients == p)
            balanced[theirs] = draw[mine].sum() / len(people) / theirs.sum()
    return balanced / balanced.sum(), class_weights, subtype_weights


field_run.fit_classifier, field_fit.sampling = fit_classifier, sampling
sys.exit(main(sys.argv[sys.argv.index("--") + 1:]))
