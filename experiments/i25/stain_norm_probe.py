"""Probe: the field recipe's CV with every field stain-normalised (Macenko, torchstain's default
reference: nothing fitted, so nothing leaks across folds) before training and prediction.

Subtypes have 2-4 patients each in ../shared, so a patient's stain may stand in for its subtype;
normalising every field to one stain basis removes that shortcut. Scratch probe: it wraps
core.training.field_run.load_field_data and runs the installed recipe's CV unchanged otherwise.

    PYTHONPATH=. python experiments/i25/stain_norm_probe.py [macenko|reinhard] -- <train options>
"""

import concurrent.futures
import sys

import numpy as np

import core.training.field_run as field_run
from core.cli import main
from core.data.stain import get_normalizer

method = sys.argv[1]
normalizer = get_normalizer(method)
original = field_run.load_field_data


def normalised(config):
    table, fields = original(config)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        out = list(pool.map(lambda f: normalizer.transform(f)[0], fields))
    notes = sum(normalizer.transform(f)[1] is not None for f in fields[:50])
    print(f"stain-normalised {len(out)} fields with {method} ({notes} of the first 50 fell back)", flush=True)
    return table, np.stack(out).astype(np.uint8)


field_run.load_field_data = normalised
sys.exit(main(sys.argv[sys.argv.index("--") + 1:]))
