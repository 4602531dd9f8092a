"""The GAN gallery page through AppTest, with a tiny generator (32 px) found via BREAKHIS_MODEL_DIRS."""

import json
import shutil

import pytest
from streamlit.testing.v1 import AppTest

from tests.app_helpers import APP_TIMEOUT, REPO

PAGE = str(REPO / "pages" / "gan_gallery.py")
PAIR = ("adenosis", "ductal_carcinoma")


@pytest.fixture(scope="module")
def generator_root(tmp_path_factory, synthetic_breakhis):
    """models/gan-tiny: an (untrained) texture generator saved as training saves it, with its checks."""
    import dataclasses

    import keras

    from core.gan import model as gan
    from core.gan import quality as gan_quality
    from core.model.folders import GENERATOR, save_model_folder

    keras.utils.set_random_seed(0)  # one untrained generator every run: with 8 patches a chance draw can pass a check

    root = tmp_path_factory.mktemp("models")
    config = gan.GanConfig(name="gan-tiny", subtypes=PAIR, image_size=16, width=16, latent_dim=8, mpp=4.0)
    card = {"name": config.name, "image_size": 16, "latent_dim": 8, "mpp": 4.0, "subtypes": list(PAIR),
            "config": dataclasses.asdict(config),
            "training": {"data_source": synthetic_breakhis.name, "split": "patient-wise", "steps": 0,
                         "images_by_subtype": {"adenosis": 12, "ductal_carcinoma": 12}, "held_out_images": []}}
    folder = save_model_folder(gan.build_generator(config), root / "gan-tiny", card, kind=GENERATOR)
    gan_quality.evaluate_generator(folder, synthetic_breakhis, n=8)
    return root


def page(monkeypatch, root) -> AppTest:
    monkeypatch.setenv("BREAKHIS_SINGLE_USER", "1")  # the explicit single-user mode: no sign-in
    monkeypatch.setenv("BREAKHIS_MODEL_DIRS", str(root))
    monkeypatch.setenv("BREAKHIS_RUNS_DIR", str(root / "no-runs"))
    return AppTest.from_file(PAGE, default_timeout=APP_TIMEOUT).run()


def synthetic_image(app, seed):
    return next(image for image in app.image if f"Synthetic, seed {seed}" in image.captions)


def test_gallery_says_what_was_measured_then_shows_real_and_synthetic_at_one_scale(monkeypatch, generator_root):
    app = page(monkeypatch, generator_root)
    assert not app.exception, app.exception
    assert app.title[0].value == "GAN gallery"
    # An untrained generator fails the goals, and the page says so in words before any picture.
    assert "Does NOT meet the goals" in app.warning[0].value and "held-out fields" in app.warning[0].value
    assert "trained on some of these held-out fields" in app.warning[0].value  # its card kept none out
    checks = app.dataframe[0].value
    assert list(checks["set"])[:2] == ["benign (class)", "malignant (class)"]
    assert {"Adenosis", "Ductal carcinoma"} <= set(checks["set"])
    assert not checks["all checks met"].any()
    quality = json.loads((generator_root / "gan-tiny" / "quality" / "quality.json").read_text())
    scored = quality["generators"]["generator"]["subtypes"]["adenosis"]["two_sample"]["n_scored"]
    assert checks.set_index("set").loc["Adenosis", "patches scored"].startswith(f"n={scored}")  # beside its accuracy
    assert not checks.isna().any().any()  # nuclei and distances are per subtype: the class rows say so
    classes = checks.set_index("set").loc[["benign (class)", "malignant (class)"]]
    assert (classes["nuclei / patch (real)"] == "per subtype").all()
    held = checks.set_index("set")["real images scored (held out)"].map(lambda text: int(text.split("(")[1][:-1]))
    assert held[["benign (class)", "malignant (class)"]].tolist() == [held["Adenosis"], held["Ductal carcinoma"]]
    assert any(c.value.startswith("Real set:") and "all checks met" in c.value for c in app.caption)
    assert [s.value.split("  ")[0] for s in app.subheader] == ["Adenosis", "Ductal carcinoma"]
    captions = [c for image in app.image for c in image.captions]
    assert captions.count("Real patches (bundled samples, same scale)") == 2  # assets/samples has both
    assert sum("Synthetic, seed 0" in c for c in captions) == 2
    assert sum("field-size (a 200X field)" in c for c in captions) == 2
    assert app.download_button[0].label == "Download this batch (12 synthetic PNGs, zip)"


