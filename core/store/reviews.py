"""Pathologists' reviews: agree or correct a result, the review queue, a case's history.

A review is an audit row (kind "review") that refers to the diagnosis or slide row it reviews:
"agree", or a corrected class and/or subtype, with a comment. A later review of the same result is
another row; the newest one is the result's current review, and all of them stay in its history.
Reviewed images that were kept export for training through core.store.review_export.
"""

from __future__ import annotations

import dataclasses
import itertools

from sqlalchemy import case, distinct, exists, func, or_, select
from sqlalchemy.orm import aliased

from core.data.labels import CLASS_OF_SUBTYPE, CLASSES, SUBTYPES, pretty
from core.errors import UserInputError
from core.store import chain, repeats
from core.store.audit import Store
from core.store.models import AuditEvent

REVIEWABLE = ("diagnosis", "slide")
MAX_COMMENT = 2000
ORIGINAL_REVIEWED = "I reviewed the original image or glass slide"  # the form's box when no image is shown


def model_call(result: dict) -> tuple[str | None, str | None]:
    """(class, subtype) the model called in a diagnosis or slide row. A slide row keeps its call under
    "label" (core.slide.call) and has no subtype; a slide the model did not call has no class."""
    details = result["details"]
    if result["kind"] == "slide":
        return (details.get("label") if details.get("label") in CLASSES else None), None
    return details.get("call"), details.get("subtype")


def subtype_reliable(result: dict) -> bool:
    """Whether the model's subtype in a result row is a finding an "agree" confirms: only when the row
    records that it was (records.image_row, core.evaluation.subtype_trust). A row of a model whose subtype
    is not reliable, a slide (no subtype) and an older row that does not say: the class only."""
    return result["details"].get("subtype_reliable") is True


def review(store: Store, user: str, audit_id: int, label: str | None = None, subtype: str | None = None,
           comment: str = "", image_shown: bool | None = None) -> int:
    """Record a review of result `audit_id`: no label/subtype means "agree"; else the correction.

    "Agree" confirms the model's subtype only where it is reliable (subtype_reliable); else the subtype
    is not assessed (None) unless one is chosen. A corrected subtype implies its class; a corrected class
    alone leaves the subtype not assessed (None). `subtype_assessed` on the row says so.
    A subtype named for a slide (whose call has none) agrees when its class does. `image_shown`:
    whether the reviewer saw the image in the app (None: not said, e.g. a script); the row also says
    whether it is a self-review (by the user who made the result). Returns the review's own audit id.
    """
    target = _result(store, audit_id)
    agree, final_label, final_subtype = _verdict(target, label, subtype)
    details = {"agree": agree, "label": final_label, "subtype": final_subtype, "subtype_assessed": final_subtype is not None,
               "model_call": list(model_call(target)), "comment": (comment or "")[:MAX_COMMENT],
               "image_shown": image_shown, "self_review": user == target["user"]}
    return store.record("review", user, target["subject"], image_sha256=target["image_sha256"],
                        model=target["model"], model_sha256=target["model_sha256"], refers_to=audit_id,
                        details=details)


def submit(store: Store, user: str, audit_id: int, verdict: str, label: str | None = None,
           subtype: str | None = None, comment: str = "", *, image_shown: bool = True,
           original_reviewed: bool = False) -> int:
    """A review form's Save: `verdict` "agree" or "correct" with the class and subtype chosen (None:
    unchanged). Refuses, in words, a form that says two things: "correct" with nothing chosen, or
    "agree" with a class or subtype other than the model's call (either would be saved as the other).
    A review made without the image on screen (`image_shown` False: images are not kept) is saved only
    when the reviewer says they reviewed the original image or glass (`original_reviewed`); the row
    records whether the image was shown."""
    if verdict == "correct" and label is None and subtype is None:
        raise UserInputError("Nothing was saved: choose the corrected class or subtype, or choose 'agree'.")
    if verdict == "agree" and (label is not None or subtype is not None):
        target = _result(store, audit_id)
        if not _verdict(target, label, subtype)[0]:
            called, called_subtype = model_call(target)
            chosen = ", ".join(pretty(c) for c in (label, subtype) if c)
            call = ", ".join(pretty(c) for c in (called, called_subtype) if c) or "no call"
            raise UserInputError(f"Nothing was saved: 'agree' was chosen, but {chosen} is not the model's call "
                                 f"({call}). Choose 'correct' to save the correction, or set Class and Subtype "
                                 "back to (unchanged) to agree.")
    if not image_shown and not original_reviewed:
        raise UserInputError(f"Nothing was saved: the image is not shown here. Tick '{ORIGINAL_REVIEWED}' once you "
                             "have, or review the result where its image is shown.")
    return review(store, user, audit_id, label, subtype, comment, image_shown=image_shown)


