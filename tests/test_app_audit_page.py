"""The Audit log page (administrators): the trail's integrity shown (QA review #7)."""

import pytest
from sqlalchemy import text
from streamlit.testing.v1 import AppTest

from core.store.audit import Store
from tests.app_helpers import APP, APP_TIMEOUT, app_like_the_server, make_model_folder


@pytest.fixture(scope="module")
def environment(tmp_path_factory):
    """Single-user (an administrator), a DEMO default model, its own database."""
    root = tmp_path_factory.mktemp("audit-page")
    default = make_model_folder(root / "models" / "default", demo=True)
    with pytest.MonkeyPatch.context() as patch:
        app_like_the_server(patch, root / "models", default, root / "runs")
        yield root


def audit_page() -> AppTest:
    app = AppTest.from_file(APP, default_timeout=APP_TIMEOUT).run()
    app.switch_page("pages/audit.py").run()
    assert not app.exception
    return app


def test_a_broken_trail_is_shown_to_administrators(environment):
    store = Store.open()
    row = store.record("diagnosis", "ann", "tampered.png", details={"call": "malignant"})
    app = audit_page()
    assert not [e for e in app.error if "hash chain" in e.value]
    with store.engine.begin() as connection:  # s1: triggers dropped, the call rewritten
        for name in ("audit_no_update", "audit_no_delete", "audit_no_replace"):
            connection.exec_driver_sql(f"DROP TRIGGER {name}")
        connection.execute(text("UPDATE audit SET \"user\" = 'mallory' WHERE id = :id"), {"id": row})
    app.button(key="audit_check").click().run()
    errors = " ".join(e.value for e in app.error)
    assert f"hash chain is broken at id {row}" in errors and "append-only triggers are missing" in errors
    assert "db verify" in errors
    store.close()
