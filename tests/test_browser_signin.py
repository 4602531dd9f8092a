"""A reload keeps the user signed in, in a real browser (`streamlit run app.py` + Debian's headless
Chromium): sign in, reload, still signed in on the same page; sign out, reload: the sign-in page,
and the old cookie replayed is refused; a tampered, expired, idle or revoked cookie gives the
sign-in page; a pathologist's cookie (even re-signed with a role claim) never opens an admin page.
The cookie-writing script itself is tested without a browser."""

import datetime
import json
import os
import time
from pathlib import Path

import jwt
import pytest
from playwright.sync_api import expect

from core.app.cookies import COOKIE, cookie_script
from core.store import accounts, sessions
from core.store.audit import Store
from core.testing.apptest import app_environment
from core.testing.server import CHROMIUM, CHROMIUM_ARGS, streamlit_server
from tests.app_helpers import PASSWORD, make_model_folder

WAIT_MS = 180_000
STALE_MS = 30_000  # the previous run's elements are gone within this once the page has changed
browser_only = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                  reason=f"{CHROMIUM} not installed (apt-get install -y chromium)")


def test_the_cookie_script_sets_or_removes_only_a_token():
    token = jwt.encode({"jti": "x", "exp": 1}, "k" * 32, algorithm="HS256")
    script = cookie_script(token, 3600)
    assert f"{COOKIE}={token}; Path=/; Max-Age=3600; SameSite=Strict" in script and "'; Secure'" in script
    assert f"{COOKIE}=; Path=/; Max-Age=0; SameSite=Strict" in cookie_script(None, 3600)
    for bad in ('x"; alert(1); "', "a.b.c</script><script>alert(1)", "not a token"):
        with pytest.raises(ValueError, match="not a session token"):
            cookie_script(bad, 3600)


