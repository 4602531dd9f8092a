"""Review queue: referred and unreviewed results first; agree or correct, with a comment; a case's history."""

import pandas as pd
import streamlit as st

from core.app import records, session
from core.data.labels import pretty
from core.store import reviews
from core.store.db import StoreError
from core.store.images import DAMAGED, MISSING, UNREADABLE, ImageStore, keeping_images

session.require_router()
session.require("review")
store = session.store()

st.title("Review queue")
st.caption("Referred results first, then the other unreviewed ones, oldest first within each (the longest waiting "
           "at the top); reviewed results (if included) below them, newest review first. A review is a new audit "
           "row; earlier reviews stay in the history. Each card gives stage 1's p(malignant) and the subtype's "
           "probability within the class the model chose.")


def called(row: dict) -> str:
    """What the model called: a field's class with p(malignant) and its subtype with p(subtype | class),
    "not reliable for this model" where the row says so (records.recorded_call); a slide's call (no
    subtype, no one probability: the Slide page and its PDF have the regions and tiles)."""
    if row["kind"] == "slide":
        label, _ = reviews.model_call(row)
        return f"slide call: {pretty(label) if label else 'none (this model makes no slide call)'}"
    return records.recorded_call(row["details"])


def reviewed(row: dict, done: dict) -> str:
    """A review's verdict, whether it was the result's own user's (a self-review), and whether it was
    made without the image on screen."""
    d = done["details"]
    return (f"Reviewed by {session.plain(done['user'])}{' (self-review)' if reviews.self_review(row, done) else ''}: "
            f"{reviews.verdict_text(done)}"
            f"{' (on the original; the image was not shown)' if d.get('image_shown') is False else ''}"
            f" — {session.plain(d['comment'])}")


SHOWN = 50  # cards per section: each is a form


def kept_image(row: dict) -> bytes | str | None:
    """The kept image's bytes, None if it was not kept, or a warning why it cannot be shown: missing (its
    row says it was kept) or damaged (a patient image lost or rotted must be seen) or unreadable. One such
    file is a note on its card, not the end of the queue."""
    if not keeping_images() or not row["image_sha256"]:
        return None
    kept = ImageStore().read(row["image_sha256"], expected=row["details"].get("image_kept") is True)
    if kept.status == MISSING:
        return ("The kept image is missing: this result was analysed while images were kept, but its file is not in "
                "the image store (deleted, or it could not be written then). The record is intact; tell an "
                "administrator.")
    if kept.status == DAMAGED:
        return ("The kept image is damaged: its bytes no longer match the SHA-256 recorded (bit rot or an edit), so "
                "it is not shown. The record is intact; tell an administrator.")
    if kept.status == UNREADABLE:
        return (f"The kept image is unavailable: it cannot be read ({session.plain(kept.problem)}). The record is "
                "intact.")
    return kept.data  # None: not kept


def card(row: dict) -> None:
    """One result: the model's call, its referral, its newest review, the kept image and the review form.
    The file name, the user and the model are shown as text (session.plain): another user chose them."""
    d = row["details"]
    done = row["review"]
    weights = f" · weights {session.plain(row['model_sha256'][:12])}" if row.get("model_sha256") else ""
    badge = records.recorded_badge(d)  # the row's own model, not the session's
    with st.container(border=True):
        st.markdown(f"**#{row['id']} · {session.plain(row['subject'])}** · {called(row)} · by "
                    f"{session.plain(row['user'])} at {row['at']:%Y-%m-%d %H:%M} UTC · "
                    f"model {session.plain(row['model'])}{weights}")
        if row.get("repeats"):
            st.caption(f"The same image by the same model is also recorded as "
                       f"{', '.join(f'#{i}' for i in row['repeats'])} (analysed again, or with other settings): "
                       "the queue shows it once, and a review of any of them settles them all.")
        if badge == records.NOT_RECORDED:
            st.caption("Model status (DEMO / LIMITED DATA) not recorded for this older result.")
        elif badge:
            st.warning(f"This result's model: {session.plain(badge)}" + (f" — {session.plain(d['evidence'])}"
                       if d.get("evidence") else ""), icon=":material/science:")
        if row["kind"] == "slide" and d.get("statement"):
            st.caption(d["statement"])
        if row["kind"] == "slide":
            if d.get("refer"):
                st.error("Referred: " + "; ".join(d.get("refer_reasons", [])), icon=":material/flag:")
        else:
            for line, refer in records.recorded_referral(d):  # each stage's flag, reasons or threshold passed
                if refer:
                    st.error(line, icon=":material/flag:")
                else:
                    st.caption(line)
        if row["discordant"]:
            st.warning("Discordant reviews: the reviewers disagree. " + "; ".join(
                reviewed(row, r) for r in reviews.reviewer_verdicts(row["reviews"])), icon=":material/rule:")
        elif done:
            st.caption(reviewed(row, done))
        kept = kept_image(row)
        if isinstance(kept, str):
            st.warning(kept, icon=":material/hide_image:")
        elif kept:
            st.image(kept, width=320)
        elif not keeping_images():
            st.caption("Images are not kept on this server (an administrator's choice): the record has the hash only. "
                       "Review the original image or glass slide before saving a review here.")
        else:
            st.caption("This image was not kept (a slide, or analysed while images were not kept): the record has "
                       "the hash only. Review the original image or glass slide before saving a review here.")
        session.review_form(row["id"], f"queue_{row['id']}", image_shown=isinstance(kept, bytes),
                            seen=done["id"] if done else None, row=row)


