"""Issue 25 probe (archived, not part of the project): the subtype refit (core.training.head_refit)
on the network's features plus per-view colour and stain statistics that a layer could compute from
the same views inside the model pass (RGB mean/std, an 8-bin histogram per channel, haematoxylin
and eosin density mean/std/10-50-90th percentiles); on a cross-validation's saved fold models,
prints pooled out-of-fold subtype macro-F1 (with a 95 % patient-bootstrap interval) (hierarchical: the subtype within the fold model's
stage-1 call) for the network's features alone (the installed refit), the statistics alone, both,
and both with the colour/texture baseline's field features (LBP included) for reference.

    PYTHONPATH=. python experiments/i25/colour_stats_probe.py RUN ../shared/breakhis/real [VARIANT,VARIANT...]
"""
import json, sys
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.preprocessing import StandardScaler
from core.data.labels import CLASSES, SUBTYPES, SUBTYPES_BY_CLASS
from core.data.stain import HED_FROM_RGB
from core.evaluation.baselines import image_features
from core.training.field_fit import by_field, predict_views, view_batches
from core.training.field_run import view_spec
from core.training.rescore import saved_cv, saved_folds
from core.training.head_refit import view_features


def view_stats(views):
    """(V, 40) colour/stain statistics of (V, h, w, 3) views in 0..255."""
    x = np.asarray(views, np.float64).reshape(len(views), -1, 3)
    mean, std = x.mean(1) / 255, x.std(1) / 255
    bins = np.clip((x // 32).astype(int), 0, 7)
    hist = np.stack([np.stack([(bins[:, :, c] == b).mean(1) for b in range(8)], 1) for c in range(3)], 1).reshape(len(x), -1)
    od = -np.log10(np.clip(x, 1, 255) / 255.0)
    hed = od @ HED_FROM_RGB
    he = hed[..., :2]
    q = np.percentile(he, [10, 50, 90], axis=1).transpose(1, 0, 2).reshape(len(x), -1)
    return np.concatenate([mean, std, hist, he.mean(1), he.std(1), q], 1)


def stats_of(fields, spec, mags):
    chunks = []
    for views, n in view_batches(fields, spec, mags):
        chunks.append(by_field(view_stats(views), n, spec))
    return np.concatenate(chunks)


run, data = sys.argv[1], sys.argv[2]
config, table, fields = saved_cv(run, data)
spec, mags = view_spec(config), table["magnification"]
VARIANTS = tuple(sys.argv[3].split(",")) if len(sys.argv) > 3 else (
    "cnn", "stats", "cnn+stats", "cnn+stats_x3", "cnn+stats+baseline", "stats+baseline")
field_feats = np.stack([image_features(f) for f in fields]) if any("baseline" in v for v in VARIANTS) else np.zeros((len(fields), 0))
truth, cases, preds = [], [], {v: [] for v in VARIANTS}
sub = table["subtype"].to_numpy()
for k, (held, seen, model) in enumerate(saved_folds(run, config, table)):
    stage1 = predict_views(model, fields[held], spec, magnifications=mags.iloc[held])["stage1"]
    label = np.array(CLASSES)[stage1.argmax(1)]
    parts = {}
    for name, idx in (("tr", seen), ("te", held)):
        cnn = view_features(model, fields[idx], spec, mags.iloc[idx])
        st = stats_of(fields[idx], spec, mags.iloc[idx])
        base = np.repeat(field_feats[idx][:, None], cnn.shape[1], 1)
        parts[name] = {"cnn": cnn, "stats": st, "baseline": base}
    for variant in VARIANTS:
        def build(p):
            names = variant.replace("_x3", "").split("+")
            return np.concatenate([p[n] for n in names], -1)
        ftr, fte = build(parts["tr"]), build(parts["te"])
        views = ftr.shape[1]
        chosen = np.empty(len(held), object)
        for c in CLASSES:
            mine = np.isin(sub[seen], SUBTYPES_BY_CLASS[c])
            x = ftr[mine].reshape(-1, ftr.shape[-1]); y = np.repeat(sub[seen][mine], views)
            sc = StandardScaler().fit(x)
            scale = np.ones(x.shape[1])
            if variant.endswith("_x3"):
                scale[parts["tr"]["cnn"].shape[-1]:] = 3.0
            lr = LogisticRegression(C=0.1, class_weight="balanced", max_iter=3000).fit(sc.transform(x) * scale, y)
            p = lr.predict_proba(sc.transform(fte.reshape(-1, fte.shape[-1])) * scale).reshape(len(held), views, -1).mean(1)
            pick = np.array(lr.classes_)[p.argmax(1)]
            chosen[label == c] = pick[label == c]
        preds[variant].append(chosen)
    truth.append(sub[held])
    cases.append(table["case"].to_numpy()[held])
    print("fold", k, {v: round(f1_score(np.concatenate(truth), np.concatenate(p), labels=list(SUBTYPES), average="macro"), 3)
                      for v, p in preds.items()}, flush=True)
truth, cases = np.concatenate(truth), np.concatenate(cases)
rng, patients = np.random.default_rng(0), np.unique(cases)
rows_of = {c: np.flatnonzero(cases == c) for c in patients}
draws = [np.concatenate([rows_of[c] for c in rng.choice(patients, len(patients))]) for _ in range(2000)]
out = {}
for v, p in preds.items():
    p = np.concatenate(p)
    f1 = lambda i: f1_score(truth[i], p[i], labels=list(SUBTYPES), average="macro")
    boot = [f1(i) for i in draws]
    out[v] = [round(f1(np.arange(len(truth))), 4), round(float(np.percentile(boot, 2.5)), 3),
              round(float(np.percentile(boot, 97.5)), 3)]
print(json.dumps(out))