# ---------------------------------------------------------------- in Chromium

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One app server for the module, sign-in on (no single-user mode), its own data folder."""
    root = tmp_path_factory.mktemp("browser_signin")
    default = make_model_folder(root / "models" / "default", demo=True)
    environment = {**app_environment(root / "models", default, root / "runs"), "BREAKHIS_SINGLE_USER": "",
                   "BREAKHIS_SESSION_KEY": "", "BREAKHIS_DATABASE_URL": ""}
    data = Path(environment["BREAKHIS_DATA_DIR"])
    store = Store.open(f"sqlite:///{data / 'breakhis.db'}")
    for name, role in (("pat", "pathologist"), ("boss", "admin"), ("carl", "pathologist")):
        accounts.add_account(store, name, PASSWORD, role)
    with streamlit_server(root, environment) as url:
        yield {"url": url, "store": store, "data": data, "log": root / "streamlit.log"}
    store.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1200})
    yield context.new_page()
    context.close()


def sign_in_page_shown(page) -> None:
    """The sign-in page, and no trace of a signed-in user. Streamlit keeps the previous run's
    elements (the sidebar's "Signed in as") on screen until the new run ends, so the heading can
    show before they go (seen once under two test workers): wait for them to go, within limits."""
    page.get_by_role("heading", name="Sign in").wait_for(timeout=WAIT_MS)
    expect(page.get_by_text("Signed in as")).to_have_count(0, timeout=STALE_MS)


def signed_in_as(page, name: str, role: str) -> None:
    page.locator('[data-testid="stSidebar"]').get_by_text(f"Signed in as {name} ({role})").wait_for(timeout=WAIT_MS)


def sign_in(page, url: str, name: str) -> dict:
    """Sign in through the form; the session cookie the page then holds."""
    page.goto(url, wait_until="domcontentloaded")
    page.get_by_role("heading", name="Sign in").wait_for(timeout=WAIT_MS)
    page.get_by_role("textbox", name="Name").fill(name)
    page.get_by_role("textbox", name="Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("heading", name="Diagnose").wait_for(timeout=WAIT_MS)
    page.wait_for_function(f"() => document.cookie.includes('{COOKIE}=')", timeout=WAIT_MS)
    return session_cookie(page)


def cookie_forgotten(page) -> None:
    """Wait until the page's script has removed a refused or signed-out cookie. Setting the next
    cookie before that races with it: the old page's removal may delete the new cookie, whose
    visit then sends none (seen once under two test workers: an "expired" visit left no row)."""
    page.wait_for_function(f"() => !document.cookie.includes('{COOKIE}=')", timeout=WAIT_MS)


def session_cookie(page) -> dict | None:
    found = [c for c in page.context.cookies() if c["name"] == COOKIE]
    return found[0] if found else None


def with_cookie(page, url: str, cookie: dict, value: str) -> None:
    page.context.clear_cookies()
    page.context.add_cookies([{**cookie, "value": value}])
    page.goto(url, wait_until="domcontentloaded")


@browser_only
def test_a_reload_keeps_the_user_on_the_same_page_until_sign_out(server, page):
    url, store = server["url"], server["store"]
    cookie = sign_in(page, url, "pat")
    assert cookie["sameSite"] == "Strict" and cookie["path"] == "/" and not cookie["secure"]  # plain HTTP here
    assert 0 < cookie["expires"] - datetime.datetime.now().timestamp() <= sessions.MAX_HOURS * 3600 + 60
    page.get_by_role("link", name="Dataset").click()
    page.get_by_role("heading", name="Dataset").wait_for(timeout=WAIT_MS)
    page.reload(wait_until="domcontentloaded")
    page.get_by_role("heading", name="Dataset").wait_for(timeout=WAIT_MS)  # the same page, signed in
    signed_in_as(page, "pat", "pathologist")
    assert page.url.rstrip("/").endswith("/dataset") and page.get_by_role("heading", name="Sign in").count() == 0
    assert [e["user"] for e in store.events(kinds="session_resumed")][:1] == ["pat"]

    page.locator('[data-testid="stSidebar"]').get_by_role("button", name="Sign out").click()
    sign_in_page_shown(page)
    cookie_forgotten(page)
    page.reload(wait_until="domcontentloaded")
    sign_in_page_shown(page)
    with_cookie(page, url, cookie, cookie["value"])  # a copy of the signed-out cookie is refused
    sign_in_page_shown(page)
    refused = store.events(kinds="sign_in_failed", user="pat", limit=1)
    assert refused[0]["details"] == {"method": "session cookie", "reason": "revoked"}
    log = server["log"].read_text(errors="replace")  # neither the token nor the key is ever logged
    assert cookie["value"] not in log and sessions.signing_key(server["data"]).decode() not in log


@browser_only
def test_tampered_expired_idle_and_revoked_cookies_give_the_sign_in_page(server, page):
    url, store = server["url"], server["store"]
    key = sessions.signing_key(server["data"])  # the server's key, made on its first start
    cookie = sign_in(page, url, "carl")
    header, payload, signature = cookie["value"].split(".")
    flipped = signature[:-2] + ("AA" if signature[-2:] != "AA" else "BB")
    now = datetime.datetime.now(datetime.UTC)
    _, expired = sessions.start(store, "carl", key, now - datetime.timedelta(hours=sessions.MAX_HOURS + 1))
    _, idle = sessions.start(store, "carl", key, now - datetime.timedelta(minutes=31))
    refused_before = len(store.events(kinds="sign_in_failed", user="carl"))
    all_before = len(store.events(kinds="sign_in_failed"))
    for value in (f"{header}.{payload}.{flipped}", expired, idle, "garbage"):
        with_cookie(page, url, cookie, value)
        sign_in_page_shown(page)
        cookie_forgotten(page)  # the browser forgets a refused cookie
    deadline = time.monotonic() + 60  # the server may show the page a moment before its audit row commits
    while len(store.events(kinds="sign_in_failed")) < all_before + 4 and time.monotonic() < deadline:
        time.sleep(0.2)
    reasons = [e["details"]["reason"] for e in store.events(kinds="sign_in_failed", newest_first=False)]
    assert reasons[-4:] == ["tampered", "expired", "idle", "tampered"]
    assert len(store.events(kinds="sign_in_failed", user="carl")) == refused_before + 2  # the two with a row

    with_cookie(page, url, cookie, cookie["value"])  # the real cookie still works...
    signed_in_as(page, "carl", "pathologist")
    accounts.change_account(store, "carl", "boss", active=False)  # ...until the account is disabled
    page.reload(wait_until="domcontentloaded")
    sign_in_page_shown(page)


@browser_only
def test_a_pathologist_cookie_never_opens_admin_pages(server, page):
    url = server["url"]
    cookie = sign_in(page, url, "pat")
    claims = jwt.decode(cookie["value"], sessions.signing_key(server["data"]), algorithms=["HS256"])
    with_role = jwt.encode({**claims, "role": "admin", "name": "boss"}, sessions.signing_key(server["data"]),
                           algorithm="HS256")
    for value in (cookie["value"], with_role):
        for path in ("audit", "retrain", "compare"):
            with_cookie(page, f"{url}/{path}", cookie, value)
            signed_in_as(page, "pat", "pathologist")
            sidebar = page.locator('[data-testid="stSidebar"]')
            sidebar.get_by_role("link", name="Dataset").wait_for(timeout=WAIT_MS)
            assert sidebar.get_by_role("link", name="Audit log").count() == 0
            assert sidebar.get_by_role("link", name="Retrain").count() == 0
            for admin_heading in ("Audit log", "Retrain", "Compare models"):
                assert page.get_by_role("heading", name=admin_heading).count() == 0
    assert json.dumps(claims).count("role") == 0  # the token the app wrote names no role
