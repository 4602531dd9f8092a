"""Plain words lead what a pathologist reads; the precise term follows in brackets or in the tooltip, and
every figure keeps its split protocol and data size (a demo for pathologists found the jargon leading)."""

from core.app import comparison, glossary, performance, referral_view
from core.jsonfile import read_json
from core.paths import DEFAULT_MODEL_DIR


def test_performance_figures_say_who_they_were_measured_on_in_plain_words_first():
    """"Computed on out-of-fold predictions, ..." and "49 rows (case x tumour type), 46 cases" led: now the
    patients first, the protocol's name (pooled out-of-fold) in brackets, defined in the tooltip."""
    metrics = read_json(DEFAULT_MODEL_DIR / "metrics.json")
    line = performance.protocol_line(metrics)
    assert line == ("Measured on patients each model never saw during training (patient-wise 5-fold cross-validation, "
                    "pooled out-of-fold), 757 images from 46 cases.")
    assert "every patient is held out once" in glossary.explain(line)
    table = performance.intervals_table(metrics).set_index(["level", "metric"])["computed on"]
    shown = table["patient", "subtype macro-F1 (8 classes)"]
    assert shown.startswith("46 patients (49 ") and "case x" not in shown  # the numbers kept, the term in the tooltip
    assert "a patient with two tumour types counts in each" in glossary.column_help("computed on")
    assert "case x tumour-type rows" in glossary.explain(shown)
    rows = performance.metrics_table(metrics)["what"]
    assert "Patient level: 8 subtypes (a patient with two tumour types counts in each)" in set(rows)
    assert not [row for row in rows if "case x" in row]


def test_the_referral_caption_says_its_rule_in_words_before_the_notation():
    """It began "Stage 1 is referred when calibrated p(class) < 0.9; the subtype when p(subtype | class) < ..."."""
    referral = read_json(DEFAULT_MODEL_DIR / "card.json")["thresholds"]["referral"]
    text = referral_view.referral_caption(referral)
    words, notation = text.index("its probability within the chosen class is below"), text.index("p(subtype | class)")
    assert text.startswith("Stage 1 is referred when the probability of its benign/malignant call is below ")
    assert words < notation and text.index("calibrated p(class) <") > text.index("benign/malignant call is below")
    assert "757 images" in text  # where it was chosen, and how much data, still said


def test_a_cross_validation_group_is_titled_in_plain_words_its_protocol_after():
    protocol = "patient-wise 5-fold cross-validation, pooled out-of-fold"
    title = comparison.group_title(0, protocol, [object(), object()])
    assert title == ("Group 1: 2 models on the same images, each scored by a model that never saw its patient during "
                     f"training ({protocol})")
    assert comparison.group_title(1, "patient-wise", [object()]) == "Group 2: 1 model on patient-wise test images"


def test_a_missing_reviewed_images_folder_is_named_as_the_retrain_form_names_it(tmp_path):
    """The Retrain form refused with "reviewed-images folder (--reviewed-dir) not found": its field reads "Reviewed
    images to add to the training split"; the flag stays in brackets for the command line."""
    import pytest

    from core.errors import UserInputError
    from core.training.config import TrainConfig, checked

    with pytest.raises(UserInputError) as refused:
        checked(TrainConfig(data=str(tmp_path), out=str(tmp_path / "run"), reviewed_dir=str(tmp_path / "none")))
    assert "folder of reviewed images to add to the training split (--reviewed-dir) not found" in str(refused.value)
    assert "reviewed-images folder" not in str(refused.value)


def test_a_backend_refusal_names_the_pipelines_as_the_retrain_form_does():
    """It read "the tfdata pipeline runs on TensorFlow only (tf.data); train with the fields pipeline under jax"."""
    from core.app.retrain import PIPELINE_LABELS
    from core.backends import PIPELINE_NAMES, backend_problem

    refusal = backend_problem("jax", "tfdata", ["tensorflow", "jax"])
    assert refusal.startswith("the tf.data pipeline (--pipeline tfdata) runs on TensorFlow only: choose the Fields "
                              "pipeline (--pipeline fields) to train under jax")
    assert "tfdata pipeline" not in refusal
    assert all(PIPELINE_LABELS[p].startswith(f"{name}:") for p, name in PIPELINE_NAMES.items())  # the form's words
