"""Calibration and ensembles, measured on the learnable synthetic set (the figures of the
trust issue): ECE and Brier before and after temperature scaling on held-out cases, and an
ensemble of three small models against each of its members on the same held-out cases.

    python bench/trust_synthetic.py [--out bench/results/trust_synthetic.json] [--smoke]

--smoke: 3 cases per subtype, 1 epoch, 2 members (seconds; CI).

The set (core/testing/synthetic.py) overlaps: a fifth of the cases look like the other class, so no
model gets everything right and calibration has something to fix. Every model is trained by
core.training.fit.train, calibrated by core.training.calibrate_run.calibrate_run and combined by
core.training.ensemble_run.ensemble_run: the same code as `python -m core train / calibrate /
ensemble`. Patient-wise split (seed 0); counts are in the output. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from common import add_smoke, emit  # noqa: E402 - bench/common.py (the script's own folder)

from core.testing.synthetic import write_synthetic_breakhis  # noqa: E402 - the tests' own learnable set
from core.training.calibrate_run import calibrate_run  # noqa: E402
from core.training.ensemble_run import ensemble_run  # noqa: E402
from core.training.fit import train  # noqa: E402

TINY = dict(backbone="small_cnn", weights="none", input_size=64, batch_size=16, epochs=6, patience=6,
            baselines=False, echo_stdout=False)
KEYS = ("stage1_accuracy", "stage1_ece", "subtype_macro_f1")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "trust_synthetic.json")
    add_smoke(parser)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="trust-"))
    try:  # its data set and three trained models (~45 MB) go with the run
        return measure(work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure(work: Path, args) -> int:
    per_case, per_subtype, mislabelled = 2, (3 if args.smoke else 25), 0.2
    settings = {**TINY, "epochs": 1, "patience": 1} if args.smoke else TINY
    recipes = ((0, 3e-3), (1, 1e-3), (2, 3e-4))[:2 if args.smoke else 3]
    data = write_synthetic_breakhis(work / "data", images_per_case=per_case, cases_per_subtype=per_subtype,
                                    mislabelled=mislabelled, seed=3)
    members = []
    for seed, learning_rate in recipes:
        run = work / f"member{seed}"
        train(dict(data=str(data), out=str(run), seed=0, learning_rate=learning_rate, **settings))
        members.append(run)
    # training calibrated each member on validation; refitting returns the measured block: the raw
    # (temperature 1) and the scaled model on the test cases
    calibration = calibrate_run(members[0])["measured"]["test"]
    ensemble_run([run / "model" for run in members], work / "ensemble")
    metrics = json.loads((work / "ensemble" / "metrics.json").read_text())
    cases = per_subtype * 8
    emit({"bench": "trust_synthetic", "data": {"images": cases * per_case, "cases": cases, "mislabelled_cases": mislabelled, "protocol": "patient-wise",
                   "test": calibration["data"]},
          "calibration_of_member0_on_test": calibration["heads"],
          "temperatures": json.loads((members[0] / "model" / "card.json").read_text())["calibration"]["temperatures"],
          "ensemble": {k: metrics.get(k) for k in KEYS},
          "members": [{k: m.get(k) for k in KEYS} for m in metrics["members"]],
          "ensemble_test_data": metrics["data"]}, args.out, args.smoke)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
