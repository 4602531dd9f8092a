"""The lines `python -m core evaluate` prints about an evaluation: its data, its figures and what it lacked.

Every figure goes through `number` (or format_interval), so an undefined one (no malignant image in the
data measured on, say) reads "n/a" instead of failing; the command formats them all before it writes a file.
"""

from __future__ import annotations

from core.evaluation.intervals import format_interval


def number(value, digits: int = 3) -> str:
    """A figure to `digits` decimals; "n/a" when undefined (None)."""
    return format_interval({"value": value}, digits)


def summary_lines(results: dict) -> list[str]:
    """The evaluation in a few lines (the report and metrics.json hold the rest)."""
    data = results["data"]
    lines = [f"{results['model']}: {data['split']} split, {data['protocol']}, {data['images']} images, "
             f"{data['cases']} cases"]
    for name, block in (("stage 1", results["stage1"]), ("8 subtypes", results["subtype8"]),
                        ("patients stage 1", results["patient"]["stage1"])):
        lines.append(f"  {name:17s} accuracy {number(block['accuracy'])}  balanced {number(block['balanced_accuracy'])}"
                     f"  macro F1 {number(block['macro_f1'])}")
    decision = results["malignant_threshold"]["decision"]
    lines.append(f"  decision threshold {number(decision['threshold'])} (malignant when p(malignant) >= it): malignant "
                 f"recall {number(decision['malignant_recall'])}, benign recall {number(decision['benign_recall'])}")
    favouring = results["malignant_threshold"]["recall_favouring"]
    if favouring["threshold"] is not None:
        on_split = favouring["on_split"]
        lines.append(f"  recall-favouring threshold {number(favouring['threshold'])} (target "
                     f"{number(favouring['target_recall'], 2)} on val): malignant recall "
                     f"{number(on_split['malignant_recall'])}, benign recall {number(on_split['benign_recall'])}")
    skipped = results["not_evaluated"]
    if skipped["missing"] or skipped["unreadable"]:
        lines.append(f"  WARNING: {skipped['missing']} images missing, {skipped['unreadable']} unreadable "
                     f"(e.g. {', '.join(skipped['examples'][:3])})")
    if results.get("subset"):
        lines.append(f"  SUBSET: {results['subset']['statement']}")
    return lines