def test_seed_control_changes_the_synthetic_images(monkeypatch, generator_root):
    app = page(monkeypatch, generator_root)
    before = synthetic_image(app, 0).value
    app.number_input(key="gan_seed").set_value(7).run()
    assert not app.exception
    after = synthetic_image(app, 7).value
    assert after != before
    assert any("SYN_A-gan_tiny-7-00000.png" in c.value for c in app.caption)
    app.number_input(key="gan_seed").set_value(0).run()
    assert synthetic_image(app, 0).value == before  # same seed, same images


def test_a_damaged_quality_report_gives_a_message(monkeypatch, generator_root, tmp_path):
    shutil.copytree(generator_root / "gan-tiny", tmp_path / "gan-tiny")
    for content, message in (("{not json", "cannot be read"), ('{"subtypes": {}}', "earlier `gan evaluate`")):
        (tmp_path / "gan-tiny" / "quality" / "quality.json").write_text(content)
        app = page(monkeypatch, tmp_path)
        assert not app.exception
        assert message in app.error[0].value


def test_the_gallery_states_what_gan_fill_did_to_the_classifier(monkeypatch, generator_root, tmp_path):
    """The GAN-fill ablation (core.gan.ablation) in words, whatever it showed; not run: the command."""
    import json

    app = page(monkeypatch, generator_root)
    assert any("has not been measured" in i.value and "gan ablation" in i.value for i in app.info)
    shutil.copytree(generator_root / "gan-tiny", tmp_path / "gan-tiny")
    arm = {"evaluated_on": "validation and test patients (300 images, 17 patients)",
           "headline": {"subtype_macro_f1": {"value": 0.08, "low": 0.02, "high": 0.17}},
           "subtype_f1": {"adenosis": {"value": 0.33, "patients": 2}}}
    worse = {**arm, "headline": {"subtype_macro_f1": {"value": 0.04, "low": 0.01, "high": 0.09}},
             "subtype_f1": {"adenosis": {"value": 0.0, "patients": 2}}}
    result = {"filled_subtypes": ["adenosis"], "options": {"pipeline": "fields"}, "runs": {"none": arm, "synthetic": worse}}
    (tmp_path / "gan-tiny" / "quality" / "ablation.json").write_text(json.dumps(result))
    app = page(monkeypatch, tmp_path)
    said = next(w.value for w in app.warning if "Does GAN fill help" in w.value)
    assert "0.08 [0.02, 0.17] without, 0.04 [0.01, 0.09] with" in said and "Adenosis 0.33 -> 0.00 (2 patients)" in said
    assert "No difference is shown: the intervals overlap (macro-F1 not higher with it)" in said
    apart = {**worse, "headline": {"subtype_macro_f1": {"value": 0.40, "low": 0.30, "high": 0.50}}}
    (tmp_path / "gan-tiny" / "quality" / "ablation.json").write_text(json.dumps({**result, "runs": {"none": arm,
                                                                                               "synthetic": apart}}))
    app = page(monkeypatch, tmp_path)
    assert any("It helped on this split (the intervals are apart)" in s.value for s in app.success)
    (tmp_path / "gan-tiny" / "quality" / "ablation.json").write_text("{broken")
    app = page(monkeypatch, tmp_path)
    assert not app.exception and any("ablation cannot be read" in e.value for e in app.error)