def pager(section: reviews.Section, key: str, what: str) -> None:
    """Say which rows of a section are shown, and page through it: never cut one silently."""
    if section.total > len(section.rows) and section.rows:
        st.caption(f"Showing {section.first:,}–{section.first + len(section.rows) - 1:,} of {section.total:,} {what}.")
    if section.pages > 1:
        st.session_state[key] = section.page  # a page past the last (the list shrank) shows the last
        st.number_input(f"Page (of {section.pages:,})", min_value=1, max_value=section.pages, step=1, key=key)


notes = st.container()  # what became of a review saved on a card that has left the list since
left, middle, right = st.columns(3)
referred_only = left.toggle("Referred only", key="referred_only")
include = middle.toggle("Include reviewed results", key="include_reviewed")
discordant_only = include and middle.toggle("Discordant reviews only", key="discordant_only")
search = right.text_input("Case id or file name", key="queue_search",
                          help="Results whose file name contains this, or whose BreakHis case id is this.")
try:
    queued = reviews.queue(store, include_reviewed=include, limit=SHOWN, page=st.session_state.get("waiting_page", 1),
                           reviewed_page=st.session_state.get("reviewed_page", 1), referred_only=referred_only,
                           search=search, discordant_only=discordant_only)
except StoreError as problem:  # a busy or damaged database: the page stays, its controls kept
    st.error(session.nothing_lost(problem), icon=":material/database:")
    st.stop()
if queued.discordant:
    st.warning(f"{queued.discordant:,} reviewed result{'s have' if queued.discordant > 1 else ' has'} discordant "
               "reviews (reviewers disagree): include reviewed results and choose 'Discordant reviews only'.",
               icon=":material/rule:")
if queued.left_out: st.error(reviews.left_out_notice(queued.left_out), icon=":material/gpp_bad:")
waiting = queued.waiting
if not waiting.total:
    st.success("Nothing waits for review" + (" under these filters." if referred_only or search.strip() else "."))
elif queued.referred:
    st.caption(f"{queued.referred:,} of the results waiting are referred.")
pager(waiting, "waiting_page", "results waiting for review (referred first, then oldest)")
for row in waiting.rows:
    card(row)
if include:
    st.subheader(f"Reviewed ({queued.reviewed.total:,})")
    st.caption("Newest review first.")
    pager(queued.reviewed, "reviewed_page", "reviewed results")
    for row in queued.reviewed.rows:
        card(row)
session.show_review_notes(notes, "queue_")

st.subheader("Case history")
case = st.text_input("BreakHis case id (e.g. 14-22549)", key="history_case")
if case:
    try:
        rows = reviews.history(store, case=case.strip())
    except StoreError as problem:
        st.error(session.nothing_lost(problem), icon=":material/database:")
        st.stop()
    st.dataframe(pd.DataFrame([{"id": r["id"], "at": r["at"], "kind": r["kind"], "user": r["user"], "file": r["subject"],
                                "call": r["details"].get("call") or r["details"].get("label"),
                                "subtype": r["details"].get("subtype"), "reviews": r["refers_to"],
                                "comment": r["details"].get("comment", "")} for r in rows]), hide_index=True)
