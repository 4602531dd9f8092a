"""Text from users is shown as text (QA priv #1): a file name, a review comment or an account name that
holds Markdown must not become an image every viewer's browser fetches (a tracking pixel), a link (a
fake "sign in again"), a formula or a colour. The pages pass such text through core.app.session.plain;
AppTest shows each element's Markdown source, so the tests read that source."""

import html
import re

import pytest
from streamlit.testing.v1 import AppTest

from core.app.session import plain
from tests.app_helpers import APP, APP_TIMEOUT, app_like_the_server, make_model_folder, png_bytes

PIXEL = "![seen](http://evil.example/pixel.png)"
PHISH = "[Session expired: sign in again](http://evil.example/login)"
NASTY = [PIXEL, PHISH, "<http://evil.example/a>", "http://evil.example/b www.evil.example", "**bold** _it_ `code`",
         "# heading", ":red[colour] $x^2$ ~~gone~~", "a | b\n--|--\n1 | 2", "&amp; &lt;b&gt; <b>raw</b>",
         "1. list\n- item\n> quote", "back\\slash \\[ \\", "SOB_M_DC-14-2523-40-010.png"]


def markdown_constructs(source: str) -> list[str]:
    """Unescaped Markdown that makes a request, a link or a formula (what the QA report found rendered)."""
    unescaped = re.sub(r"\\.", "", source)  # what follows a backslash is literal text
    return [marker for marker in ("![", "](", "<http", "http://", "www.", "$", ":red[") if marker in unescaped]


@pytest.mark.parametrize("text", NASTY)
def test_plain_text_renders_as_itself_in_commonmark(text):
    markdown_it = pytest.importorskip("markdown_it")
    rendered = markdown_it.MarkdownIt("commonmark").enable(["table", "strikethrough"]).render(plain(text))
    assert re.fullmatch(r"<p>.*</p>\n", rendered, re.S), rendered  # one paragraph: no heading, list, table, code
    assert html.unescape(re.sub(r"<[^>]+>", "", rendered)).strip() == " ".join(text.split("\n")).strip()
    assert not markdown_constructs(plain(text))  # Streamlit's extras too: autolinks, formulas, colours


@pytest.fixture(scope="module")
def environment(tmp_path_factory):
    root = tmp_path_factory.mktemp("markdown")
    default = make_model_folder(root / "models" / "default", demo=True)
    with pytest.MonkeyPatch.context() as patch:
        app_like_the_server(patch, root / "models", default, root / "runs")
        yield root


def sources(app) -> str:
    kinds = ("markdown", "caption", "error", "warning", "info", "success", "title", "subheader")
    return "\n".join(str(e.value) for kind in kinds for e in getattr(app, kind))


def test_the_review_queue_shows_another_users_file_name_comment_and_name_as_text(environment):
    from core.store import accounts, reviews
    from core.store.audit import Store

    store = Store.open()
    row = store.record("diagnosis", f"mallory {PHISH}", f"SOB_M_DC-14-2523-40-010 {PIXEL}.png", model=f"m {PIXEL}",
                       details={"call": "malignant", "subtype": "ductal_carcinoma", "confidence": 0.9, "refer": False})
    accounts.add_account(store, "mallory", None, "pathologist")  # the store takes reviews by accounts only
    reviews.review(store, "mallory", row, comment=f"ok {PIXEL} {PHISH} http://evil.example/c")
    app = AppTest.from_file(APP, default_timeout=APP_TIMEOUT).run()
    app.switch_page("pages/review.py").run()
    app.toggle(key="include_reviewed").set_value(True).run()
    assert not app.exception
    shown = sources(app)
    assert plain("SOB_M_DC-14-2523-40-010") in shown and plain(PHISH) in shown  # the card and its review are there
    assert not markdown_constructs(shown), shown
    store.close()


def test_diagnose_shows_a_file_name_as_text_in_titles_and_messages(environment, samples_dir):
    field = next(samples_dir.rglob("SOB_B_F-14-9133-40-001.png")).read_bytes()
    name = f"SOB_B_F-14-9133-40-001 {PIXEL}.png"
    app = AppTest.from_file(APP, default_timeout=APP_TIMEOUT).run()
    app.file_uploader(key="uploads").set_value([(name, field, "image/png"), (name, field, "image/png"),
                                                (f"broken {PHISH}.png", b"not an image", "image/png"),
                                                (f"photo {PHISH}.png", png_bytes(_green_photo()), "image/png")]).run()
    assert not app.exception
    shown = sources(app)
    assert "Given more than once" in shown and f"#### {plain(name)}" in shown  # the card's title, escaped
    assert plain("broken ") in shown and plain("photo ") in shown  # the error and the not-analysed warning
    assert not markdown_constructs(shown), shown
    app.switch_page("pages/review.py").run()
    app.switch_page("pages/diagnose.py").run()  # the upload is carried over: its name in a caption
    assert "Still here from before" in sources(app) and not markdown_constructs(sources(app))


def test_slide_shows_a_file_name_as_text_in_its_message(environment):
    app = AppTest.from_file(APP, default_timeout=APP_TIMEOUT).run()
    app.switch_page("pages/slide.py").run()
    app.file_uploader(key="slide_upload").set_value([(f"slide {PIXEL}.tif", b"not a slide", "image/tiff")]).run()
    app.button(key="slide_start").click().run()
    assert not app.exception and plain("slide ") in "\n".join(e.value for e in app.error)
    assert not markdown_constructs(sources(app)), sources(app)


def _green_photo():
    import numpy as np

    photo = np.zeros((120, 160, 3), np.uint8)
    photo[..., 1] = np.linspace(40, 220, 160, dtype=np.uint8)[None, :]
    return photo


def test_the_sidebar_shows_the_account_name_as_text(tmp_path):
    """The sidebar's "Signed in as **name**" was the one place an account name was Markdown: an e-mail address
    became a link, and a name holding an image link made every viewer's browser fetch it."""
    from core.testing.apptest import sign_in
    from tests.app_helpers import PASSWORD, signed_in_app

    name = "eve![x](http://evil.example/p.png)@hospital.org"
    with signed_in_app(tmp_path, {name: "pathologist"}):
        app = sign_in(AppTest.from_file(APP, default_timeout=APP_TIMEOUT).run(), name, PASSWORD)
        [caption] = [c.value for c in app.sidebar.caption if c.value.startswith("Signed in as")]
    assert "![x](http" not in caption and "eve\\!\\[x\\]" in caption
