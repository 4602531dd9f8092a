"""The pages when the environment goes wrong after start-up (QA resilience report): a database that is
busy or refuses a read, an images folder that cannot be written or an image that cannot be read, a
session cookie the server refuses, a model briefly unusable. Each is a message on the page that keeps
serving, nothing the user chose is lost, and no audit row is written twice."""

import datetime
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.paths import data_dir
from core.store import db
from core.store.audit import Store
from core.store.db import StoreError
from tests.app_helpers import (
    APP,
    APP_TIMEOUT,
    app_like_the_server,
    make_model_folder,
    png_bytes,
    tissue_like,
    write_locked,
)

BUSY = "the database is busy or unavailable; try again"
SAMPLE = "SOB_M_DC-14-2523"


@pytest.fixture(scope="module")
def environment(tmp_path_factory):
    """A DEMO default model and a second one, single-user, its own database; SQLite waits 0.2 s for a lock
    (set before the app opens its store, whose connections keep the wait they were made with)."""
    root = tmp_path_factory.mktemp("resilience")
    default = make_model_folder(root / "models" / "default", demo=True)
    other = make_model_folder(root / "models" / "other", demo=True, name="other-demo")
    with pytest.MonkeyPatch.context() as patch:
        app_like_the_server(patch, root / "models", default, root / "runs")
        patch.delenv("BREAKHIS_KEEP_IMAGES", raising=False)
        patch.setattr(db, "BUSY_TIMEOUT_MS", 200)
        yield {"root": root, "default": default.resolve(), "other": other.resolve()}


@pytest.fixture
def app(environment) -> AppTest:
    return AppTest.from_file(APP, default_timeout=APP_TIMEOUT).run()


def shown(app: AppTest, kind: str) -> str:
    return "\n".join(str(e.value) for e in getattr(app, kind))


def choose_sample(app: AppTest) -> AppTest:
    samples = app.multiselect(key="samples")
    return samples.set_value([next(o for o in samples.options if SAMPLE in o)]).run()


def diagnosis_rows() -> int:
    store = Store.open()
    try:
        return len(store.events(kinds="diagnosis"))
    finally:
        store.close()


def test_images_that_cannot_be_kept_leave_the_diagnosis_shown_and_recorded_once(app, environment, monkeypatch):
    monkeypatch.setenv("BREAKHIS_KEEP_IMAGES", "1")
    data_dir().mkdir(parents=True, exist_ok=True)
    images = data_dir() / "images"
    images.write_text("a file where the images folder should be")
    try:
        before = diagnosis_rows()
        app = choose_sample(app)
        for _ in range(2):  # any widget touch reruns the page
            assert not app.exception
            assert "could not be kept for the Review queue" in shown(app, "warning")
            assert [c for image in app.image for c in image.captions][0] == "Image"  # the diagnosis is shown
            app.slider(key="opacity").set_value(0.6).run()
        assert diagnosis_rows() == before + 1
    finally:
        images.unlink()
    app.run()  # the folder can be made now: the images are kept, the diagnosis is not recorded again
    assert not app.exception and "could not be kept" not in shown(app, "warning")
    assert list(images.rglob("*")) and diagnosis_rows() == before + 1


def test_a_busy_database_holds_the_diagnosis_back_with_a_message_and_keeps_the_choice(app):
    before = diagnosis_rows()
    with write_locked(data_dir() / db.SQLITE_FILE):
        app = choose_sample(app)
    assert not app.exception
    assert BUSY in shown(app, "error") and "Nothing was lost" in shown(app, "error")
    assert not app.image and SAMPLE in str(app.multiselect(key="samples").value)  # nothing shown unrecorded
    app.run()  # the lock is gone: trying again records and shows it
    assert not app.exception and app.image and diagnosis_rows() == before + 1


def test_a_busy_database_refuses_the_sidebar_model_switch_in_words(app, environment):
    with write_locked(data_dir() / db.SQLITE_FILE):
        app.selectbox(key="model_picker").set_value(str(environment["other"])).run()
    assert not app.exception
    assert BUSY in shown(app.sidebar, "error") and "The active model was not changed" in shown(app.sidebar, "error")
    assert app.session_state["active_model"] == str(environment["default"])
    app.selectbox(key="model_picker").set_value(str(environment["other"])).run()
    assert not app.exception and app.session_state["active_model"] == str(environment["other"])


