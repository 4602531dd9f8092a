"""The slide call on mosaics of patients the rule was NOT chosen on: small foci and benign-only slides.

Mosaics (core.slide.mosaic) of `--rows` x `--cols` fields at the model's scale: benign-only ones,
and ones whose connected malignant focus (one patient's fields) covers 10-25 % of the tissue.
Every other mosaic is offset by half a field (its fields straddle the tile grid). Each runs
through the real SlidePredictor with the model card's slide rule (core.slide.call).
Goal: every focus slide called malignant with its driving region on the focus, every benign-only
slide called benign.

Patients: `--split test` (default) takes the model's own test split (rebuilt from its card on
`--data`: no patient the model or its slide rule has seen); `--split unseen` takes every patient
of `--data` absent from ../shared/breakhis/manifest-listed real set (for a full BreakHis copy).

    python bench/slide_call.py --model models/small-cnn --data ../shared/breakhis/real
    python bench/slide_call.py --smoke     # 1 benign and 1 focus mosaic of 2x3 fields, one malignant patient

The bundled models/default learnt from every patient of ../shared (its figures are its
cross-validation's), so it has no test patients here: use --split unseen on a full BreakHis copy.
Without --model: models/small-cnn, which has a test split here.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np  # noqa: E402
from common import add_smoke, emit, machine  # noqa: E402 - also puts this checkout's core first

from core.data.breakhis import index_folder  # noqa: E402
from core.data.scale import model_scale  # noqa: E402
from core.model.loading import load_predictor  # noqa: E402
from core.slide.call import apply_rule, slide_rule_of  # noqa: E402
from core.slide.choose import run_mosaics  # noqa: E402
from core.slide.mosaic import build_mosaic, field_slot, fields_at_scale  # noqa: E402

SHARED_REAL = Path(__file__).resolve().parents[2] / "shared" / "breakhis" / "real"


def patients(args, predictor):
    if args.split == "test":
        from core.data.selection import SplitSpec, select_images
        from core.training.runcard import cross_validation_folds

        folds = cross_validation_folds(predictor.card)
        if folds:
            raise SystemExit(f"{args.model} learnt from every patient of its {folds}-fold cross-validation: it has "
                             "no test patients here; its slide rule's figures on held-out patients are in its card "
                             "(thresholds.slide_rule.validation); --split unseen takes the patients of a full "
                             "BreakHis copy that are not in ../shared")
        training = predictor.card.get("training") or {}
        spec = SplitSpec(protocol=training.get("split_protocol", "patient-wise"), seed=int(training.get("seed", 0)),
                         magnification=training.get("magnification", "all"))
        return select_images(args.data, spec, report_skipped=False).part("test").reset_index(drop=True)
    table = index_folder(args.data).images
    seen = set(index_folder(SHARED_REAL).images["case"]) if SHARED_REAL.is_dir() else set()
    return table[~table["case"].isin(seen)].reset_index(drop=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/small-cnn",
                        help="model folder (default: models/small-cnn, which has test patients here; models/default "
                             "learnt from every patient: use it with --split unseen)")
    parser.add_argument("--data", type=Path, default=SHARED_REAL)
    parser.add_argument("--split", choices=("test", "unseen"), default="test")
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--cols", type=int, default=5)
    parser.add_argument("--per-patient", type=int, default=2, help="focus mosaics per malignant patient")
    parser.add_argument("--benign", type=int, default=10, help="benign-only mosaics")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path)
    add_smoke(parser)
    args = parser.parse_args()
    if args.smoke:
        args.rows, args.cols, args.per_patient, args.benign = 2, 3, 1, 1

    predictor = load_predictor(args.model)
    scale = model_scale(predictor.card)
    fields = fields_at_scale(patients(args, predictor), scale["mpp"])
    benign, malignant = fields[fields["label"] == "benign"], fields[fields["label"] == "malignant"]
    n = args.rows * args.cols
    sizes = [k for k in range(1, n + 1) if 0.10 <= k / n <= 0.25] or [1]
    rng = np.random.default_rng(args.seed)
    rule, where, _ = slide_rule_of(predictor.card)
    with tempfile.TemporaryDirectory(prefix="slide-call-bench-") as folder:
        mosaics = [build_mosaic(Path(folder) / f"benign_{i}.tif", benign, focus=0, grid=(args.rows, args.cols),
                                seed=args.seed * 1000 + i, mpp=scale["mpp"], slot=field_slot(fields, scale["mpp"]), levels=2,
                                margin=0.5 if i % 2 else 1.0)
                   for i in range(args.benign)]
        for case in sorted(malignant["case"].unique())[:1 if args.smoke else None]:
            for i in range(args.per_patient):
                mosaics.append(build_mosaic(Path(folder) / f"focus_{case}_{i}.tif", benign, malignant,
                                            focus=int(rng.choice(sizes)), grid=(args.rows, args.cols),
                                            seed=args.seed * 1000 + 500 + len(mosaics), mpp=scale["mpp"],
                                            slot=field_slot(fields, scale["mpp"]), focus_case=case, levels=2,
                                            margin=0.5 if i % 2 else 1.0))
        runs = run_mosaics(predictor, mosaics)
    rows = []
    for mosaic, run in zip(mosaics, runs):
        positive, regions = apply_rule(rule, run.tiles)
        position = {label: i for i, label in enumerate(run.tiles.index)}
        on_focus = positive and any(run.focus[position[r]] for r in regions[0].rows)
        rows.append({"mosaic": mosaic.path.name, "focus_fields": run.focus_fields, "focus_share": mosaic.focus_share,
                     "case": run.case, "called": "malignant" if positive else "benign", "on_focus": bool(on_focus),
                     "driving_score": regions[0].score if positive else None,
                     "best_region_score": regions[0].score if regions else None,
                     "max_tile_p": float(run.tiles["p_malignant"].max())})
    focus = [r for r in rows if r["focus_fields"]]
    benign_rows = [r for r in rows if not r["focus_fields"]]
    result = {
        "bench": "slide_call", "model": args.model, "rule": rule.describe(), "rule_source": where,
        "split": args.split, "grid": [args.rows, args.cols], "focus_sizes": sizes,
        "patients": {"benign": int(benign["case"].nunique()), "malignant": int(malignant["case"].nunique()),
                     "fields": int(len(fields))},
        "sensitivity": float(np.mean([r["called"] == "malignant" for r in focus])) if focus else None,
        "localised": float(np.mean([r["on_focus"] for r in focus])) if focus else None,
        "specificity": float(np.mean([r["called"] == "benign" for r in benign_rows])) if benign_rows else None,
        "goal_met": all(r["on_focus"] for r in focus) and all(r["called"] == "benign" for r in benign_rows),
        "mosaics": rows, "machine": machine()}
    return emit(result, args.out, smoke=args.smoke)


if __name__ == "__main__":
    raise SystemExit(main())
