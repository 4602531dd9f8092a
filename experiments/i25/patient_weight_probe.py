"""Issue 25 probe (archived, not part of the project): the subtype refit (core.training.head_refit)
with each patient of a subtype weighted equally (or by 1/sqrt of its views) instead of class-balanced
weights alone, on a cross-validation's saved fold models; prints pooled out-of-fold subtype macro-F1
(hierarchical: the subtype within the fold model's stage-1 call).

    PYTHONPATH=. python experiments/i25/patient_weight_probe.py RUN ../shared/breakhis/real
"""
import json, sys
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.preprocessing import StandardScaler
from core.data.labels import CLASSES, SUBTYPES, SUBTYPES_BY_CLASS
from core.training.field_fit import predict_views
from core.training.field_run import view_spec
from core.training.rescore import saved_cv, saved_folds
from core.training.head_refit import view_features

run, data = sys.argv[1], sys.argv[2]
config, table, fields = saved_cv(run, data)
spec, mags = view_spec(config), table["magnification"]
truth, preds = [], {"class": [], "class_patient": [], "class_patient_sqrt": []}
for k, (held, seen, model) in enumerate(saved_folds(run, config, table)):
    stage1 = predict_views(model, fields[held], spec, magnifications=mags.iloc[held])["stage1"]
    label = np.array(CLASSES)[stage1.argmax(1)]
    ftr = view_features(model, fields[seen], spec, mags.iloc[seen])
    fte = view_features(model, fields[held], spec, mags.iloc[held])
    sub, case = table["subtype"].to_numpy(), table["case"].to_numpy()
    views = ftr.shape[1]
    for variant in preds:
        chosen = np.empty(len(held), object)
        for c in CLASSES:
            mine = np.isin(sub[seen], SUBTYPES_BY_CLASS[c])
            x = ftr[mine].reshape(-1, ftr.shape[-1]); y = np.repeat(sub[seen][mine], views)
            cases = np.repeat(case[seen][mine], views)
            w = np.ones(len(y))
            if variant != "class":
                # within each subtype, every patient the same total weight (or sqrt of it)
                for s in np.unique(y):
                    for p in np.unique(cases[y == s]):
                        m = (y == s) & (cases == p)
                        w[m] = 1.0 / m.sum() if variant == "class_patient" else 1.0 / np.sqrt(m.sum())
                    w[y == s] /= w[y == s].sum()
                w *= len(y) / w.sum()
                cw = None
            else:
                cw = "balanced"
            sc = StandardScaler().fit(x)
            lr = LogisticRegression(C=0.1, class_weight=cw, max_iter=3000).fit(sc.transform(x), y, sample_weight=w)
            p = lr.predict_proba(sc.transform(fte.reshape(-1, fte.shape[-1]))).reshape(len(held), fte.shape[1], -1).mean(1)
            pick = np.array(lr.classes_)[p.argmax(1)]
            chosen[label == c] = pick[label == c]
        preds[variant].append(chosen)
    truth.append(sub[held])
    print("fold", k, "done", flush=True)
truth = np.concatenate(truth)
out = {v: round(f1_score(truth, np.concatenate(p), labels=list(SUBTYPES), average="macro"), 4) for v, p in preds.items()}
print(json.dumps(out))
