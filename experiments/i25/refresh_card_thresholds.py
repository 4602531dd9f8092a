"""Maintenance (archived): re-derive a cross-validated model folder's pooled threshold blocks (metrics.case_threshold,
metrics.malignant_threshold) from its own oof_predictions.csv with core.training.field_run._selection_figures, after
that function stopped reporting "no validation cases" for pooled out-of-fold figures; every other figure is compared
and left as written.

    PYTHONPATH=. python experiments/i25/refresh_card_thresholds.py [--write]
"""
import json, math
import pandas as pd
from core.training.field_run import _selection_figures

card = json.load(open("models/default/card.json"))
metrics_file = json.load(open("models/default/metrics.json"))
cv = json.load(open("models/default/cv.json"))
pooled = pd.read_csv("models/default/oof_predictions.csv")
referral, case_rule, metrics = _selection_figures(pooled, card["metrics"].get("evaluation") or "x")

def same(a, b, path=""):
    if isinstance(a, dict):
        return all(same(a[k], b.get(k), f"{path}.{k}") for k in a if k not in ("figures",))
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y, path) for x, y in zip(a, b))
    if isinstance(a, float) and b is not None:
        ok = math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)
    else:
        ok = a == b
    if not ok:
        print("DIFF", path, a, b)
    return ok

print("case rule same as card:", same(case_rule, card["thresholds"]["case_malignant_selection"]))
changed = {"case_threshold", "malignant_threshold"}
for key, value in metrics.items():
    if key not in changed and key in card["metrics"]:
        same(value, card["metrics"][key], key)
print("new case_threshold", metrics["case_threshold"])
print("new recall_favouring", {k: v for k, v in metrics["malignant_threshold"]["recall_favouring"].items() if k != "selected_on"})
print("decision same:", same(metrics["malignant_threshold"]["decision"], card["metrics"]["malignant_threshold"]["decision"]))
import sys
if "--write" in sys.argv:
    from core.jsonfile import write_json_atomic
    for target in (card["metrics"], metrics_file, cv["pooled"]):
        for key in changed:  # the other blocks are the same (up to the CSV's float round trip): left as written
            target[key] = metrics[key]
    for path, data in (("card.json", card), ("metrics.json", metrics_file), ("cv.json", cv)):
        write_json_atomic(f"models/default/{path}", data)
    print("written")
