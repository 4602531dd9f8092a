"""Review queue: referred and unreviewed results first; agree or correct, with a comment; a case's history."""

import pandas as pd
import streamlit as st

from core.app import session
from core.data.labels import pretty
from core.store import reviews
from core.store.images import ImageStore, keeping_images

session.require_router()
session.require("review")
store = session.store()

st.title("Review queue")
st.caption("Referred and unreviewed results first, then unreviewed ones, newest first. A review is a new "
           "audit row; earlier reviews stay in the history.")
include = st.toggle("Include reviewed results", key="include_reviewed")
queued = reviews.queue(store, include_reviewed=include)
if not queued:
    st.success("Nothing waits for review.")
for row in queued[:50]:
    d = row["details"]
    done = row["review"]
    with st.container(border=True):
        st.markdown(f"**#{row['id']} · {row['subject']}** · {pretty(d.get('call', ''))}, {pretty(d.get('subtype', ''))} "
                    f"· confidence {d.get('confidence', 0):.2f} · by {row['user']} at {row['at']:%Y-%m-%d %H:%M} UTC "
                    f"· model {row['model']}")
        if d.get("refer"):
            st.error("Referred: " + "; ".join(d.get("refer_reasons", [])), icon=":material/flag:")
        if done:
            st.caption(f"Reviewed by {done['user']}: {'agreed' if done['details']['agree'] else 'corrected to'} "
                       f"{pretty(done['details']['label'])}, {pretty(done['details']['subtype'] or 'subtype open')}"
                       f" — {done['details']['comment']}")
        kept = ImageStore().get(row["image_sha256"]) if keeping_images() and row["image_sha256"] else None
        if kept:
            st.image(kept, width=320)
        elif not keeping_images():
            st.caption("Images are not kept on this deployment (BREAKHIS_KEEP_IMAGES): the record has the hash only.")
        session.review_form(row["id"], f"queue_{row['id']}")

st.subheader("Case history")
case = st.text_input("BreakHis case id (e.g. 14-22549)", key="history_case")
if case:
    rows = reviews.history(store, case=case.strip())
    st.dataframe(pd.DataFrame([{"id": r["id"], "at": r["at"], "kind": r["kind"], "user": r["user"], "file": r["subject"],
                                "call": r["details"].get("call") or r["details"].get("label"),
                                "subtype": r["details"].get("subtype"), "reviews": r["refers_to"],
                                "comment": r["details"].get("comment", "")} for r in rows]), hide_index=True)
