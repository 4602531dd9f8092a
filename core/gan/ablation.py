"""Does GAN fill help the classifier? The same classifier on the same split, with and without it.

    python -m core gan ablation --data DIR --gan runs/gan-X/model --out runs/ablation-X [--subtypes ...]
        [--pipeline fields]

Both arms are ordinary training runs (core.training.fit, or the field recipe's core.training.field_run
with --pipeline fields) on the split the generator learned from; a generator that saw other patients
(core.data.synthetic.leak_check) is refused unless asked. The field recipe's arms are scored on
every patient neither the classifier nor the generator saw (validation and test), with each
subtype's F1 and a patient-bootstrap interval: with 2-4 patients for some subtypes, one split's
difference means little without them.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from core.data.labels import SUBTYPES
from core.data.selection import select_images
from core.data.synthetic import leak_check, provenance_of
from core.errors import UserInputError
from core.evaluation.intervals import HEADLINE_NAMES, format_interval, headline_intervals, subtype_f1_intervals
from core.gan.gallery import ABLATION_FILE
from core.gan.sampling import fill_folder_from_generator
from core.jsonfile import read_json, write_json_atomic
from core.model.folders import GENERATOR, read_card
from core.training.config import TrainConfig
from core.training.field_run import train_fields
from core.training.fit import train


def _summary(run_dir: Path) -> dict:
    metrics = read_json(run_dir / "metrics.json")
    card = read_card(run_dir / "model")
    per_class = metrics["subtype8"]["per_class"]
    return {"macro_f1": metrics["subtype8"]["macro_f1"], "subtype_accuracy": metrics["subtype_accuracy"],
            "stage1_accuracy": metrics["stage1_accuracy"], "test_images": metrics["images"],
            "recall": {s: per_class[s]["recall"] if per_class.get(s, {}).get("support") else None
                       for s in SUBTYPES},  # no test image of a subtype: recall is undefined, not 0
            "support": {s: int(per_class[s]["support"]) if s in per_class else 0 for s in SUBTYPES},
            "synthetic_by_subtype": card["training"].get("synthetic_by_subtype", {})}


def _fields_summary(run_dir: Path) -> dict:
    """A fields arm on its validation and test patients together (calibration and referral, chosen on
    validation, never change a call), with case-bootstrap intervals."""
    table = pd.read_csv(run_dir / "predictions.csv")
    card = read_card(run_dir / "model")
    return {"evaluated_on": f"validation and test patients ({len(table)} images, {table['case'].nunique()} patients)",
            "headline": headline_intervals(table, "image, patients resampled"), "subtype_f1": subtype_f1_intervals(table),
            "synthetic_by_subtype": card["training"].get("synthetic_by_subtype", {}),
            "train_seconds": card["training"]["seconds"]}


def run_ablation(data, gan_dir, out, subtypes=None, allow_leak: bool = False, **train_options) -> dict:
    """The same classifier on the same split, trained with balance "none" and with GAN fill."""
    out = Path(out)
    card = read_card(gan_dir, kind=GENERATOR)
    options = {"split": "patient-wise", "seed": 0, "magnification": "all", **train_options}
    spec = TrainConfig(data=str(data), out=str(out), **options).split_spec()
    selection = select_images(data, spec, report_skipped=False)
    leak = leak_check(provenance_of(card), selection.fingerprint, spec)
    if leak and not allow_leak:
        raise UserInputError(f"Refusing the ablation: {leak}. Train the GAN with the classifier's --split/--seed "
                         "(python -m core gan train --split ...), or pass --allow-gan-leak to run it anyway.")
    subtypes = list(subtypes or card["subtypes"])
    unknown = sorted(set(subtypes) - set(card["subtypes"]))
    if unknown:
        raise UserInputError(f"The generator was not trained on {unknown}; it knows {card['subtypes']}")
    train_counts = selection.part("train")["subtype"].value_counts()
    counts, target = {s: int(train_counts.get(s, 0)) for s in SUBTYPES}, int(train_counts.max())
    need = {s: max(0, target - counts[s]) for s in subtypes}
    written = fill_folder_from_generator(gan_dir, subtypes, need, out / "synthetic", seed=options["seed"])
    runs = {}
    fields = options.get("pipeline") == "fields"
    for balance in ("none", "synthetic"):
        config = TrainConfig(data=str(data), out=str(out / balance), balance=balance, allow_gan_leak=allow_leak,
                             synthetic_dir=str(out / "synthetic") if balance == "synthetic" else None, **options)
        (train_fields if fields else train)(config)
        runs[balance] = (_fields_summary if fields else _summary)(out / balance)
    splits = [gan_free_split(out / b) for b in runs]
    result = {"gan": str(gan_dir), "gan_leak": leak, "filled_subtypes": subtypes, "synthetic_written": written,
              "train_counts_before": counts, "same_split": bool(splits[0].equals(splits[1])),
              "options": {k: v for k, v in options.items()}, "runs": runs}
    write_json_atomic(out / "ablation.json", result)
    write_json_atomic(Path(gan_dir) / ABLATION_FILE, result)  # what the gallery states of this generator
    (out / "ablation.md").write_text((format_fields_ablation if fields else format_ablation)(result) + "\n")
    return result


def gan_free_split(run_dir: Path):
    """The real rows of a run's split.csv (path, split), sorted: equal iff the splits are equal."""
    split = pd.read_csv(run_dir / "split.csv")
    real = split[~split["synthetic"].astype(bool)]
    return real[["path", "split"]].sort_values("path").reset_index(drop=True)


