"""A result's audit identity is its image, its model and the settings that change what its row records
(records.diagnosis_settings): display changes add no diagnosis row, repeats are recorded once, and the
Review queue shows the repeats of one image and model once (QA demo #3: 9 rows for 3 images after two
heat-map switches, and a queue of 94 for 22 images)."""

import pytest
from streamlit.testing.v1 import AppTest

from core.store import reviews
from core.store.audit import Store
from tests.app_helpers import APP, APP_TIMEOUT, app_like_the_server, make_model_folder, texts

SAMPLES = ("SOB_M_DC-14-2523", "SOB_B_A-14-22549AB")


@pytest.fixture
def app(tmp_path):
    default = make_model_folder(tmp_path / "models" / "default", demo=False)
    with pytest.MonkeyPatch.context() as patch:
        app_like_the_server(patch, tmp_path / "models", default, tmp_path / "runs")
        patch.delenv("BREAKHIS_KEEP_IMAGES", raising=False)
        yield AppTest.from_file(APP, default_timeout=APP_TIMEOUT).run()


def diagnosis_rows() -> list[dict]:
    store = Store.open()
    try:
        return store.events(kinds="diagnosis", newest_first=False)
    finally:
        store.close()


def test_display_changes_add_no_diagnosis_row_and_the_queue_shows_each_image_once(app):
    samples = app.multiselect(key="samples")
    samples.set_value([next(o for o in samples.options if s in o) for s in SAMPLES]).run()
    assert not app.exception and len(diagnosis_rows()) == 2
    first = {r["subject"]: r["id"] for r in diagnosis_rows()}
    assert all("cam_method" not in r["details"]["settings"] for r in diagnosis_rows())
    for method in ("scorecam", "gradcam++", "gradcam"):  # the heat-map method: display only
        app.selectbox(key="method").set_value(method).run()
        assert not app.exception
    app.slider(key="opacity").set_value(0.8).run()
    assert len(diagnosis_rows()) == 2
    app.toggle(key="own_threshold").set_value(True).run()  # the referral recorded changes: one new row per image
    assert not app.exception and len(diagnosis_rows()) == 4
    app.toggle(key="own_threshold").set_value(False).run()  # back to the settings already recorded
    assert not app.exception and len(diagnosis_rows()) == 4
    app.switch_page("pages/review.py").run()
    assert not app.exception
    headers = [texts([m]) for m in app.markdown if m.value.startswith("**#")]
    assert len(headers) == 2 and all(any(s in h for h in headers) for s in SAMPLES)  # each image once, the newest
    newest = {r["subject"]: r["id"] for r in diagnosis_rows()}
    assert all(f"#{i} " in " ".join(headers) for i in newest.values())
    assert texts(app.caption).count("The same image by the same model is also recorded as") == 2
    assert all(f"also recorded as #{i} " in texts(app.caption) for i in first.values())


def test_the_queue_folds_repeats_of_one_image_and_model_until_one_is_reviewed(store):
    from core.store import accounts

    accounts.add_account(store, "bob", None, "pathologist")
    calm = {"call": "benign", "subtype": "adenosis", "refer": False}
    row = lambda name, sha, model, **more: dict(kind="diagnosis", user="ann", subject=name, image_sha256=sha,  # noqa: E731
                                                model=model, model_sha256=model * 32, details={**calm, **more})
    ids = store.record_many([row("a.png", "aa" * 32, "m1"), row("b.png", "bb" * 32, "m1"),
                             row("a.png", "aa" * 32, "m1", refer=True),  # again, with a threshold that refers it
                             row("a.png", "aa" * 32, "m2"),  # another model: another result
                             row("a-copy.png", "aa" * 32, "m1", refer=True),  # the same bytes, renamed
                             dict(kind="diagnosis", user="ann", subject="no-hash.png", details=calm),
                             dict(kind="diagnosis", user="ann", subject="no-hash.png", details=calm)])
    a1, b1, a1_again, a2, a1_copy, unhashed, unhashed_again = ids
    queued = reviews.queue(store)
    assert [r["id"] for r in queued.waiting.rows] == [a1_copy, b1, a2, unhashed, unhashed_again]  # referred first
    assert queued.waiting.total == 5 and queued.referred == 1
    assert {r["id"]: r["repeats"] for r in queued.waiting.rows}[a1_copy] == [a1, a1_again]
    assert {r["id"]: r["repeats"] for r in queued.waiting.rows}[unhashed] == []
    reviews.review(store, "bob", a1_again, label="benign")  # a review of any of them settles them all
    after = reviews.queue(store, include_reviewed=True)
    assert [r["id"] for r in after.waiting.rows] == [b1, a2, unhashed, unhashed_again] and after.referred == 0
    assert [r["id"] for r in after.reviewed.rows] == [a1_again] and after.reviewed.rows[0]["repeats"] == [a1, a1_copy]
