"""The session cookie as the browser sees it: its name, and the script that writes or removes it.

Why a script: Streamlit (1.67, `streamlit run`) answers page requests itself, so app code cannot
add a Set-Cookie header; it can read the cookies the browser sent (`st.context.cookies`, those of
the request that opened the page) and run a script in the page (`st.html(...,
unsafe_allow_javascript=True)`, not iframed, nothing downloaded). A cookie written by a script
cannot be HttpOnly, so a script injected into the page could read it. What limits that: the
cookie holds only a signed session id and expiry (core.store.sessions), lives MAX_HOURS at most,
is checked against its database row at every page run (sign-out, a disabled account or a new
password revoke it on the server, whatever the browser keeps), idles out after
BREAKHIS_SESSION_MINUTES, is SameSite=Strict (never sent by another site's request) and Secure
when the page is served over HTTPS. The app renders no user-supplied HTML. Nothing here imports
Streamlit (core.app.signin renders it), so it is tested on its own.
"""

from __future__ import annotations

import json
import re

COOKIE = "breakhis_session"
_TOKEN = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")


def cookie_script(token: str | None, max_age_seconds: int) -> str:
    """A <script> that sets the session cookie to `token` (None: removes it). Path=/ (every page),
    SameSite=Strict, and Secure when the page itself came over HTTPS (behind a TLS proxy)."""
    if token is not None and not _TOKEN.match(token):
        raise ValueError("not a session token")  # never interpolate anything else into a script
    value, age = (token, int(max_age_seconds)) if token else ("", 0)
    cookie = json.dumps(f"{COOKIE}={value}; Path=/; Max-Age={age}; SameSite=Strict")
    return ("<script>(function () { var cookie = " + cookie + ";"
            " if (window.location.protocol === 'https:') { cookie += '; Secure'; }"
            " document.cookie = cookie; })();</script>")
