"""What core.store.roles grants is what the app does (QA priv #7): a permission no page, callback or
check ever reads is a promise nobody keeps (own_history said a pathologist saw only their own results,
while the Review queue showed everyone's). And the decision itself: the Review queue and a case's history
are the department's shared worklist, so a pathologist sees and reviews every user's results."""

import ast
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.store import roles
from core.testing.apptest import sign_in
from tests.app_helpers import APP, APP_TIMEOUT, PASSWORD, REPO, signed_in_app, tables

CHECKS = {"require": 0, "permitted": 0, "can": 1}  # the functions that check a role, and where the action goes


def checked_actions() -> set[str]:
    """Every action the app checks: require("x"), permitted("x"), can(role, "x"), and app.py's
    navigation, which registers each page only for the roles that may do its action."""
    found = set()
    for path in [REPO / "app.py", *sorted((REPO / "pages").glob("*.py")), *sorted((REPO / "core" / "app").glob("*.py"))]:
        for node in ast.walk(ast.parse(Path(path).read_text())):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "attr", getattr(node.func, "id", None))
                where = CHECKS.get(name)
                if where is not None and len(node.args) > where and isinstance(node.args[where], ast.Constant):
                    found.add(node.args[where].value)
            if (isinstance(node, ast.Tuple) and len(node.elts) == 2 and isinstance(node.elts[0], ast.Call)
                    and getattr(node.elts[0].func, "attr", None) == "Page" and isinstance(node.elts[1], ast.Constant)):
                found.add(node.elts[1].value)
    return found


def test_every_permission_a_role_grants_is_checked_by_the_app():
    granted = set().union(*roles.PERMISSIONS.values())
    checked = checked_actions()
    assert {"diagnose", "review", "retrain", "audit", "choose_model", "activate_model"} <= checked  # the scan works
    assert granted <= checked, f"granted but never checked: {sorted(granted - checked)}"


@pytest.fixture
def env(tmp_path):
    with signed_in_app(tmp_path, {"pat": "pathologist"}) as (store, _):
        yield store


def test_a_pathologist_sees_and_reviews_everyones_results_in_the_shared_worklist(env):
    row = env.record("diagnosis", "boss", "SOB_M_DC-14-2523-40-010.png", model="m",
                     details={"call": "malignant", "subtype": "ductal_carcinoma", "confidence": 0.9, "refer": True,
                              "refer_reasons": ["stage 1 uncertain"], "case": "14-2523"})
    app = sign_in(AppTest.from_file(APP, default_timeout=APP_TIMEOUT).run(), "pat", PASSWORD)
    app.switch_page("pages/review.py").run()
    assert not app.exception and any(f"#{row}" in m.value and "by boss" in m.value for m in app.markdown)
    app.text_input(key="history_case").input("14-2523").run()
    [history] = tables(app, "file")
    assert list(history["user"]) == ["boss"]
    app.checkbox(key=f"original_queue_{row}").check()  # images are not kept: the review is of the original
    app.button(key=f"FormSubmitter:review_queue_{row}-Save review").click().run()  # "agree"
    [review] = env.events(kinds="review", refers_to_any=[row])
    assert review["user"] == "pat"
