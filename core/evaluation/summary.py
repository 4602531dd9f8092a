"""The lines `python -m core evaluate` prints about an evaluation: its data, its figures and what it lacked.

Every figure goes through `number` (or format_interval), so an undefined one (no malignant image in the
data measured on, say) reads "n/a" instead of failing; the command formats them all before it writes a file.
"""

from __future__ import annotations

from core.evaluation.intervals import HEADLINE, HEADLINE_NAMES, format_interval


def number(value, digits: int = 3) -> str:
    """A figure to `digits` decimals; "n/a" when undefined (None)."""
    return format_interval({"value": value}, digits)


def headline_figure(results: dict, level: str, key: str) -> str:
    """A headline figure with its 95% interval over cases where the evaluation has one, else its value."""
    block = ((results.get("intervals") or {}).get(level) or {}).get(key)
    if isinstance(block, dict):
        return format_interval(block)
    return number(results.get(key)) if level == "image" else "n/a"


def summary_lines(results: dict, label: str | None = None) -> list[str]:
    """The evaluation in a few lines (the report and metrics.json hold the rest). label: the model's
    DEMO / LIMITED DATA label (core.app.registry.model_badge) as the first line, where it has one."""
    data, patients = results["data"], results["patient"]["stage1"]
    lines = [label] if label else []
    lines += [f"{results['model']}: {data['split']} split, {data['protocol']}, {data['images']} images, "
              f"{data['cases']} cases",
              f"  {'figure (95% CI over cases)':30s} {'image level (' + str(data['images']) + ' images)':31s} "
              f"patient level ({patients['data']['cases']} patients)"]
    lines += [f"  {HEADLINE_NAMES[key]:30s} {headline_figure(results, 'image', key):31s} {headline_figure(results, 'patient', key)}"
              for key in HEADLINE]
    lines.append(f"  without an interval: 8-subtype accuracy {number(results['subtype8']['accuracy'])}, stage-1 macro "
                 f"F1 {number(results['stage1']['macro_f1'])}, patient stage-1 macro F1 {number(patients['macro_f1'])}")
    lines += [f"  n/a for {name}: {block['not_applicable']}" for name, block in
              (("stage 1", results["stage1"]), ("8 subtypes", results["subtype8"]), ("patients", patients))
              if block.get("not_applicable")]  # why a balanced or macro figure is undefined (a class absent)
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
