"""Robustness to other labs' staining: how often do a model's calls change under controlled stain
shifts, with and without stain normalisation? (core.evaluation.robustness)

    python bench/stain_shift.py [--model models/default] [--data DIR] [--method macenko|reinhard]
                                [--out bench/results/stain_shift.json] [--plot bench/results/stain_shift.html]
                                [--smoke]

Images: every BreakHis image under --data (default: the bundled samples), restricted to the model's
held-out test cases when its card names them (--all-images to use every one). "With" normalisation
is the model's own normaliser when it was trained with one; otherwise a normaliser of --method
fitted to the unshifted images (a reference from the lab the model is used in). Prints JSON.
--smoke: the first 3 images only (seconds; CI).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from common import add_smoke, emit  # noqa: E402 - bench/common.py (the script's own folder)

from core.data.breakhis import index_folder  # noqa: E402
from core.data.images import load_image  # noqa: E402
from core.data.stain import get_normalizer  # noqa: E402
from core.evaluation.robustness import SHIFTS, shift_report, with_normalizer  # noqa: E402
from core.model.loading import load_predictor  # noqa: E402
from core.paths import DEFAULT_MODEL_DIR, SAMPLES_DIR  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEFAULT_MODEL_DIR))
    parser.add_argument("--data", default=str(SAMPLES_DIR))
    parser.add_argument("--method", default="macenko", choices=("macenko", "reinhard"))
    parser.add_argument("--all-images", action="store_true", help="do not restrict to the model's test cases")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--plot", type=Path)
    add_smoke(parser)
    args = parser.parse_args(argv)

    predictor = load_predictor(args.model)
    table = index_folder(args.data).images
    test_cases = ((predictor.card.get("metrics") or {}).get("test_set") or {}).get("cases")
    if test_cases and not args.all_images:
        held_out = table[table["case"].astype(str).isin(test_cases)]
        table = held_out if len(held_out) else table
    if args.smoke:
        table = table.head(3)
    images = [load_image(path, check_histology=False).rgb for path in table["path"]]
    own = predictor.normalizer.method != "none"
    normalizer = predictor.normalizer if own else get_normalizer(args.method).fit(images, "the unshifted images")
    plain = with_normalizer(predictor, get_normalizer("none"))
    result = {
        "bench": "stain_shift", "model": predictor.name, "images": len(images), "cases": int(table["case"].nunique()),
        "held_out_only": bool(test_cases and not args.all_images and len(table) < len(index_folder(args.data).images)),
        "normalisation": {"method": normalizer.method, "reference": normalizer.fitted_on,
                          "model_trained_with_it": own},
        "without_normalisation": shift_report(plain, images),
        "with_normalisation": shift_report(with_normalizer(predictor, normalizer), images),
        "shifts": list(SHIFTS),
    }
    emit(result, args.out, args.smoke)
    if args.plot:
        import plotly.graph_objects as go

        figure = go.Figure()
        for key in ("without_normalisation", "with_normalisation"):
            figure.add_bar(name=key.replace("_", " "), x=list(SHIFTS), y=[result[key][s]["stage1_changed"] for s in SHIFTS])
        figure.update_layout(barmode="group", template="plotly_white", yaxis_title="share of stage-1 calls changed",
                             title=f"{predictor.name}: stage-1 calls changed by stain shifts ({len(images)} images)")
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        figure.write_html(args.plot, include_plotlyjs=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
