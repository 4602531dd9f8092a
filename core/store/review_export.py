"""Reviewed images as training data: the export Retrain's "reviewed images" field reads.

Reviewed images that were kept (core.store.images) export as a folder the BreakHis indexer reads
(SOB_<class>_<subtype>-<case>-<magnification>-<n>.png), each image once as its newest review says,
with a provenance file naming each review; private (patient images) and audited. Only what a
pathologist confirmed becomes a label: a subtype not assessed, a magnification never stated, or a
result whose reviewers disagree (discordant, not settled) is skipped and counted (core.store.reviews
decides what a review confirmed and which results are discordant).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from core.data.breakhis import IMAGE_EXTENSIONS
from core.data.labels import CODE_OF_SUBTYPE, MAGNIFICATIONS
from core.errors import UserInputError
from core.store.accounts import SYSTEM
from core.store.audit import Store
from core.store.db import StoreError, private_folder
from core.store.images import ImageStore
from core.store.reviews import REVIEWABLE, assessed_subtype, discordant, reviewer_verdicts, reviews_of

PROVENANCE = "provenance.csv"
# provenance.csv's columns: a written file's row, or (`file` empty, `skipped` saying why) a discordant result's
COLUMNS = ["file", "review_id", "result_id", "reviewer", "reviewed_at", "model_call", "label", "subtype", "agree",
           "magnification", "magnification_source", "image_sha256", "original_name", "superseded_reviews", "skipped"]


def export_training_folder(store: Store, out: str | Path, images: ImageStore | None = None, user: str | None = None,
                           assume_magnification: str | None = None) -> dict:
    """Write every reviewed, kept image with its reviewed labels as a BreakHis-named PNG/JPEG copy.

    One file per image (SHA-256), labelled by its newest review: the same image uploaded twice is
    two results, and two copies with different labels would teach the model both. A result whose
    reviewers disagree (reviews.discordant, as the queue flags it) is not settled: its newest review
    is one reviewer's word, so it is skipped ("discordant") and listed in provenance.csv with an empty
    `file` until a reviewer changes their mind. Only reviews that
    settle a subtype are exported (assessed_subtype: a class-only correction, or an "agree" with a subtype
    the app called not reliable, leaves it not assessed; counted as "no subtype"), and only
    images whose magnification was stated (file name or the user's choice): a guessed one would put
    fields in the wrong magnification's training set, so they are skipped unless `assume_magnification`
    names one, which provenance.csv then says. Patient images: the folder is private (0700), the
    files 0600, and the export is an audit row ("reviews_exported": who, folder, count, review ids),
    `user` (default: "system", the CLI on the machine) named. Only result and review rows the audit
    trail's hash chain vouches for, checked in full first, are read: a row written around the app, or
    changed, never becomes a training label ("fail the audit chain" counts them). Returns counts, among them the older
    reviews of an exported image (of that result or a repeat of it) that chose other labels ("superseded") or
    the same ones ("repeated"), and the row's id; the provenance file lists file, review id, result id, reviewer,
    time, the model's call and the reviewed labels, the magnification and where it came from, the
    image's SHA-256 and the superseded reviews.
    """
    images = images or ImageStore()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserInputError(f"{out} is a file; choose a new folder for the export")
    if out.exists() and any(out.iterdir()):
        raise UserInputError(f"{out} is not empty; choose a new folder for the export")
    if assume_magnification is not None and assume_magnification not in MAGNIFICATIONS:
        raise UserInputError(f"unknown magnification {assume_magnification!r}; one of {', '.join(MAGNIFICATIONS)}")
    created = not out.exists()
    _private_export_folder(out)
    # Labels teach the next model: only rows the audit chain vouches for, checked in full here (not the
    # app's carried-on check), so a result or review written around the app, or changed, never becomes one.
    verdict = store.check()
    untrusted = frozenset(verdict.broken) | frozenset(verdict.missing)
    every = store.events(kinds=list(REVIEWABLE))
    every_review = reviews_of(store, [r["id"] for r in every])  # read once: the labels and the count below
    read = {r["id"] for r in every} | {row["id"] for rows in every_review.values() for row in rows}
    results = {r["id"]: r for r in every if r["id"] not in untrusted}
    vouched = {result: [row for row in rows if row["id"] not in untrusted] for result, rows in every_review.items()
               if result in results}
    written, unsettled = [], []
    skipped = {"discordant": 0, "not kept": 0, "no subtype": 0, "no magnification": 0, "superseded": 0,
               "repeated": 0, "fail the audit chain": len(untrusted & read)}
    for number, (result_id, (rev, older)) in enumerate(sorted(_newest_per_image(results, vouched).items()), start=1):
        result = results[result_id]
        if discordant(vouched[result_id]):  # reviewers disagree: not settled, whichever reviewed last
            skipped["discordant"] += 1
            unsettled.append({"review_id": rev["id"], "result_id": result_id, "image_sha256": result["image_sha256"],
                              "original_name": result["subject"], "skipped": "discordant: reviews " + " ".join(
                                  str(r["id"]) for r in reviewer_verdicts(vouched[result_id])) + " disagree"})
            continue
        subtype = assessed_subtype(rev, result)
        if subtype is None:  # a class-only review, or a subtype not assessed: never a label
            skipped["no subtype"] += 1
            continue
        magnification, source = _export_magnification(result, assume_magnification)
        if magnification is None:
            skipped["no magnification"] += 1
            continue
        data = images.get(result["image_sha256"] or "0" * 64)
        if data is None:
            skipped["not kept"] += 1
            continue
        case = _case_id(result)
        suffix = Path(result["subject"] or "").suffix.lower()
        name = (f"SOB_{rev['details']['label'][0].upper()}_{CODE_OF_SUBTYPE[subtype]}-{case}-"
                f"{magnification[:-1]}-{number:03d}{suffix if suffix in IMAGE_EXTENSIONS else '.png'}")
        with _private_file(out / name, "wb") as handle:
            handle.write(data)
        superseded = [o["id"] for o in older if _labels(o) != _labels(rev)]
        skipped["superseded"] += len(superseded)
        skipped["repeated"] += len(older) - len(superseded)
        written.append({"file": name, "review_id": rev["id"], "result_id": result_id, "reviewer": rev["user"],
                        "reviewed_at": rev["at"].isoformat(), "model_call": "/".join(map(str, rev["details"]["model_call"])),
                        "label": rev["details"]["label"], "subtype": subtype, "agree": rev["details"]["agree"],
                        "magnification": magnification, "magnification_source": source,
                        "image_sha256": result["image_sha256"], "original_name": result["subject"],
                        "superseded_reviews": " ".join(map(str, superseded)), "skipped": ""})
    with _private_file(out / PROVENANCE, "w") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, restval="")
        writer.writeheader()
        writer.writerows(written + unsettled)
    audit_id = _record_export(store, user, out, written, skipped, assume_magnification, created,
                              [u["result_id"] for u in unsettled])
    return {"written": len(written), "skipped": skipped, "folder": str(out), "audit_id": audit_id}


def _newest_per_image(results: dict[int, dict], reviews: dict[int, list[dict]]) -> dict[int, tuple[dict, list]]:
    """{result id: (the newest review of its image, the older reviews of that image)} for the result that newest
    review is of, from {result id: its reviews}: the older ones are of that result (an earlier review, another
    reviewer's) and of its repeats (the same image uploaded again), each counted once."""
    by_image: dict[str, list[tuple[int, dict]]] = {}
    for result_id, rows in reviews.items():
        image = results[result_id]["image_sha256"] or f"result {result_id}"
        for rev in rows:  # none: every review of it fails the audit chain
            by_image.setdefault(image, []).append((result_id, rev))
    newest = {}
    for found in by_image.values():
        *older, (result_id, rev) = sorted(found, key=lambda item: item[1]["id"])
        newest[result_id] = (rev, [o for _, o in older])
    return newest


def _labels(review_row: dict) -> tuple:
    """The class and subtype a review named: two reviews naming the same ones repeat each other."""
    return review_row["details"]["label"], review_row["details"]["subtype"]


def _case_id(result: dict) -> str:
    """The BreakHis case id when the name carried one, else one per image ('0-<result id>', a year
    no BreakHis case has): an image of unknown patient never joins another patient in a split."""
    return result["details"].get("case") or f"0-{result['id']}"


def _export_magnification(result: dict, assumed: str | None) -> tuple[str | None, str]:
    """(magnification, where it came from) for an exported image: as recorded when it was stated
    (its file name, the user's choice), else `assumed` (the export's option), else (None, "not stated")."""
    details = result["details"]
    if details.get("magnification") in MAGNIFICATIONS:
        return details["magnification"], details.get("magnification_source") or "recorded"
    return (assumed, "assumed at export (--assume-magnification)") if assumed else (None, "not stated")


def _private_export_folder(out: Path) -> None:
    """The export folder for the app's own user only (0700), as the kept images: it holds patient
    images. An empty folder the user made is tightened too."""
    private_folder(out)
    out.chmod(0o700)


def _private_file(path: Path, mode: str):
    """A new file readable by the app's own user only (0600), whatever the umask, open for writing."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), mode,
                     **({} if "b" in mode else {"newline": ""}))


def _record_export(store: Store, user: str | None, out: Path, written: list[dict], skipped: dict,
                   assumed: str | None, created: bool, discordant_ids: list[int]) -> int:
    """The export's audit row (the discordant results it skipped named); if it cannot be written, the files are
    removed (no unaudited copy of patient images is left) and the StoreError raised."""
    details = {"folder": str(out.resolve()), "count": len(written), "review_ids": [w["review_id"] for w in written],
               "result_ids": [w["result_id"] for w in written], "skipped": skipped,
               "discordant_result_ids": discordant_ids, "assumed_magnification": assumed}
    try:
        return store.record("reviews_exported", user or SYSTEM, str(out.resolve()), details=details)
    except StoreError:
        for file in [*(w["file"] for w in written), PROVENANCE]:
            (out / file).unlink(missing_ok=True)
        if created:
            out.rmdir()
        raise
