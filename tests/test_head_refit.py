"""Subtype heads refitted as logistic regressions (core.training.head_refit)."""

import keras
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from core.data.fields import FIELD_PX, ViewSpec
from core.data.labels import CLASSES, STAGE1_OUTPUT, STAGE2_OUTPUTS, SUBTYPES_BY_CLASS
from core.model.classifier import build_classifier
from core.testing.synthetic import synthetic_image
from core.training.field_fit import predict_views
from core.training.head_refit import FEATURES, fit_linear, refit_subtype_heads, view_features, write_linear_head

SIZE = 64
SPEC = ViewSpec(SIZE)


def _classifier(seed=0):
    keras.utils.set_random_seed(seed)
    model, _ = build_classifier("small_cnn", "hierarchical", weights=None, input_size=SIZE, dropout=0.3)
    return model


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_a_written_head_computes_softmax_of_w_x_plus_b_exactly():
    model = _classifier()
    images = np.random.default_rng(0).uniform(0, 255, (6, SIZE, SIZE, 3)).astype("float32")
    x = np.asarray(keras.Model(model.inputs, model.get_layer(FEATURES).output).predict_on_batch(images), np.float64)
    rng = np.random.default_rng(1)
    w, b = rng.normal(0, 0.5, (4, x.shape[1])), rng.normal(0, 1, 4)
    stage1_before = np.asarray(model.predict_on_batch(images)[STAGE1_OUTPUT])
    write_linear_head(model, STAGE2_OUTPUTS["benign"], w, b)
    out = model.predict_on_batch(images)
    np.testing.assert_allclose(out[STAGE2_OUTPUTS["benign"]], _softmax(x @ w.T + b), atol=2e-5)
    np.testing.assert_allclose(out[STAGE1_OUTPUT], stage1_before, atol=1e-6)  # other heads untouched


def test_the_fitted_weights_fold_the_scaling_in_and_match_scikit_learn():
    rng = np.random.default_rng(0)
    classes = ["a", "b", "c", "d"]
    labels = np.repeat(classes, 30)
    x = rng.normal(0, 1, (120, 5)) * [1, 10, 100, 0.1, 1] + [5, -3, 40, 0, 0]
    x[:, 0] += np.repeat(np.arange(4), 30) * 2
    w, b = fit_linear(x, labels, classes, c=0.5)
    reference = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, class_weight="balanced", max_iter=3000))
    np.testing.assert_allclose(_softmax(x @ w.T + b), reference.fit(x, labels).predict_proba(x), atol=1e-6)
    assert (_softmax(x @ w.T + b).argmax(1) == np.repeat(np.arange(4), 30)).mean() > 0.7


def test_two_present_classes_give_scikit_learns_probabilities_and_an_absent_class_is_never_chosen():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(-1, 1, (40, 3)), rng.normal(1, 1, (20, 3))])
    labels = np.array(["b"] * 40 + ["d"] * 20)
    w, b = fit_linear(x, labels, ["a", "b", "c", "d"])
    p = _softmax(x @ w.T + b)
    reference = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, class_weight="balanced", max_iter=3000))
    np.testing.assert_allclose(p[:, [1, 3]], reference.fit(x, labels).predict_proba(x), atol=1e-6)
    assert p[:, [0, 2]].max() < 1e-9
    only = fit_linear(x, np.array(["c"] * 60), ["a", "b", "c", "d"])
    assert (_softmax(x @ only[0].T + only[1]).argmax(1) == 2).all()


def _fields(per_subtype, seed):
    rng = np.random.default_rng(seed)
    subtypes = [s for label in CLASSES for s in SUBTYPES_BY_CLASS[label] for _ in range(per_subtype)]
    height, width = FIELD_PX[1], FIELD_PX[0]
    return np.stack([synthetic_image(s, rng, size=(width, height)) for s in subtypes]), np.array(subtypes)


@pytest.fixture(scope="module")
def fields():
    return _fields(12, seed=0), _fields(4, seed=1)


def test_view_features_have_one_row_per_declared_view(fields):
    (train, _), _ = fields
    features = view_features(_classifier(), train[:3], SPEC)
    assert features.shape[:2] == (3, SPEC.views_per_image)
    assert not np.allclose(features[:, 0], features[:, 1])  # different views, different features


def test_refitted_heads_learn_the_subtypes_of_new_fields(fields):
    """An untrained network's subtype heads are at chance; refitted on its features of labelled
    fields, they name the subtype of fields they never saw (a stripe period per subtype)."""
    (train, train_subtypes), (test, test_subtypes) = fields
    model = _classifier()

    def accuracy():
        p = predict_views(model, test, SPEC)
        right = []
        for label in CLASSES:
            mine = np.isin(test_subtypes, SUBTYPES_BY_CLASS[label])
            names = np.array(SUBTYPES_BY_CLASS[label])[p[STAGE2_OUTPUTS[label]][mine].argmax(1)]
            right.extend(names == test_subtypes[mine])
        return np.mean(right)

    before = accuracy()
    record = refit_subtype_heads(model, train, train_subtypes, SPEC)
    after = accuracy()
    assert before < 0.5 and after >= 0.8, (before, after)
    assert record["heads"][STAGE2_OUTPUTS["benign"]] == {"fields": 48, "rows": 48 * SPEC.views_per_image}


def test_refit_cv_scores_the_same_fold_models_before_and_after(synthetic_breakhis, tmp_path):
    """core.training.rescore.refit_cv on a CV trained without the refit: the held-out subtypes of
    fold models whose heads barely trained are named far better once the heads are refitted on each
    fold's training patients; stage 1 is untouched."""
    from core.cli import main
    from core.training.rescore import refit_cv

    out = tmp_path / "cv"
    assert main(["train", "--pipeline", "fields", "--data", str(synthetic_breakhis), "--out", str(out), "--folds", "2",
                 "--no-final-model", "--backbone", "small_cnn", "--weights", "none", "--input-size", "48",
                 "--epochs", "1", "--batch-size", "16", "--warmup-steps", "2"]) == 0
    result = refit_cv(out, synthetic_breakhis)
    before, after = result["before"], result["after"]
    assert result["images"] == 96 and result["patients"] == 24
    assert after["stage1_balanced_accuracy"] == before["stage1_balanced_accuracy"]
    assert after["subtype_macro_f1"] >= before["subtype_macro_f1"] + 0.2 and after["subtype_macro_f1"] >= 0.6, result
