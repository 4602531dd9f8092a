"""A Review queue card labels the row's own model (DEMO / LIMITED DATA, as recorded with the call, not the
session's current model) and says whether its kept image is there, missing or damaged."""

from types import SimpleNamespace

import pytest
from streamlit.testing.v1 import AppTest

from core.app import records, service
from tests.app_helpers import APP, APP_TIMEOUT, app_like_the_server, make_model_folder, texts

LIMITED_CARD = {"name": "field-x", "backbone": "resnet18", "sha256": "ab" * 32,
                "evidence": {"limited": True, "statement": "757 images of 46 patients; limited data, not a diagnosis"}}


def fake_predictor(card: dict) -> SimpleNamespace:
    """What records.model_identity reads of a predictor: its name and card (no ensemble, not calibrated)."""
    return SimpleNamespace(name=card["name"], card=card, temperatures=None)


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    from core.model.loading import load_predictor

    return load_predictor(make_model_folder(tmp_path_factory.mktemp("models") / "tiny", demo=False))


def test_every_recorded_prediction_keeps_whether_its_model_was_limited_or_demo(store, predictor, samples_dir):
    """The rows kept `demo` only: a LIMITED DATA model's call could not be told from a validated one's."""
    sample = next(samples_dir.rglob("*.png"))
    results = service.diagnose_items(predictor, [(sample.name, sample.read_bytes())])
    settings = records.diagnosis_settings(predictor, False, None, "not stated")
    [plain_id] = records.record_diagnosis(store, "ann", results, predictor, settings).values()
    plain = store.event(plain_id)["details"]
    assert plain["limited"] is False and plain["demo"] is False and records.recorded_badge(plain) is None

    predictor.card["evidence"] = LIMITED_CARD["evidence"]  # the same model, as a limited-data card states it
    try:
        [limited_id] = records.record_diagnosis(store, "ann", results, predictor, settings).values()
    finally:
        del predictor.card["evidence"]
    limited = store.event(limited_id)["details"]
    assert limited["limited"] is True and limited["evidence"] == LIMITED_CARD["evidence"]["statement"]
    assert records.recorded_badge(limited).startswith("LIMITED DATA · tiny-demo (small_cnn)")

    slide = store.event(records.record_slide(store, "ann", "slide.svs", "cd" * 32, fake_predictor(LIMITED_CARD),
                                             {"label": "benign"}, {}))
    assert slide["model_sha256"] == "ab" * 32 and slide["details"]["limited"] is True
    assert records.recorded_badge(slide["details"]) == "LIMITED DATA · field-x (resnet18)"
    demo = records.model_identity(fake_predictor({**LIMITED_CARD, "demo": True}))
    assert records.recorded_badge(demo) == "DEMO · field-x (resnet18)"  # DEMO first, as the sidebar badge


def test_older_rows_are_not_guessed():
    assert records.recorded_badge({"demo": True}) == "DEMO"  # recorded before `limited`, but demo was kept
    assert records.recorded_badge({"demo": False}) == "model status not recorded"


@pytest.fixture
def app(tmp_path):
    default = make_model_folder(tmp_path / "models" / "default", demo=True)  # the session's model is DEMO
    with pytest.MonkeyPatch.context() as patch:
        app_like_the_server(patch, tmp_path / "models", default, tmp_path / "runs")
        yield AppTest.from_file(APP, default_timeout=APP_TIMEOUT).run()


def diagnosis(subject: str, identity: dict | None, **extra) -> dict:
    """A queue row as records.image_row writes it, for the model `identity` (None: an older row)."""
    details = {"call": "benign", "subtype": "adenosis", "confidence": 0.9, "refer": False, "demo": False}
    if identity:
        details.update({k: identity[k] for k in ("demo", "limited", "evidence", "badge")})
    details.update(extra.pop("details", {}))
    return dict(kind="diagnosis", user="ann", subject=subject, details=details,
                model=identity["model"] if identity else "old-model",
                model_sha256=identity["model_sha256"] if identity else None, **extra)


def test_a_card_labels_its_own_rows_model_not_the_sessions(app):
    from core.store.audit import Store

    limited = records.model_identity(fake_predictor(LIMITED_CARD))
    validated = records.model_identity(fake_predictor({**LIMITED_CARD, "name": "full-y", "sha256": "cd" * 32,
                                                       "evidence": {"limited": False}}))
    store = Store.open()
    store.record_many([diagnosis("limited.png", limited), diagnosis("validated.png", validated),
                       diagnosis("older.png", None)])
    store.close()
    app.switch_page("pages/review.py").run()
    assert not app.exception
    warnings = texts(app.main.warning)
    assert warnings.count("This result's model:") == 1  # the limited row's; the session's DEMO model made none
    assert "LIMITED DATA · field-x (resnet18)" in warnings and "limited data, not a diagnosis" in warnings
    assert "DEMO" not in warnings
    assert "weights abababababab" in texts(app.markdown) and "weights cdcdcdcdcdcd" in texts(app.markdown)
    assert texts(app.caption).count("Model status (DEMO / LIMITED DATA) not recorded") == 1  # the older row