def test_the_gallerys_technical_terms_are_headed_in_plain_words_and_defined_in_tooltips(monkeypatch, generator_root,
                                                                                        tmp_path):
    """QA read "R1 penalty (gamma 100)", "scripts/gpu_machine.sh gan" in a warning above everything and "hed sliced
    wasserstein / floor" as a column: the maker's notes now sit in an expander under the plain verdict, the
    checks' columns have plain headers with the measure in the tooltip, and macro-F1 is defined under the ablation."""
    shutil.copytree(generator_root / "gan-tiny", tmp_path / "gan-tiny")
    card = json.loads((tmp_path / "gan-tiny" / "card.json").read_text())
    card["limitations"] = "Trained with the R1 penalty (gamma 100); the GPU run is prepared (scripts/gpu_machine.sh gan)."
    (tmp_path / "gan-tiny" / "card.json").write_text(json.dumps(card))
    arm = {"evaluated_on": "validation and test patients (300 images, 17 patients)",
           "headline": {"subtype_macro_f1": {"value": 0.08, "low": 0.02, "high": 0.17}}, "subtype_f1": {}}
    (tmp_path / "gan-tiny" / "quality" / "ablation.json").write_text(json.dumps(
        {"filled_subtypes": ["adenosis"], "options": {"pipeline": "fields"}, "runs": {"none": arm, "synthetic": arm}}))
    app = page(monkeypatch, tmp_path)
    assert not app.exception, app.exception
    [notes] = [e for e in app.expander if e.label == "Limits stated by whoever trained this generator (technical)"]
    assert "R1 penalty" in notes.warning[0].value
    assert app.warning[0].value.startswith("Does NOT meet the goals")  # the plain verdict comes first
    columns = json.loads(app.dataframe[0].proto.columns)
    distance = columns["hed sliced wasserstein / floor"]
    assert distance["label"] == "stain colour difference (x floor)" and "Sliced Wasserstein" in distance["help"]
    assert columns["two-sample accuracy"]["label"] == "told apart from real (two-sample accuracy)"
    assert any(c.value.startswith("macro F1: the F1 score") for c in app.caption)


def test_without_a_generator_the_page_explains_how_to_train_one(monkeypatch, tmp_path):
    app = page(monkeypatch, tmp_path)
    assert not app.exception
    assert "python -m core gan train" in app.info[0].value


def test_a_tampered_generator_is_refused_with_a_message(monkeypatch, generator_root, tmp_path):
    shutil.copytree(generator_root / "gan-tiny", tmp_path / "gan-bad")
    with open(tmp_path / "gan-bad" / "model.keras", "ab") as handle:
        handle.write(b"x")
    app = page(monkeypatch, tmp_path)
    assert not app.exception
    assert "does not match its card" in app.error[0].value


def test_the_router_reaches_the_gallery(monkeypatch, generator_root, tmp_path):
    from tests.app_helpers import APP, make_model_folder, run_app_like_the_server

    default = make_model_folder(tmp_path / "default")
    monkeypatch.setenv("BREAKHIS_SINGLE_USER", "1")
    monkeypatch.setenv("BREAKHIS_DEFAULT_MODEL", str(default))
    monkeypatch.setenv("BREAKHIS_MODEL_DIRS", str(generator_root))
    monkeypatch.setenv("BREAKHIS_RUNS_DIR", str(tmp_path / "runs"))
    run_app_like_the_server(monkeypatch)
    app = AppTest.from_file(APP, default_timeout=APP_TIMEOUT).run()
    app.switch_page("pages/gan_gallery.py").run()
    assert not app.exception, app.exception
    assert app.title[0].value == "GAN gallery"
    assert len(app.image) >= 3


@pytest.mark.parametrize("damage", [
    lambda card: card.pop("name"), lambda card: card.pop("config"), lambda card: card.update(training=None),
    lambda card: card.update(subtypes=["adenosis", "not_a_subtype"]),
    lambda card: card["training"].update(images_by_subtype=None)], ids=["name", "config", "training", "subtypes",
                                                                        "images_by_subtype"])
