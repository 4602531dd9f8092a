"""Subtype heads refitted as class-balanced logistic regressions on the trained network's features.

Why: on the same folds and fold models (three 5-fold CVs of the field recipe, 757 images, 46
patients), a multinomial logistic regression on the features the heads read (the multi-scale
concatenation, one row per prediction view) scored pooled out-of-fold subtype macro-F1 0.167 /
0.162 / 0.201 where the jointly trained heads scored 0.109 / 0.110 / 0.145: with 2-6 patients per
benign subtype, the heads end training confidently wrong on new patients (their fitted temperature
was 20), a convex, L2-regularised fit with balanced class weights does not. The backbone and the
stage-1 head are untouched (refitting stage 1 the same way did not help).

The regression is written INTO the existing head, so the model, its card, Grad-CAM and every
loader stay as they are: a head is hidden = relu(A x + c) -> dropout (identity at inference) ->
softmax(B hidden + d). With A = [W; -W], c = [b; -b] (the other units zero) and B = [I, -I], d = 0,
the logits are relu(z) - relu(-z) = z = W x + b exactly. scikit-learn fits it (lbfgs, the same
library as the baselines); the standardisation it was fitted with is folded into W and b.
"""

from __future__ import annotations

import keras
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from core.data.fields import ViewSpec
from core.data.labels import CLASSES, STAGE2_OUTPUTS, SUBTYPES_BY_CLASS
from core.training.field_fit import by_field, view_batches

FEATURES = "multiscale_concat"  # the layer every head reads (core.model.classifier.Heads)
REFIT_C = 0.1  # L2 strength: of 0.003-1 on the three CVs, 0.1 and 1 were best and within 0.01 of each other


def view_features(classifier: keras.Model, fields: np.ndarray, spec: ViewSpec, magnifications=None) -> np.ndarray:
    """(N, views, D): the heads' input features of every prediction view of every field."""
    extractor = keras.Model(classifier.inputs, classifier.get_layer(FEATURES).output)
    chunks = []
    for views, n in view_batches(fields, spec, magnifications):
        chunks.append(by_field(keras.ops.convert_to_numpy(extractor.predict_on_batch(views)), n, spec))
    return np.concatenate(chunks)


def fit_linear(features: np.ndarray, labels: np.ndarray, classes: list[str], c: float = REFIT_C):
    """(W (k, D), b (k,)) of a class-balanced multinomial regression on raw features, in `classes`
    order; a class absent from `labels` gets logit -30 (never chosen, as a head that never saw it)."""
    scaler = StandardScaler().fit(features)
    seen = set(labels)
    present = [k for k in classes if k in seen]
    w, b = np.zeros((len(classes), features.shape[1])), np.full(len(classes), -30.0)
    if len(present) == 1:
        b[classes.index(present[0])] = 0.0
        return w, b
    model = LogisticRegression(C=c, class_weight="balanced", max_iter=3000).fit(scaler.transform(features), labels)
    coef = model.coef_ if len(present) > 2 else np.stack([-model.coef_[0], model.coef_[0]]) / 2
    intercept = model.intercept_ if len(present) > 2 else np.array([-model.intercept_[0], model.intercept_[0]]) / 2
    for row, name in enumerate(model.classes_):
        k = classes.index(name)
        w[k] = coef[row] / scaler.scale_
        b[k] = intercept[row] - w[k] @ scaler.mean_
    return w, b


def write_linear_head(classifier: keras.Model, head: str, w: np.ndarray, b: np.ndarray) -> None:
    """Make `head` (hidden relu dense -> dropout -> softmax dense) compute softmax(W x + b) exactly."""
    hidden, out = classifier.get_layer(f"{head}_dense"), classifier.get_layer(head)
    k, d = w.shape
    units = hidden.kernel.shape[-1]
    if units < 2 * k:
        raise ValueError(f"{head}: {units} hidden units cannot hold a {k}-class linear head (needs {2 * k})")
    a, c = np.zeros((d, units)), np.zeros(units)
    a[:, :k], a[:, k:2 * k], c[:k], c[k:2 * k] = w.T, -w.T, b, -b
    bk = np.zeros((units, k))
    bk[:k], bk[k:2 * k] = np.eye(k), -np.eye(k)
    hidden.set_weights([a.astype("float32"), c.astype("float32")])
    out.set_weights([bk.astype("float32"), np.zeros(k, "float32")])


def refit_subtype_heads(classifier: keras.Model, fields: np.ndarray, subtypes, spec: ViewSpec,
                        magnifications=None, c: float = REFIT_C) -> dict:
    """Refit both subtype heads on the training fields' view features (one row per view); returns
    what was fitted, for the card. The fields must be the ones the network was trained on."""
    subtypes = np.asarray(subtypes)
    features = view_features(classifier, fields, spec, magnifications)
    views = features.shape[1]
    fitted = {}
    for label in CLASSES:
        mine = np.isin(subtypes, SUBTYPES_BY_CLASS[label])
        if not mine.any():
            continue
        rows = features[mine].reshape(-1, features.shape[-1])
        w, b = fit_linear(rows, np.repeat(subtypes[mine], views), list(SUBTYPES_BY_CLASS[label]), c)
        write_linear_head(classifier, STAGE2_OUTPUTS[label], w, b)
        fitted[STAGE2_OUTPUTS[label]] = {"fields": int(mine.sum()), "rows": int(len(rows))}
    return {"method": "class-balanced multinomial logistic regression on the heads' input features of every "
                      "prediction view of the training fields (core.training.head_refit)", "C": c, "heads": fitted}