def format_ablation(result: dict) -> str:
    none, synthetic = result["runs"]["none"], result["runs"]["synthetic"]
    lines = [f"Ablation on the same split (identical: {result['same_split']}); GAN {result['gan']}",
             f"filled subtypes: {', '.join(result['filled_subtypes'])}"
             + (f"; WARNING: {result['gan_leak']}" if result["gan_leak"] else ""),
             "", "| | no GAN fill | GAN fill |", "|---|---|---|"]

    def fmt(value) -> str:  # a figure the test split leaves undefined (a class absent) is n/a, not a crash
        return format_interval({"value": value})

    lines += [f"| {name} | {fmt(none[key])} | {fmt(synthetic[key])} |" for name, key in
              (("subtype macro-F1", "macro_f1"), ("subtype accuracy", "subtype_accuracy"),
               ("stage-1 accuracy", "stage1_accuracy"))]
    for s in SUBTYPES:
        a, b = none["recall"][s], synthetic["recall"][s]
        added = synthetic["synthetic_by_subtype"].get(s, 0)
        lines.append(f"| recall {s} (test n={none['support'][s]}, +{added} synthetic) | {fmt(a)} | {fmt(b)} |")
    return "\n".join(lines)


def format_fields_ablation(result: dict) -> str:
    none, synthetic = result["runs"]["none"], result["runs"]["synthetic"]

    def cell(block):
        if block.get("value") is None:
            return "n/a"
        return f"{block['value']:.3f} [{block['low']:.2f}, {block['high']:.2f}]" if block.get("low") is not None \
            else f"{block['value']:.3f}"

    lines = [f"Ablation, field recipe, same split (identical: {result['same_split']}); GAN {result['gan']}; "
             f"scored on {none['evaluated_on']}; 95 % patient-bootstrap intervals",
             f"filled subtypes: {', '.join(result['filled_subtypes'])}"
             + (f"; WARNING: {result['gan_leak']}" if result["gan_leak"] else ""),
             "", "| | no GAN fill | GAN fill |", "|---|---|---|"]
    for name in ("subtype_macro_f1", "stage1_balanced_accuracy", "stage1_auc"):
        lines.append(f"| {HEADLINE_NAMES[name]} | {cell(none['headline'][name])} | {cell(synthetic['headline'][name])} |")
    for s in SUBTYPES:
        a, b = none["subtype_f1"][s], synthetic["subtype_f1"][s]
        lines.append(f"| F1 {s} ({a['images']} images, {a['patients']} patients; "
                     f"+{synthetic['synthetic_by_subtype'].get(s, 0)} synthetic) | {cell(a)} | {cell(b)} |")
    lines.append(f"| training seconds | {none['train_seconds']:.0f} | {synthetic['train_seconds']:.0f} |")
    return "\n".join(lines)
