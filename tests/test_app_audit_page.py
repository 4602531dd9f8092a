"""The Audit log page (administrators): the trail's integrity shown, filters that reach any row (audit id,
dates, subject), and a CSV built only when asked for (QA review #7, #12)."""

import datetime

import pytest
from sqlalchemy import text
from streamlit.testing.v1 import AppTest

from core.store import accounts
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


def shown_ids(app: AppTest) -> list[int]:
    [table] = app.dataframe
    return sorted(int(i) for i in table.value["id"])


def test_the_audit_log_filters_reach_any_row_and_builds_its_csv_only_when_asked(environment, monkeypatch):
    built = []
    original = Store.csv
    monkeypatch.setattr(Store, "csv", lambda self, **filters: built.append(filters) or original(self, **filters))
    store = Store.open()
    accounts.add_account(store, "bob", None, "pathologist")
    # 10:00 UTC: the review an hour later falls on the same UTC day whatever time the suite runs (CI at 23:16
    # once put it on the next day, outside the one-day filter below)
    long_ago = (datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=90)).replace(hour=10, minute=0)
    old = store.record("diagnosis", "ann", "SOB_M_DC-14-2523-40-010.png", details={"call": "malignant"}, at=long_ago)
    review = store.record("review", "bob", "SOB_M_DC-14-2523-40-010.png", refers_to=old, details={"agree": True},
                          at=long_ago + datetime.timedelta(hours=1))
    recent = store.record("diagnosis", "ann", "scan_0001.png", details={"call": "benign"})
    app = audit_page()
    assert old not in shown_ids(app) and recent in shown_ids(app)  # the last 7 days by default
    app.number_input(key="audit_id").set_value(old).run()  # a printed report's id: its row and its review
    assert shown_ids(app) == [old, review]
    app.number_input(key="audit_id").set_value(None).run()
    day = long_ago.date()
    app.date_input(key="audit_from").set_value(day).run()
    app.date_input(key="audit_to").set_value(day).run()
    assert shown_ids(app) == [old, review]
    app.date_input(key="audit_to").set_value(datetime.datetime.now(datetime.UTC).date()).run()
    app.text_input(key="audit_subject").input("dc-14-2523").run()  # any case
    assert shown_ids(app) == [old, review]
    app.text_input(key="audit_subject").input("SCAN_").run()
    assert shown_ids(app) == [recent]
    assert not app.exception and built == []  # several runs, no CSV built: only the button's click builds it
    store.close()


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


def test_the_integrity_line_says_when_it_was_checked_and_on_the_rows_the_trail_held_then(environment, monkeypatch):
    """'Hash chain intact (all 2 rows, checked 12:19 UTC)' above a table of 16 rows read as the table's state: it was
    the server start's check."""
    monkeypatch.setenv("BREAKHIS_DATA_DIR", str(environment / "intact-trail"))  # its own database, never broken
    store = Store.open()
    app = audit_page()
    for index in range(3):
        store.record("diagnosis", "ann", f"later-{index}.png", details={"call": "benign"})
    app.run()
    line = next(c.value for c in app.caption if "hash chain intact" in c.value)
    assert line.startswith("Last integrity check ") and "when the server opened the trail" in line
    assert " rows the trail held then" in line and "Rows written since are checked by the next check" in line
    app.button(key="audit_check").click().run()
    line = next(c.value for c in app.caption if "hash chain intact" in c.value)
    assert "by the check you asked for, of all " in line and f"all {store.check().rows} rows" in line
    store.close()
