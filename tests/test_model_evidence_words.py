"""How a model's evidence is worded wherever it is shown: the split line counts the held-out images of either
pipeline, the sidebar and the Retrain caption state one split protocol, and a model never evaluated says so
everywhere its evidence is worded (tests/test_model_io.py: the folders themselves)."""


def test_the_split_line_counts_the_held_out_images_for_both_pipelines():
    """QA compare #19: 'Split: patient-wise, N images' counted train+val+test for a tf.data run (110) and the
    test split for a fields run (43), which records no split counts."""
    from core.app.registry import describe_model

    test = {"split": "test", "protocol": "patient-wise", "images": 43, "cases": 7}
    tfdata = {"training": {"split_protocol": "patient-wise", "counts": {"train": 38, "val": 29, "test": 43}},
              "metrics": {**test, "data": test}}
    fields = {"training": {"pipeline": "fields"}, "metrics": {**test, "data": test}}
    assert describe_model(tfdata)["images"] == describe_model(fields)["images"] == 43
    assert describe_model(tfdata)["split"] == describe_model(fields)["split"] == "patient-wise, 43 test images"
    unevaluated = {"training": tfdata["training"]}  # QA retrain #8: it read "patient-wise, 43 test images"
    assert describe_model(unevaluated)["images"] == 0 and describe_model(unevaluated)["split"] == "patient-wise, not evaluated"
    cv = "patient-wise 5-fold cross-validation, pooled out-of-fold"
    pooled = describe_model({"training": {"pipeline": "fields"}, "metrics": {"protocol": cv, "images": 757}})
    assert pooled["split"] == f"{cv}, 757 images, each tested out of fold"


def test_the_sidebar_and_the_retrain_caption_state_one_split_protocol():
    """describe_model (sidebar, report) and the Retrain job's caption (core.app.retrain.split_sizes) each worked
    a card's protocol out: a single-split fields card not yet evaluated, whose settings alone state its split,
    read "unknown protocol" in the sidebar and "image-level" in the caption. One function now: the same words."""
    from core.app import retrain
    from core.app.registry import describe_model
    from core.jsonfile import read_json
    from core.paths import REPO

    bundled = read_json(REPO / "models" / "default" / "card.json")
    counts = {"train": 38, "synthetic": 0, "val": 29, "test": 43}
    single = {"training": {"pipeline": "fields", "counts": counts, "settings": {"split": "image-level", "folds": 0}}}
    tfdata = {"training": {"split_protocol": "patient-wise", "counts": counts}}
    expected = {"bundled": "patient-wise 5-fold cross-validation, pooled out-of-fold", "single": "image-level (leaky)",
                "evaluated": "patient-wise", "tfdata": "patient-wise"}
    cards = {"bundled": bundled, "single": single, "evaluated": {**single, "metrics": {"protocol": "patient-wise"}},
             "tfdata": tfdata}
    for name, card in cards.items():
        assert describe_model(card)["protocol"] == retrain.split_protocol(card) == expected[name], name
        assert retrain.split_sizes(None, card).endswith(f"; {expected[name]} protocol."), name
    assert describe_model({})["protocol"] == "unknown protocol" and retrain.split_protocol({}) is None
    assert retrain.split_sizes(None, {}).endswith("validation split.")  # no protocol clause where none is stated
    assert retrain.split_sizes({"split": "image-level"}).endswith("; image-level (leaky) protocol.")  # while it trains


def test_a_model_never_evaluated_says_not_evaluated_wherever_its_evidence_is_worded():
    """QA retrain #8: a --no-evaluate run (or one cancelled or failed after saving) read "figures measured on the
    test split (160 images, 8 patients)": its card is written before the evaluation that would measure them."""
    from core.app.registry import describe_model
    from core.evaluation.evaluate import trained_on_lines

    statement = ("weights learnt from 640 real images of 32 patients (from scratch); figures measured on the test "
                 "split (160 images, 8 patients); limited data, not a diagnosis")
    card = {"evidence": {"images": 640, "patients": 32, "limited": True, "statement": statement},
            "training": {"split_protocol": "patient-wise", "counts": {"train": 640, "val": 160, "test": 160}}}
    words = "weights learnt from 640 real images of 32 patients (from scratch); not evaluated; limited data, not a diagnosis"
    info = describe_model(card)
    assert info["evidence"] == words and info["split"] == "patient-wise, not evaluated" and info["measured"] is None
    assert f"Trained on: {words}." in trained_on_lines(card)
    test = {"split": "test", "protocol": "patient-wise", "images": 160, "cases": 8}
    measured = describe_model({**card, "metrics": {**test, "data": test}})
    assert measured["evidence"] == statement and measured["split"] == "patient-wise, 160 test images"
    ensemble = {"kind": "ensemble", "evidence": {"members": [{}, {}],
                                                 "statement": "an ensemble of 2 models (a: ...; figures measured on x)"}}
    assert describe_model(ensemble)["evidence"].endswith("figures measured on x)")  # its members' own figures