def reviewed_meanwhile(store: Store, audit_id: int, user: str, seen: int | None, saved: int) -> list[dict]:
    """The reviews of result `audit_id` by others than `user` recorded after review `seen` (the newest one
    the reviewer's form showed; None: none) and before their own review `saved`, oldest first: the
    reviewer is told, and their review stands as a second opinion."""
    return [r for r in reviews_of(store, [audit_id]).get(audit_id, [])
            if (seen or 0) < r["id"] < saved and r["user"] != user]


def verdict_text(review_row: dict) -> str:
    """'agreed Benign, Adenosis' or 'corrected to Malignant, subtype not assessed'; an older review of a
    slide may have no class (it was recorded as None)."""
    d = review_row["details"]
    return (f"{'agreed' if d['agree'] else 'corrected to'} {pretty(d['label']) if d['label'] else 'no class recorded'}"
            f", {pretty(d['subtype']) if d['subtype'] else 'subtype not assessed'}")


def _result(store: Store, audit_id: int) -> dict:
    """The diagnosis or slide row `audit_id` (a UserInputError if it is none)."""
    target = store.event(audit_id)
    if target is None or target["kind"] not in REVIEWABLE:
        raise UserInputError(f"audit row {audit_id} is not a diagnosis or slide result")
    return target


def _verdict(target: dict, label: str | None, subtype: str | None) -> tuple[bool, str | None, str | None]:
    """(whether it agrees with the model's call, the reviewed class, the reviewed subtype) of a review
    naming `label` / `subtype` (None: unchanged) of the result row `target`; a UserInputError if they
    cannot be (an unknown or mismatched subtype, agreeing with no call). With no subtype chosen, the
    model's subtype is the reviewed one only where it is reliable (subtype_reliable)."""
    if subtype is not None:
        if subtype not in SUBTYPES:
            raise UserInputError(f"unknown subtype {subtype!r}")
        if label is not None and CLASS_OF_SUBTYPE[subtype] != label:
            raise UserInputError(f"subtype {subtype} is not a {label} subtype")
        label = CLASS_OF_SUBTYPE[subtype]
    if label is not None and label not in CLASSES:
        raise UserInputError(f"unknown class {label!r}")
    called, called_subtype = model_call(target)
    if label is None and called is None:
        raise UserInputError("The model made no call for this result, so there is nothing to agree with: "
                             "choose the class (and subtype) it should be.")
    agree = label is None or (label == called and (subtype is None or called_subtype in (None, subtype)))
    final_label = called if label is None else label
    kept = called_subtype if subtype_reliable(target) else None  # not a finding: not confirmed by "agree"
    final_subtype = (kept if label in (None, called) else None) if subtype is None else subtype
    return agree, final_label, final_subtype


def assessed_subtype(review_row: dict, result: dict) -> str | None:
    """The subtype a review settled, or None (not assessed): the training export's label. An older review
    (no `subtype_assessed`) that agreed with the model's own subtype, on a row that does not record it as
    reliable, took that subtype unseen (the one-click "agree"): not assessed."""
    d = review_row["details"]
    if "subtype_assessed" in d:
        return d["subtype"] if d["subtype_assessed"] else None
    unseen = d["agree"] and d["subtype"] == (d.get("model_call") or [None, None])[1] and not subtype_reliable(result)
    return None if unseen else d["subtype"]


def reviews_of(store: Store, audit_ids, left_out=frozenset()) -> dict[int, list[dict]]:
    """{result id: its review rows, oldest first} for the results that have one; reviews whose ids are in
    `left_out` are not counted (the queue's: rows that fail the audit chain)."""
    found: dict[int, list[dict]] = {}
    for row in store.events(kinds="review", refers_to_any=list(audit_ids), newest_first=False):
        if row["id"] not in left_out:
            found.setdefault(row["refers_to"], []).append(row)
    return found


def latest_reviews(store: Store, audit_ids) -> dict[int, dict]:
    """{result id: its newest review row} for the results that have one."""
    return {result: rows[-1] for result, rows in reviews_of(store, audit_ids).items()}


@dataclasses.dataclass
class Section:
    """One page of a section of the queue: its rows, how many match in all, and the page shown (from 1)."""

    rows: list[dict]
    total: int
    page: int
    pages: int
    first: int  # the place in the section of the first row shown (from 1)