def test_a_card_says_whether_its_kept_image_is_missing_damaged_or_was_never_kept(app, monkeypatch):
    """With BREAKHIS_KEEP_IMAGES=1, a damaged and a deleted kept image left their cards without a word."""
    from core.store.audit import Store
    from core.store.images import ImageStore
    from tests.app_helpers import png_bytes, tissue_like

    monkeypatch.setenv("BREAKHIS_KEEP_IMAGES", "1")
    store = Store.open()  # as the page does: the row is recorded first, then its image kept (audit_glue)
    images = ImageStore()
    intact, damaged, missing = (images.put(png_bytes(tissue_like(size))) for size in ((96, 128), (80, 80), (64, 96)))
    images.path(damaged).write_bytes(b"bit rot")
    images.path(missing).unlink()
    never = "ef" * 32
    rows = [diagnosis(f"{name}.png", None, image_sha256=sha) for name, sha in
            (("intact", intact), ("damaged", damaged), ("missing", missing), ("never", never))]
    for row in rows[:-1]:
        row["details"]["image_kept"] = True  # as records.image_row writes it while images are kept
    store.record_many(rows)
    store.close()
    app.switch_page("pages/review.py").run()
    assert not app.exception
    warnings = texts(app.main.warning)
    assert len(app.image) == 1  # the intact one only
    assert warnings.count("The kept image is damaged: its bytes no longer match the SHA-256 recorded") == 1
    assert warnings.count("The kept image is missing: this result was analysed while images were kept") == 1
    assert texts(app.caption).count("This image was not kept") == 1  # "never": its row does not say it was kept


def test_the_review_form_says_agree_confirms_the_class_only_where_the_subtype_is_not_reliable(app):
    """QA demo #1: the form's one-click "agree" saved the model's unreliable subtype as the reviewer's verdict,
    and nothing on the form said what "agree" would record."""
    from core.store.audit import Store

    identity = records.model_identity(fake_predictor(LIMITED_CARD))
    store = Store.open()
    shaky, sure = store.record_many([
        diagnosis("shaky.png", identity, details={"subtype_reliable": False}),
        diagnosis("sure.png", identity, details={"subtype_reliable": True})])
    app.switch_page("pages/review.py").run()
    assert not app.exception
    captions = texts(app.caption)
    assert ("'agree' confirms the class only (Benign): the model's subtype (Adenosis) is not reliable for this model, "
            "so the subtype is recorded as not assessed unless you choose one under Subtype ('correct' for another "
            "than Adenosis).") in captions
    assert "'agree' confirms the model's call: Benign, Adenosis." in captions
    assert app.selectbox(key=f"subtype_queue_{shaky}").format_func(None) == "(not assessed)"
    app.checkbox(key=f"original_queue_{shaky}").check()  # images are not kept: the review is of the original
    app.button(key=f"FormSubmitter:review_queue_{shaky}-Save review").click().run()
    assert not app.exception
    [saved] = store.events(kinds="review", refers_to_any=[shaky])
    assert (saved["details"]["agree"], saved["details"]["label"], saved["details"]["subtype"]) == (True, "benign", None)
    store.close()


def test_a_card_gives_p_malignant_the_subtype_as_reliable_as_recorded_and_both_stages_referral(app, predictor,
                                                                                             samples_dir):
    """QA demo #2 and #7: the card read "Malignant, Ductal carcinoma · confidence 0.35" (the joint p(class) x
    p(subtype | class) of a subtype the app calls not reliable, next to a 0.97 malignant call), with no
    p(malignant) and only the stage-1 referral reason."""
    from core.store.audit import Store

    images = [p for p in sorted(samples_dir.rglob("*.png")) if "SOB_M_DC" in p.name][:2]
    store = Store.open()
    ids = {}
    for threshold, sample in zip((0.99, 0.5), images):  # both stages referred; stage 1 passed (p(class) >= 0.5)
        results = service.diagnose_items(predictor, [(sample.name, sample.read_bytes())], refer_threshold=threshold)
        settings = records.diagnosis_settings(predictor, False, threshold, "not stated")
        [ids[threshold]] = records.record_diagnosis(store, "ann", results, predictor, settings).values()
    reliable = store.record("diagnosis", "ann", "sure.png", model="m", details={
        "call": "benign", "subtype": "adenosis", "stage1": {"benign": 0.9, "malignant": 0.1},
        "stage2": {"adenosis": 0.8}, "refer": False, "subtype_reliable": True})
    store.close()
    p = results[0].prediction
    app.switch_page("pages/review.py").run()
    assert not app.exception
    headers = {h.split(" · ")[0]: h for h in (texts([m]) for m in app.markdown if m.value.startswith("**#"))}
    header = headers[f"**#{ids[0.5]}"]
    assert (f"{p.label.capitalize()} (p(malignant) {p.stage1['malignant']:.2f}) · subtype not reliable for this "
            f"model (most probable: {p.subtype.replace('_', ' ').capitalize()}, p {p.p_subtype:.2f} within {p.label})"
            ) in header
    assert "confidence" not in " ".join(headers.values())
    assert "Benign (p(malignant) 0.10) · Adenosis (p 0.80 within benign)" in headers[f"**#{reliable}"]
    errors, captions = texts(app.error), texts(app.caption)
    assert "Stage 1: refer for review (stage 1 uncertain" in errors and "Subtype: refer for review (" in errors
    assert "stage 1 referred" in errors  # the subtype's own reason when stage 1 is referred
    assert f"Stage 1: not referred (p {p.p_label:.2f} >= threshold 0.5" in captions.replace("0.50", "0.5")