def test_the_audit_log_and_the_review_queue_say_the_trail_cannot_be_read(app, monkeypatch):
    def refused(*args, **kwargs):
        raise StoreError("The audit trail could not be read: the database refused it (database disk image is "
                         "malformed).")

    monkeypatch.setattr(Store, "events", refused)
    for page in ("pages/audit.py", "pages/review.py"):
        app.switch_page(page).run()
        assert not app.exception, page
        assert "could not be read" in shown(app, "error") and "Nothing was lost" in shown(app, "error")
    monkeypatch.undo()
    app.switch_page("pages/audit.py").run()
    assert not app.exception and not app.error


def test_one_unreadable_kept_image_is_a_note_on_its_card_not_the_end_of_the_queue(app, monkeypatch):
    from core.store.images import ImageStore

    monkeypatch.setenv("BREAKHIS_KEEP_IMAGES", "1")
    images = ImageStore()
    readable, unreadable = images.put(png_bytes(tissue_like())), images.put(png_bytes(tissue_like((80, 80))))
    store = Store.open()
    for sha in (readable, unreadable):
        store.record("diagnosis", "local", f"SOB_B_F-14-9133-40-{sha[:3]}.png", image_sha256=sha, model="m",
                     details={"call": "benign", "subtype": "fibroadenoma", "confidence": 0.9, "refer": False})
    store.close()
    original = Path.read_bytes

    def read_bytes(path):  # chmod 000 does not stop root (CI runs as root)
        if path == images.path(unreadable):
            raise PermissionError(13, "Permission denied", str(path))
        return original(path)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    app.switch_page("pages/review.py").run()
    assert not app.exception
    assert shown(app, "warning").count("The kept image is unavailable") == 1
    assert "Permission denied" in shown(app, "warning") and app.image  # the other cards show theirs
    listed = shown(app, "markdown").replace("\\", "")
    assert all(f"40-{sha[:3]}.png" in listed for sha in (readable, unreadable))  # both cards, the queue goes on


def test_chosen_samples_survive_a_page_visit_and_a_briefly_unusable_model(app, monkeypatch):
    from core.app import session
    from core.errors import ModelFolderError

    app = choose_sample(app)
    chosen = app.multiselect(key="samples").value
    app.switch_page("pages/dataset.py").run()
    app.switch_page("pages/diagnose.py").run()
    assert not app.exception and app.multiselect(key="samples").value == chosen

    def unusable(folder):
        raise ModelFolderError("model.keras does not match its card")

    monkeypatch.setattr(session, "get_predictor", unusable)
    app.run()
    assert "The active model cannot be used" in shown(app, "error")
    monkeypatch.undo()
    app.run()
    assert not app.exception and app.multiselect(key="samples").value == chosen and app.image


# ---------------------------------------------------------------- a refused session cookie (sign-in on)

@pytest.fixture
def signing(environment, monkeypatch):
    """Sign-in on, with the account 'ann'; the browser's cookie is what the test sets in `cookie`."""
    from core.app import signin
    from core.store import accounts

    monkeypatch.delenv("BREAKHIS_SINGLE_USER")
    store = Store.open()
    if not accounts.list_accounts(store):
        accounts.add_account(store, "ann", "a long enough password", "pathologist")
    store.close()
    cookie = {}
    monkeypatch.setattr(signin, "_browser_token", lambda: cookie.get("token"))
    return cookie


@pytest.mark.parametrize("replaced, words", [("key", "signed with another session key: this server's key was replaced"),
                                             ("database", "database was probably replaced")])
def test_a_refused_session_cookie_is_explained_on_the_sign_in_page(signing, replaced, words):
    from core.store import sessions

    key = sessions.signing_key(data_dir()) if replaced == "database" else b"another server's key, 32 bytes long"
    expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
    signing["token"] = sessions.make_token(key, "a session this database never had", expires)
    app = AppTest.from_file(APP, default_timeout=APP_TIMEOUT).run()
    assert not app.exception and [t.value for t in app.title] == ["Sign in"]
    assert "Your previous session could not be resumed" in shown(app, "info") and words in shown(app, "info")
