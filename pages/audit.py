"""Audit log (administrators): the append-only trail, filtered, its integrity, and its CSV export."""

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


def integrity() -> None:
    """The last check of the hash chain and the triggers (the server's start checks the newest rows),
    said as of when it ran and of the rows the trail held then, and a button to check the whole trail now
    (about 0.1 ms a row)."""
    verdict, origin = store.integrity, "when the server opened the trail"
    if st.button("Check the trail's integrity now", key="audit_check", icon=":material/verified:"):
        try:
            verdict, origin = store.check(), "by the check you asked for"
        except StoreError as problem:
            st.error(session.nothing_lost(problem), icon=":material/database:")
    if verdict is None:
        return
    when = f"{verdict.checked_at:%Y-%m-%d %H:%M} UTC, {origin}, of {verdict.scope()} the trail held then"
    for problem in verdict.problems():
        st.error(f"{problem[0].upper()}{problem[1:]} (checked {when}; `python -m core db verify`).",
                 icon=":material/gpp_bad:")
    if verdict.ok:
        st.caption(f"Last integrity check {when}: hash chain intact and append-only triggers in place; head "
                   f"{verdict.head_id}:{verdict.head_sha256}. Rows written since are checked by the next check.")

integrity()
today = datetime.datetime.now(datetime.UTC).date()
left, middle, right = st.columns(3)
kinds = left.multiselect("Kinds", KINDS, key="audit_kinds")
user = middle.text_input("User", key="audit_user").strip() or None
audit_id = right.number_input("Audit id", min_value=1, value=None, step=1, key="audit_id",
                              help="That row and the rows that refer to it (its reviews), whatever its date")
left, middle, right = st.columns(3)
first = left.date_input("From (UTC)", today - datetime.timedelta(days=7), key="audit_from")
last = middle.date_input("To (UTC, inclusive)", today, key="audit_to")
subject = right.text_input("Subject contains", key="audit_subject",
                           help="File, model or account name; any case").strip() or None
filters = {"kinds": kinds or None, "user": user, "subject_contains": subject}
if audit_id is not None:
    filters["audit_id"] = int(audit_id)
else:
    midnight = datetime.time(tzinfo=datetime.UTC)
    filters["since"] = datetime.datetime.combine(first, midnight)
    filters["until"] = datetime.datetime.combine(last + datetime.timedelta(days=1), midnight)
try:
    frame = store.frame(**filters, limit=1000)
except StoreError as problem:  # a busy or damaged database: a message, the filters kept
    st.error(session.nothing_lost(problem), icon=":material/database:")
    st.stop()
st.caption(f"{len(frame)} rows shown (newest first, at most 1,000); the CSV has every matching row.")
st.dataframe(frame, hide_index=True)
# Built only when the button is pressed (a large trail takes seconds), not on every change of a filter.
st.download_button("Export CSV", lambda: store.csv(**filters), "breakhis_audit.csv", "text/csv", key="audit_csv")
