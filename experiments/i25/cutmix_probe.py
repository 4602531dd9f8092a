"""Probe: the field recipe's CV with CutMix between patients of the same subtype.

The installed model's errors are whole patients, and a subtype with 2-5 patients lets the network
learn those patients rather than the subtype. Pasting a rectangle of another patient's field of the
SAME subtype into a training field (the label stays exact, no label mixing) makes composite
"patients" whose stain, scanner and tissue come from two real ones. Scratch probe: it wraps
core.training.field_fit.FieldBatches.__getitem__ (which sees fields and subtypes only) with the
rows' patients, and runs the installed recipe's CV unchanged otherwise. Half of each batch's fields
get a rectangle of 25-60 % of the field's area from a random field of the same subtype and another
patient (of the same patient where the subtype has one training patient), at the same place,
seeded by (seed, epoch, step).

    PYTHONPATH=. python experiments/i25/cutmix_probe.py -- <train options>
"""

import sys

import numpy as np

import core.training.field_fit as field_fit
import core.training.field_run as field_run
from core.cli import main
from core.training.field_fit import SUBTYPE_LOGITS

original_fit, original_getitem = field_run.fit_classifier, field_fit.FieldBatches.__getitem__
cases = {}


def fit_classifier(fields, rows, config, writer, phase="fields"):
    cases["now"] = rows["case"].to_numpy()
    return original_fit(fields, rows, config, writer, phase)


def getitem(self, step):
    inputs, targets, weights = original_getitem(self, step)
    patients = cases.get("now")
    if patients is None or len(patients) != len(self.fields) or isinstance(inputs, dict):
        return inputs, targets, weights
    rng = np.random.default_rng([self.seed, self.epoch, step, 7])
    subtypes = self.targets[SUBTYPE_LOGITS]
    drawn = targets[SUBTYPE_LOGITS]
    # which fields were drawn: re-draw the same indices as the original (same generator and call)
    index = np.random.default_rng([self.seed, self.epoch, step]).choice(len(self.fields), self.batch_size,
                                                                        p=self.probabilities)
    inputs = inputs.copy()
    height, width = inputs.shape[1:3]
    for row, (i, subtype) in enumerate(zip(index, drawn)):
        if rng.random() >= 0.5:
            continue
        same = np.flatnonzero(subtypes == subtype)
        others = same[patients[same] != patients[i]]
        partner = rng.choice(others if len(others) else same)
        area = rng.uniform(0.25, 0.6)
        aspect = np.exp(rng.uniform(-0.5, 0.5))
        h = int(min(height, round(height * np.sqrt(area * aspect))))
        w = int(min(width, round(width * np.sqrt(area / aspect))))
        y, x = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
        inputs[row, y:y + h, x:x + w] = self.fields[partner, y:y + h, x:x + w]
    return inputs, targets, weights


field_run.fit_classifier, field_fit.FieldBatches.__getitem__ = fit_classifier, getitem
sys.exit(main(sys.argv[sys.argv.index("--") + 1:]))
