"""The browser tab's icon is drawn locally: a `:material/...:` page icon makes Streamlit's frontend fetch
the favicon from fonts.gstatic.com on every page load (each user's IP to a third party, from an app
that promises to work offline); an emoji becomes a data: URL in the page itself."""

import streamlit as st
from streamlit.testing.v1 import AppTest

from tests.app_helpers import APP, APP_TIMEOUT, app_like_the_server, make_model_folder


def test_the_page_icon_needs_no_request_outside_the_server(tmp_path, monkeypatch):
    from streamlit.string_util import is_emoji

    default = make_model_folder(tmp_path / "models" / "default", demo=True)
    app_like_the_server(monkeypatch, tmp_path / "models", default, tmp_path / "runs")
    icons = []
    real = st.set_page_config

    def spy(*args, **kwargs):
        icons.append(kwargs.get("page_icon"))
        return real(*args, **kwargs)

    monkeypatch.setattr(st, "set_page_config", spy)
    app = AppTest.from_file(APP, default_timeout=APP_TIMEOUT).run()
    assert not app.exception and icons
    for icon in icons:  # Streamlit 1.67's frontend: ':material/x:' -> fonts.gstatic.com; an emoji -> data: URL
        assert isinstance(icon, str) and is_emoji(icon), icon
        assert not icon.startswith(":material") and "://" not in icon
