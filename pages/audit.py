"""Audit log (administrators): the append-only trail, filtered, and its CSV export."""

import datetime

import streamlit as st

from core.app import session
from core.store.audit import KINDS
from core.store.db import StoreError

session.require_router()
session.require("audit")
store = session.store()

st.title("Audit log")
st.caption("Append-only: no row is ever changed or deleted; a correction is a new row. Times are UTC.")
left, middle, right = st.columns(3)
kinds = left.multiselect("Kinds", KINDS, key="audit_kinds")
user = middle.text_input("User", key="audit_user").strip() or None
days = right.number_input("Last days", 1, 3650, 7, key="audit_days")
since = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=int(days))
filters = {"kinds": kinds or None, "user": user, "since": since}
try:
    frame, csv = store.frame(**filters, limit=1000), store.csv(**filters)
except StoreError as problem:  # a busy or damaged database: a message, the filters kept
    st.error(session.nothing_lost(problem), icon=":material/database:")
    st.stop()
st.caption(f"{len(frame)} rows shown (newest first, at most 1,000); the CSV has every matching row.")
st.dataframe(frame, hide_index=True)
st.download_button("Export CSV", csv, "breakhis_audit.csv", "text/csv", key="audit_csv")