def test_a_generator_card_with_damaged_fields_is_refused_with_a_message(monkeypatch, generator_root, tmp_path, damage):
    """The model file still matches its checksum, but the card was edited by hand: a message, not a KeyError."""
    import json

    shutil.copytree(generator_root / "gan-tiny", tmp_path / "gan-edited")
    card = json.loads((tmp_path / "gan-edited" / "card.json").read_text())
    damage(card)
    (tmp_path / "gan-edited" / "card.json").write_text(json.dumps(card))
    app = page(monkeypatch, tmp_path)
    assert not app.exception, app.exception
    assert "This generator folder cannot be used" in app.error[0].value and "card" in app.error[0].value


def test_an_ablation_run_despite_a_leak_says_so():
    """`gan ablation --allow-gan-leak` scores on patients the generator may have seen: the words must say it."""
    from core.gan.gallery import ablation_sentence

    before = {"headline": {"subtype_macro_f1": {"value": 0.08, "low": 0.02, "high": 0.17}}}
    after = {"headline": {"subtype_macro_f1": {"value": 0.40, "low": 0.30, "high": 0.50}}}
    result = {"filled_subtypes": ["adenosis"], "runs": {"none": before, "synthetic": after},
              "gan_leak": "the generator was trained on all images, including the classifier's val/test images"}
    helped, text = ablation_sentence(result)
    assert "trained on all images" in text and "flatters" in text
    assert not helped  # not shown as a success when the scored patients may have been seen
    assert "flatters" not in ablation_sentence({**result, "gan_leak": None})[1]


def test_a_generator_of_every_patient_says_why_it_has_no_ablation():
    """Trained with --split none, no patient is unseen by it: the gallery must not send the user to an ablation
    that core.gan.ablation refuses (leak), but say why and what would measure it."""
    from core.gan.gallery import no_ablation_text

    every = no_ablation_text({"training": {"split": "none"}}, "models/gan-default")
    assert "learnt from every patient" in every and "--split patient-wise" in every and "--gan models" not in every
    split = no_ablation_text({"training": {"split": "patient-wise"}}, "runs/gan-x")
    assert "has not been measured" in split and "--gan runs/gan-x" in split


def test_the_checks_table_converts_to_arrow_without_fixes(generator_root):
    """Streamlit sends tables as Arrow: a column of floats and "per subtype" strings failed, logged a
    traceback on every rerun and was converted behind the page's back."""
    import pandas as pd
    import pyarrow as pa

    from core.gan import gallery

    table = pd.DataFrame(gallery.check_rows(gallery.load_quality(generator_root / "gan-tiny")))
    pa.Table.from_pandas(table, preserve_index=False)
    assert (table.set_index("set").loc["benign (class)", "lbp / floor"]) == "per subtype"


def test_the_gallery_says_how_long_and_where_its_generator_trained(monkeypatch, generator_root, tmp_path):
    """The card keeps every session (core.gan.sessions); the gallery showed steps and images only."""
    from core.model.folders import GENERATOR, load_model_folder, save_model_folder

    generator, card = load_model_folder(generator_root / "gan-tiny", kind=GENERATOR)
    machine = {"backend": "jax", "gpus": ["gpu:0 H100"], "cpus": 16}
    card["training"].update(seconds=95.5, sessions=[{"seconds": 40.0, "machine": {**machine, "backend": "tensorflow"}},
                                                    {"seconds": 55.5, "machine": machine}])
    root = tmp_path / "models"
    save_model_folder(generator, root / "gan-tiny", {k: v for k, v in card.items() if k != "sha256"}, kind=GENERATOR)
    app = page(monkeypatch, root)
    assert not app.exception, app.exception
    assert "in 95.5 s over 2 sessions (the last on jax, 1 GPU / 16 CPUs)" in app.markdown[0].value
