"""Calibration: temperature scaling recovers a known temperature, and on the synthetic set a
deliberately over-confident model gets a lower ECE on held-out cases with unchanged accuracy."""

import numpy as np
import pytest

from core.model.calibration import apply_temperature, brier, fit_temperature, reliability


def test_temperature_scaling_keeps_the_argmax_and_recovers_a_known_temperature():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(4000, 4))
    true_probabilities = apply_temperature(np.exp(logits), 2.5)  # the truth is 2.5x softer...
    targets = np.array([rng.choice(4, p=p / p.sum()) for p in true_probabilities])
    overconfident = apply_temperature(np.exp(logits), 1.0)  # ...than what the model says
    temperature = fit_temperature(overconfident, targets)
    assert temperature == pytest.approx(2.5, rel=0.1)
    scaled = apply_temperature(overconfident, temperature)
    assert (scaled.argmax(1) == overconfident.argmax(1)).all()
    assert reliability(scaled, targets)["ece"] < 0.5 * reliability(overconfident, targets)["ece"]
    assert brier(scaled, targets) < brier(overconfident, targets)
    np.testing.assert_allclose(apply_temperature(overconfident, 1.0), overconfident, atol=1e-6)


def test_the_brier_score_is_summed_over_the_classes_as_the_glossary_says():
    """The card's stage-1 Brier of 0.25 is 0.125 in the binary (p - y)^2 form: a reader used to that form would
    take it for a coin's. The glossary states the scale, checked against the function here."""
    from core.app.glossary import BRIER

    coin = brier(np.full((10, 2), 0.5), np.arange(10) % 2)
    assert coin == pytest.approx(0.5) and "a constant 50/50 guess scores 0.5" in BRIER
    assert brier(np.array([[0.0, 1.0]]), np.array([0])) == pytest.approx(2.0) and "2 the worst" in BRIER


def test_reliability_bins_count_every_prediction():
    probabilities = np.array([[0.95, 0.05], [0.6, 0.4], [0.3, 0.7], [0.5, 0.5]])
    table = reliability(probabilities, np.array([0, 1, 1, 0]), bins=15)
    assert sum(table["bins"]["count"]) == 4 and len(table["bins"]["edges"]) == 16
    # |0.95-1| + |0.6-0| + |0.7-1| + |0.5-1| over 4 (each in its own bin)
    assert table["ece"] == pytest.approx((0.05 + 0.6 + 0.3 + 0.5) / 4)


@pytest.fixture(scope="module")
def overconfident_run(tmp_path_factory):
    """A briefly trained small model on a synthetic set where a fifth of the cases look like the other
    class (errors no model avoids), whose final logits are then multiplied by 6: the same calls, far
    too sure. 200 cases, so validation and test see about the same share of those errors."""
    from core.testing.synthetic import write_synthetic_breakhis
    from core.training.config import TrainConfig
    from core.training.fit import train

    data = write_synthetic_breakhis(tmp_path_factory.mktemp("mislabelled"), images_per_case=2, cases_per_subtype=25,
                                    mislabelled=0.2, seed=3)
    run = tmp_path_factory.mktemp("calibration") / "run"
    train(TrainConfig(data=str(data), out=str(run), backbone="small_cnn", weights="none",
                      input_size=64, batch_size=16, epochs=4, patience=4, evaluate=False, echo_stdout=False))
    import keras

    from core.model.folders import load_model_folder, read_card, save_model_folder

    model, card = load_model_folder(run / "model")
    for head in ("stage1", "benign_subtype", "malignant_subtype"):
        kernel, bias = model.get_layer(head).get_weights()
        model.get_layer(head).set_weights([6.0 * kernel, 6.0 * bias])
    card = {k: v for k, v in read_card(run / "model").items() if k not in ("sha256", "created", "versions")}
    save_model_folder(keras.Model(model.inputs, model.output), run / "model", card)
    return run


def test_an_overconfident_model_is_better_calibrated_on_held_out_cases(overconfident_run):
    from core.evaluation.evaluate import evaluate_run
    from core.model.folders import read_card
    from core.training.calibrate_run import calibrate_run

    before = evaluate_run(overconfident_run, baselines=False, write=False)
    block = calibrate_run(overconfident_run)
    test = block["measured"]["test"]["heads"]["stage1"]
    assert block["temperatures"]["stage1"] > 1.5  # it was over-confident, so T softens it
    assert test["ece_after"] < test["ece_before"] and test["brier_after"] < test["brier_before"]
    assert block["fitted_on"]["split"] == "val" and block["measured"]["test"]["data"]["split"] == "test"
    assert read_card(overconfident_run / "model")["calibration"]["temperatures"] == block["temperatures"]
    after = evaluate_run(overconfident_run, baselines=False, write=False)  # the Predictor now applies it
    assert after["stage1"]["accuracy"] == before["stage1"]["accuracy"]  # arg-max unchanged
    assert after["subtype8"]["accuracy"] == before["subtype8"]["accuracy"]
    assert after["calibration"]["temperatures"] == block["temperatures"]  # metrics.json says which