@dataclasses.dataclass
class Queue:
    """The review queue: a page of each section (waiting, reviewed), each paged on its own, so a full
    section never hides the other; `referred` counts the referred results waiting (under the filter)."""

    waiting: Section  # unreviewed: referred first, then the others, oldest first within each (first in, first out)
    reviewed: Section  # newest review first; no rows unless asked for
    referred: int
    discordant: int  # results whose reviewers disagree (discordant()), in the whole trail
    left_out: int = 0  # result and review rows that fail the audit chain, in the whole trail (left_out_notice)


def left_out_notice(count: int) -> str:
    """What the queue says of the rows it left out: how many, why, and what to run."""
    many = count != 1
    return (f"{count:,} audit row{'s' if many else ''} of results or reviews {'fail' if many else 'fails'} the "
            f"audit trail's hash chain (written around the app, or changed since) and {'are' if many else 'is'} left "
            "out of this queue and of case histories: none is shown, waits for review or settles a result. An "
            "administrator should run "
            "`python -m core db verify`.")


_REVIEW = aliased(AuditEvent)  # a review row, as seen from the result it refers to
_QUEUED = (*REVIEWABLE, "review")  # the kinds of row the queue shows or goes by
_REFERRED = AuditEvent.details["refer"].as_boolean()
_RESULT = AuditEvent.kind.in_(REVIEWABLE)


def queue(store: Store, include_reviewed: bool = False, limit: int = 200, page: int = 1, reviewed_page: int = 1,
          referred_only: bool = False, search: str = "", discordant_only: bool = False) -> Queue:
    """A page of the results to review (referred first, then oldest first) and, with `include_reviewed`,
    of the reviewed ones (newest review first), every row with its newest "review" (or None).

    The database picks the rows (a result with no review row is waiting, however old), so a referred
    result never drops out behind newer ones, and the longest waiting comes first. Repeats of one result
    (core.store.repeats: the same image and model) wait as one, the newest shown, until one is reviewed.
    `search` keeps the results whose file name contains it or whose BreakHis case id is it; `discordant_only`
    keeps the reviewed results whose reviewers disagree; a page past the last shows the last. Each row has
    all its "reviews" (oldest first), whether they are "discordant" and its "repeats".

    Only rows the audit chain vouches for count (chain.vouched, by this process's check carried on to
    now): a result or review written around the app, or changed, is left out everywhere here (a forged
    review would settle a result, a forged repeat take its place), and `left_out` counts them."""
    admits = _vouching(store)
    fold = repeats.folding(admits)
    where = [_RESULT, admits(AuditEvent)]
    if search.strip():
        where.append(or_(AuditEvent.subject.icontains(search.strip(), autoescape=True),
                         AuditEvent.details["case"].as_string() == search.strip()))
    newest_review = (select(_REVIEW.refers_to.label("result"), func.max(_REVIEW.id).label("last"))
                     .where(_REVIEW.kind == "review", admits(_REVIEW)).group_by(_REVIEW.refers_to).subquery())
    left_out = _left_out(store, admits)
    disagreed = discordant_ids(store, left_out)
    with store.reading("The audit trail could not be read") as session:
        count = lambda *more: session.scalar(select(func.count()).select_from(AuditEvent).where(*where, *more))  # noqa: E731
        unreviewed = [~fold.reviewed, ~fold.newer_repeat]  # the newest of a result none reviewed
        waits = [*unreviewed, _REFERRED] if referred_only else unreviewed
        referred = count(*unreviewed, _REFERRED)
        waiting = _section(session, select(AuditEvent.id).where(*where, *waits).order_by(
            case((_REFERRED, 0), else_=1), fold.first_seen, AuditEvent.id), count(*waits), page, limit)
        was_reviewed = exists().where(_REVIEW.kind == "review", _REVIEW.refers_to == AuditEvent.id, admits(_REVIEW))
        done = [was_reviewed, AuditEvent.id.in_(disagreed)] if discordant_only else [was_reviewed]
        reviewed = _section(session, select(AuditEvent.id).join(newest_review, newest_review.c.result == AuditEvent.id)
                            .where(*where, *done).order_by(newest_review.c.last.desc()),
                            count(*done), reviewed_page, limit if include_reviewed else 0)
    waiting.rows = _rows(store, waiting.rows, admits, left_out)
    reviewed.rows = _rows(store, reviewed.rows, admits, left_out)
    return Queue(waiting=waiting, reviewed=reviewed, referred=referred, discordant=len(disagreed),
                 left_out=len(left_out))


