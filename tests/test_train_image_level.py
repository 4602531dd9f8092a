"""The leaky image-level split in the tf.data pipeline: a comparison-only run is trained and labelled
leaky on its figures; the patient-leak check stays for patient-wise splits, the GAN check for both."""

import dataclasses
import json

import pandas as pd
import pytest

from core.data.splits import IMAGE, shared_cases

TINY = dict(backbone="small_cnn", weights="none", input_size=32, batch_size=16, epochs=1, patience=1)


def test_an_image_level_tf_data_run_is_trained_and_labelled_leaky(synthetic_breakhis, tmp_path):
    """`train --split image-level` (the CLI's default pipeline) failed with '... case(s) appear in more
    than one split': the patient-leak check ran for the protocol whose point is to share patients."""
    from core.training.fit import train

    run = tmp_path / "image-level"
    result = train(dict(data=str(synthetic_breakhis), out=str(run), echo_stdout=False, split="image-level", **TINY))
    assert result["status"] == "completed"
    split = pd.read_csv(run / "split.csv")
    assert set(split["protocol"]) == {IMAGE} and shared_cases(split)  # patients in two splits, as the protocol is
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["protocol"] == metrics["data"]["protocol"] == IMAGE and "leaky" in IMAGE
    card = json.loads((run / "model" / "card.json").read_text())
    assert card["metrics"]["stage1"]["data"]["protocol"] == IMAGE
    assert "image-level (leaky) split" in card["evidence"]["statement"]  # the statement shown wherever it predicts


@pytest.mark.parametrize("protocol", ["patient-wise", "image-level"])
def test_gan_images_outside_training_are_refused_under_both_protocols(synthetic_breakhis, tmp_path, monkeypatch,
                                                                      protocol):
    import core.training.fit as fit
    from core.training.config import TrainConfig, checked

    real = fit.select_images

    def with_a_synthetic_test_image(*args, **kwargs):
        selection = real(*args, **kwargs)
        row = selection.split.iloc[[0]].assign(split="test", synthetic=True, path="SYN_x.png", case="SYN")
        split = pd.concat([selection.split.assign(synthetic=False), row], ignore_index=True)
        return dataclasses.replace(selection, split=split)

    monkeypatch.setattr(fit, "select_images", with_a_synthetic_test_image)
    config = checked(TrainConfig(data=str(synthetic_breakhis), out=str(tmp_path / "run"), split=protocol, **TINY))
    with pytest.raises(ValueError, match="synthetic image"):
        fit.prepare_data(config)
    monkeypatch.setattr(fit, "select_images", real)
    prepared = fit.prepare_data(config)  # without it, each protocol prepares (patient-wise: no shared patient)
    assert bool(shared_cases(prepared["split"])) == (protocol == "image-level")
