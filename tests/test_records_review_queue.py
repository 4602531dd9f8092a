"""The Review queue page with more results waiting than it shows: each section says what it does not
show, and the reviewed results stay reachable (they were cut off behind the unreviewed ones)."""


import pytest
from streamlit.testing.v1 import AppTest

from tests.app_helpers import APP, APP_TIMEOUT, app_like_the_server, make_model_folder, texts


@pytest.fixture
def app(tmp_path):
    default = make_model_folder(tmp_path / "models" / "default", demo=True)
    with pytest.MonkeyPatch.context() as patch:
        app_like_the_server(patch, tmp_path / "models", default, tmp_path / "runs")
        yield AppTest.from_file(APP, default_timeout=APP_TIMEOUT).run()


def test_included_reviewed_results_show_behind_a_full_page_of_waiting_ones(app):
    from core.store import reviews
    from core.store.audit import Store

    store = Store.open()
    details = {"call": "benign", "subtype": "fibroadenoma", "confidence": 0.9, "refer": False}
    [old] = store.record_many([dict(kind="diagnosis", user="ann", subject="old-reviewed.png", details=details)])
    store.record_many([dict(kind="diagnosis", user="ann", subject=f"new-{i}.png", details=details) for i in range(60)])
    reviews.review(store, "bob", old, comment="fine")
    app.switch_page("pages/review.py").run()
    assert not app.exception
    assert "Showing 50 of 60 results waiting for review (referred first, then newest); 10 more are not shown." in (
        texts(app.caption))
    assert "old-reviewed.png" not in texts(app.markdown)
    app.toggle(key="include_reviewed").set_value(True).run()
    assert not app.exception
    assert "old-reviewed.png" in texts(app.markdown) and "Reviewed by bob: agreed Benign" in texts(app.caption)
    assert "Reviewed (1)" in texts(app.subheader)
    store.close()