def _vouching(store: Store):
    """The SQL predicate (on AuditEvent or an alias) of the rows the chain vouches for (chain.vouched), by this
    process's check carried on to now: what the queue and a case's history both go by."""
    broken = store.carried_on().broken
    return lambda row: chain.vouched(row, broken)


def _left_out(store: Store, admits) -> frozenset[int]:
    """The ids of the result and review rows, in the whole trail, that `admits` does not."""
    with store.reading("The audit trail could not be read") as session:
        return frozenset(session.scalars(select(AuditEvent.id).where(AuditEvent.kind.in_(_QUEUED), ~admits(AuditEvent))))


def _section(session, ids, total: int, page: int, limit: int) -> Section:
    """The ids on page `page` (from 1, kept within the pages there are) of `limit` rows of the query `ids`."""
    pages = max(1, -(-total // max(limit, 1)))
    page = min(max(1, int(page)), pages)
    offset = (page - 1) * limit
    rows = session.scalars(ids.offset(offset).limit(limit)).all() if limit else []
    return Section(rows=list(rows), total=total, page=page, pages=pages, first=offset + 1)


def _rows(store: Store, ids: list[int], admits, left_out: frozenset) -> list[dict]:
    """The result rows `ids`, in that order, each with its newest "review" (or None), all its "reviews",
    whether they are "discordant" and the ids of its "repeats" (core.store.repeats), none of them a row
    the queue leaves out (`admits`, as SQL; `left_out`, their ids)."""
    by_id = {row["id"]: row for row in store.events(ids=ids)}
    found = reviews_of(store, ids, left_out)
    same = repeats.repeats_of(store, list(by_id.values()), REVIEWABLE, admits)
    return [{**by_id[i], "review": (found.get(i) or [None])[-1], "reviews": found.get(i, []),
             "discordant": discordant(found.get(i, [])), "repeats": same[i]} for i in ids]


def reviewer_verdicts(review_rows: list[dict]) -> list[dict]:
    """Each reviewer's newest review of one result (oldest first): a reviewer who changed their mind
    disagrees with nobody."""
    newest = {row["user"]: row for row in sorted(review_rows, key=lambda r: r["id"])}
    return sorted(newest.values(), key=lambda r: r["id"])


def discordant(review_rows: list[dict]) -> bool:
    """Whether two reviewers of one result disagree: their newest reviews name different classes, or
    different subtypes (a class-only review, subtype open, disagrees with no subtype of its class)."""
    differ = lambda a, b: a is not None and b is not None and a != b  # noqa: E731
    verdicts = [row["details"] for row in reviewer_verdicts(review_rows)]
    return any(differ(a.get("label"), b.get("label")) or differ(a.get("subtype"), b.get("subtype"))
               for a, b in itertools.combinations(verdicts, 2))


def discordant_ids(store: Store, left_out=frozenset()) -> list[int]:
    """The results (ids, oldest first) whose reviewers disagree (discordant()), reviews in `left_out` not
    counted; only results reviewed by two users or more are read."""
    with store.reading("The audit trail could not be read") as session:
        shared = session.scalars(select(AuditEvent.refers_to).where(AuditEvent.kind == "review")
                                 .group_by(AuditEvent.refers_to)
                                 .having(func.count(distinct(AuditEvent.user)) > 1)).all()
    return sorted(result for result, rows in reviews_of(store, shared, left_out).items() if discordant(rows))


def self_review(result: dict, review_row: dict) -> bool:
    """Whether `review_row` is by the user who made the result (the diagnosing user reviewing their own call)."""
    return review_row["details"].get("self_review", review_row["user"] == result["user"])


def history(store: Store, case: str | None = None, image_sha256: str | None = None) -> list[dict]:
    """Every call and review of one case (BreakHis case id) or one image, oldest first, from the whole trail.
    Only rows the audit chain vouches for, as in the queue (_vouching): a forged or changed row, or a review of
    one, is left out here too, where it would read as genuine (the page's left_out_notice counts them)."""
    if not case and not image_sha256:
        raise UserInputError("name a case or an image")
    left_out = _left_out(store, _vouching(store))
    if image_sha256:
        rows = store.events(kinds=_QUEUED, image_sha256=image_sha256, newest_first=False)
    else:
        with store.reading("The audit trail could not be read") as session:
            ids = session.scalars(select(AuditEvent.id).where(_RESULT, AuditEvent.details["case"].as_string() == case)).all()
        rows = sorted(store.events(ids=ids) + store.events(kinds="review", refers_to_any=ids), key=lambda r: r["id"])
    return [row for row in rows if row["id"] not in left_out and row["refers_to"] not in left_out]
