"""Audit rows of real diagnoses, reviews and corrections, the queue, a case's history, the kept-image
store and the training export, on SQLite and PostgreSQL."""

import csv
import hashlib

import pytest

from core.app import records, service
from core.data.breakhis import index_folder
from core.data.labels import SUBTYPES_BY_CLASS
from core.store import review_export, reviews
from core.store.images import ImageStore, keeping_images
from tests.app_helpers import make_model_folder, png_bytes, tissue_like
from tests.review_helpers import reviewers  # noqa: F401  (autouse: the reviewers' accounts)


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    from core.model.loading import load_predictor

    return load_predictor(make_model_folder(tmp_path_factory.mktemp("models") / "tiny", demo=False))


@pytest.fixture(scope="module")
def diagnosed(predictor, samples_dir):
    paths = sorted(samples_dir.rglob("*.png"))
    chosen = [p for p in paths if "SOB_M_PC-14-9146" in p.name][:2] + [p for p in paths if "SOB_B_A-14-22549AB" in p.name][:1]
    items = [(p.name, p.read_bytes()) for p in chosen] + [("broken.png", b"not an image")]
    return items, service.diagnose_items(predictor, items, refer_threshold=0.99)


def test_included_reviewed_results_are_listed_even_behind_more_than_the_limit_of_unreviewed(store):
    """The limit was applied after sorting the reviewed behind the unreviewed: with 200 results waiting,
    'include reviewed' showed no reviewed result at all."""
    details = {"call": "benign", "subtype": "fibroadenoma", "confidence": 0.9, "refer": False}
    older = store.record_many([dict(kind="diagnosis", user="ann", subject=f"old-{i}.png", details=details)
                               for i in range(3)])
    waiting = store.record_many([dict(kind="diagnosis", user="ann", subject=f"new-{i}.png", details=details)
                                 for i in range(205)])
    first, second = reviews.review(store, "bob", older[2]), reviews.review(store, "bob", older[0])
    queued = reviews.queue(store, include_reviewed=True, limit=200)
    assert [r["id"] for r in queued.reviewed.rows] == [older[0], older[2]]  # newest review first
    assert [r["review"]["id"] for r in queued.reviewed.rows] == [second, first]
    assert [r["id"] for r in queued.waiting.rows] == sorted(waiting + older[1:2])[:200]  # oldest first
    assert (queued.waiting.total, queued.reviewed.total, queued.waiting.pages) == (206, 2, 2)
    alone = reviews.queue(store, limit=200)
    assert alone.reviewed.rows == [] and alone.reviewed.total == 2 and len(alone.waiting.rows) == 200


def test_the_worklist_serves_the_longest_waiting_first_within_each_priority_in_pages_and_filters(store):
    """The queue served the newest first (key: not referred, -id) with no paging: with more referred results
    waiting than one page, the longest-waiting ones were never shown; nothing filtered referred ones or a case."""
    calm = {"call": "benign", "subtype": "adenosis", "confidence": 0.99, "refer": False, "case": "22-1111"}
    flagged = {**calm, "refer": True, "refer_reasons": ["stage 1 uncertain"], "case": "14-2523"}
    rows = [dict(kind="diagnosis", user="ann", subject=f"SOB_B_A-{'14-2523' if n % 2 else '22-1111'}-40-{n:03d}.png",
                 details=flagged if n % 2 else calm) for n in range(10)]
    ids = store.record_many(rows)
    referred, routine = ids[1::2], ids[0::2]
    first = reviews.queue(store, limit=4)
    assert [r["id"] for r in first.waiting.rows] == referred[:4] and first.referred == 5
    assert (first.waiting.total, first.waiting.page, first.waiting.pages, first.waiting.first) == (10, 1, 3, 1)
    second = reviews.queue(store, limit=4, page=2)
    assert [r["id"] for r in second.waiting.rows] == [referred[4], *routine[:3]] and second.waiting.first == 5
    assert [r["id"] for r in reviews.queue(store, limit=4, page=99).waiting.rows] == routine[3:]  # the last page
    only = reviews.queue(store, limit=4, page=2, referred_only=True)
    assert [r["id"] for r in only.waiting.rows] == referred[4:] and only.waiting.total == 5
    by_case = reviews.queue(store, limit=20, search="22-1111")
    assert [r["id"] for r in by_case.waiting.rows] == routine and by_case.referred == 0
    assert [r["id"] for r in reviews.queue(store, search="-40-003.PNG").waiting.rows] == [ids[3]]  # a file name part
    assert reviews.queue(store, search="%").waiting.total == 0  # typed text, not a pattern


def test_a_diagnosis_is_recorded_with_everything_the_issue_names(store, predictor, diagnosed):
    items, results = diagnosed
    settings = records.diagnosis_settings(predictor, tta=False, refer_threshold=0.99,
                                          magnification="not stated")
    ids = records.record_diagnosis(store, "ann", results, predictor, settings)
    assert len(ids) == 3  # the unreadable file is no diagnosis
    name, data = items[0]
    row = store.event(ids[(name, hashlib.sha256(data).hexdigest())])
    p = results[0].prediction
    assert row["user"] == "ann" and row["subject"] == name and row["image_sha256"] == hashlib.sha256(data).hexdigest()
    assert row["model"] == predictor.name and row["model_sha256"] == predictor.card["sha256"] and len(row["model_sha256"]) == 64
    assert row["app_version"] and row["at"].tzinfo is not None
    details = row["details"]
    assert details["call"] == p.label and details["stage1"]["malignant"] == pytest.approx(p.stage1["malignant"], abs=1e-6)
    assert details["refer"] is True and details["refer_reasons"] == results[0].refer_reasons
    assert details["settings"] == {**settings} and details["settings"]["stain_normalisation"] == "none"
    assert details["case"] == "14-9146" and details["demo"] is False


def test_review_queue_history_and_corrections_are_new_rows(store, predictor, diagnosed):
    items, results = diagnosed
    settings = records.diagnosis_settings(predictor, False, 0.99, "not stated")
    ids = list(records.record_diagnosis(store, "ann", results, predictor, settings).values())
    unflagged = service.diagnose_items(predictor, items[:1], refer_threshold=0.0)
    assert not unflagged[0].refer
    calm = records.record_diagnosis(store, "ann", unflagged, predictor, {**settings, "refer_threshold": 0.0})
    queued = reviews.queue(store).waiting.rows
    # the referred first, oldest first; the first image's two rows (core.store.repeats) once, as the newest says
    assert [r["id"] for r in queued] == sorted(ids)[1:] + list(calm.values()) and queued[-1]["repeats"] == [ids[0]]
    first = store.event(ids[0])
    model_call = first["details"]["call"]
    other = "benign" if model_call == "malignant" else "malignant"
    agree = reviews.review(store, "bob", ids[0], comment="looks right")
    assert store.event(agree)["details"]["agree"] is True
    correction = reviews.review(store, "bob", ids[0], subtype="fibroadenoma" if other == "benign" else "lobular_carcinoma",
                                comment="on second look")
    latest = reviews.latest_reviews(store, [ids[0]])[ids[0]]
    assert latest["id"] == correction and latest["details"]["label"] == other and latest["details"]["agree"] is False
    assert store.event(agree)["details"]["comment"] == "looks right"  # the earlier review is untouched
    assert ids[0] not in [r["id"] for r in reviews.queue(store).waiting.rows] and not reviews.queue(store).reviewed.rows
    assert ids[0] in [r["id"] for r in reviews.queue(store, include_reviewed=True).reviewed.rows]
    case_rows = reviews.history(store, case="14-9146")
    assert [r["kind"] for r in case_rows].count("review") == 2 and len(case_rows) == 2 + 2 + 1  # 2 calls, 1 repeat
    assert list(calm.values())[0] in [r["id"] for r in case_rows]
    with pytest.raises(ValueError, match="not a malignant subtype"):
        reviews.review(store, "bob", ids[0], label="malignant", subtype="fibroadenoma")
    with pytest.raises(ValueError, match="not a diagnosis"):
        reviews.review(store, "bob", agree)


def test_a_referred_result_stays_waiting_and_in_its_case_history_behind_any_number_of_newer_ones(store):
    """The queue and the case history looked through the newest 2,000 results only: an older referred,
    unreviewed result left the worklist (and its case history was empty), and the total was short by one."""
    referred = store.record("diagnosis", "ann", "SOB_M_DC-14-2523-40-010.png",
                            details={"call": "malignant", "subtype": "ductal_carcinoma", "confidence": 0.51,
                                     "refer": True, "refer_reasons": ["stage 1 uncertain"], "case": "14-2523"})
    calm = {"call": "benign", "subtype": "adenosis", "confidence": 0.99, "refer": False, "case": "22-1111"}
    newer = store.record_many([dict(kind="diagnosis", user="ann", subject=f"n{i}.png", details=calm)
                               for i in range(2001)])
    queued = reviews.queue(store, limit=3)
    assert queued.waiting.rows[0]["id"] == referred and queued.waiting.total == 2002  # the referred one first
    review = reviews.review(store, "bob", referred, comment="checked")
    reviews.review(store, "bob", newer[0])
    assert [r["id"] for r in reviews.history(store, case="14-2523")] == [referred, review]
    after = reviews.queue(store, include_reviewed=True, limit=3)
    assert (after.waiting.total, after.reviewed.total) == (2000, 2)
    assert [r["id"] for r in after.reviewed.rows] == [newer[0], referred]  # newest review first


def test_images_are_kept_only_when_enabled_and_export_as_a_training_folder(store, predictor, diagnosed, tmp_path,
                                                                           monkeypatch):
    monkeypatch.delenv("BREAKHIS_KEEP_IMAGES", raising=False)
    assert not keeping_images()
    monkeypatch.setenv("BREAKHIS_KEEP_IMAGES", "1")
    assert keeping_images()
    items, results = diagnosed
    kept = ImageStore(tmp_path / "images")
    for name, data in items[:2]:
        assert kept.put(data) == hashlib.sha256(data).hexdigest()
        assert kept.put(data) == hashlib.sha256(data).hexdigest()  # stored once
    assert len(list((tmp_path / "images").rglob("*"))) == 4  # 2 folders, 2 files
    ids = records.record_diagnosis(store, "ann", results, predictor,
                                   records.diagnosis_settings(predictor, False, 0.9, "not stated"))
    by_name = {name: audit_id for (name, _), audit_id in ids.items()}
    first, second, third = (by_name[n] for n, _ in items[:3])
    reviews.review(store, "bob", first, subtype="lobular_carcinoma")
    flipped = "benign" if store.event(second)["details"]["call"] == "malignant" else "malignant"
    reviews.review(store, "bob", second, label=flipped)  # the class corrected alone: subtype open, not exported
    reviews.review(store, "bob", third, subtype="adenosis")  # a subtype settled, but its image was not kept
    summary = review_export.export_training_folder(store, tmp_path / "export", kept)
    assert summary["written"] == 1 and summary["skipped"] == {"discordant": 0, "not kept": 1, "no subtype": 1,
                                                              "superseded": 0, "repeated": 0, "no magnification": 0,
                                                              "fail the audit chain": 0}
    indexed = index_folder(tmp_path / "export").images
    assert len(indexed) == 1 and indexed.iloc[0]["subtype"] == "lobular_carcinoma"
    assert indexed.iloc[0]["case"] == "14-9146"
    provenance = (tmp_path / "export" / review_export.PROVENANCE).read_text()
    assert "bob" in provenance and hashlib.sha256(items[0][1]).hexdigest() in provenance
    with pytest.raises(ValueError, match="not empty"):
        review_export.export_training_folder(store, tmp_path / "export", kept)
    damaged = kept.path(hashlib.sha256(items[0][1]).hexdigest())
    damaged.write_bytes(b"changed")
    assert kept.get(hashlib.sha256(items[0][1]).hexdigest()) is None


def slide_row(store, label: str) -> int:
    """The row core.app.records.record_slide writes: the slide call keeps its class under "label", no subtype."""
    return store.record("slide", "ann", "slide-07.svs", image_sha256="ab" * 32, model="m",
                        details={"label": label, "rule": "region rule", "statement": f"{label}: ...",
                                 "malignant_tiles": 5, "tissue_tiles": 40, "members": [], "demo": False, "settings": {}})


def test_a_review_of_a_slide_reads_the_slides_own_call(store):
    slide = slide_row(store, "malignant")
    agree = store.event(reviews.review(store, "bob", slide, comment="as the model said"))["details"]
    assert (agree["agree"], agree["label"], agree["subtype"], agree["model_call"]) == (True, "malignant", None,
                                                                                         ["malignant", None])
    same = store.event(reviews.review(store, "bob", slide, label="malignant"))["details"]
    assert same["agree"] is True and same["label"] == "malignant"
    named = store.event(reviews.review(store, "bob", slide, subtype="ductal_carcinoma"))["details"]
    assert named["agree"] is True and named["subtype"] == "ductal_carcinoma"  # a slide call has no subtype to contradict
    other = store.event(reviews.review(store, "bob", slide, label="benign"))["details"]
    assert other["agree"] is False and other["label"] == "benign" and other["subtype"] is None

    uncalled = slide_row(store, "not called")  # a model whose rule is "none" makes no slide call
    with pytest.raises(ValueError, match="made no call for this result"):
        reviews.review(store, "bob", uncalled)
    corrected = store.event(reviews.review(store, "bob", uncalled, label="benign"))["details"]
    assert corrected["agree"] is False and corrected["model_call"] == [None, None]


def test_a_form_that_agrees_while_naming_another_class_or_subtype_is_refused(store):
    """'agree' with Class = Malignant chosen on a benign call was saved as an agreement with benign."""
    row = store.record("diagnosis", "ann", "SOB_B_A-14-22549AB-40-001.png",
                       details={"call": "benign", "subtype": "adenosis", "confidence": 0.6, "refer": False})
    for label, subtype in (("malignant", None), (None, "fibroadenoma"), (None, "ductal_carcinoma")):
        with pytest.raises(ValueError, match="'agree' was chosen, but .* is not the model's call \\(Benign, Adenosis\\)"):
            reviews.submit(store, "bob", row, "agree", label, subtype, comment="this is malignant")
    with pytest.raises(ValueError, match="choose the corrected class or subtype"):
        reviews.submit(store, "bob", row, "correct", comment="?")
    assert not store.events(kinds="review")  # nothing saved
    same = reviews.submit(store, "bob", row, "agree", "benign", "adenosis")  # the model's own call, chosen again
    corrected = reviews.submit(store, "bob", row, "correct", "malignant", comment="this is malignant")
    assert store.event(same)["details"]["agree"] is True
    assert store.event(corrected)["details"]["agree"] is False and store.event(corrected)["details"]["label"] == "malignant"


def test_a_review_without_the_image_on_screen_needs_the_original_reviewed_and_says_so(store):
    """With images not kept, 'agree' from the queue was saved without anyone seeing the image, and the row
    did not show it."""
    row = store.record("diagnosis", "ann", "SOB_B_A-14-22549AB-40-001.png",
                       details={"call": "benign", "subtype": "adenosis", "confidence": 0.6, "refer": False})
    for verdict, subtype in (("agree", None), ("correct", "fibroadenoma")):
        with pytest.raises(ValueError, match=f"the image is not shown here. Tick '{reviews.ORIGINAL_REVIEWED}'"):
            reviews.submit(store, "bob", row, verdict, subtype=subtype, image_shown=False)
    assert not store.events(kinds="review")
    on_glass = reviews.submit(store, "bob", row, "agree", image_shown=False, original_reviewed=True)
    on_screen = reviews.submit(store, "cy", row, "correct", subtype="fibroadenoma")  # Diagnose: the image is shown
    assert store.event(on_glass)["details"]["image_shown"] is False
    assert store.event(on_screen)["details"]["image_shown"] is True


def test_the_reviews_another_user_saved_since_a_form_was_shown_are_named(store):
    row = store.record("diagnosis", "ann", "a.png", details={"call": "benign", "subtype": "adenosis"})
    before = reviews.review(store, "bob", row)
    shown = reviews.review(store, "cy", row)  # the newest review on show when Dee opened the form
    own = reviews.review(store, "dee", row)  # Dee's own earlier review is no news to her
    meanwhile = reviews.review(store, "bob", row, subtype="fibroadenoma")
    saved = reviews.review(store, "dee", row, label="malignant")
    assert [r["id"] for r in reviews.reviewed_meanwhile(store, row, "dee", shown, saved)] == [meanwhile]
    assert [r["id"] for r in reviews.reviewed_meanwhile(store, row, "dee", None, saved)] == [before, shown, meanwhile]
    assert reviews.reviewed_meanwhile(store, row, "dee", meanwhile, saved) == [] and own
    assert reviews.verdict_text(store.event(meanwhile)) == "corrected to Benign, Fibroadenoma"


def test_reviewers_who_disagree_are_flagged_discordant_and_a_self_review_is_marked(store):
    """Bob agreed (malignant), Carol said benign: the newest review silently won, and nothing said they
    disagreed; the diagnosing user agreeing with their own call was not marked either."""
    call = {"call": "malignant", "subtype": "ductal_carcinoma", "confidence": 0.7, "refer": False}
    split, settled, changed, open_class, mine = store.record_many(
        [dict(kind="diagnosis", user="ann", subject=f"r{n}.png", details=call) for n in range(5)])
    reviews.review(store, "bob", split)
    reviews.review(store, "carol", split, label="benign")  # another class: discordant
    reviews.review(store, "bob", settled)
    reviews.review(store, "carol", settled, subtype="ductal_carcinoma")  # the same labels
    reviews.review(store, "bob", changed, label="benign")
    reviews.review(store, "bob", changed)  # Bob changed his mind, then Carol agreed with his newest review
    reviews.review(store, "carol", changed)
    reviews.review(store, "bob", open_class, label="benign")  # another class alone: subtype open
    reviews.review(store, "carol", open_class, subtype="fibroadenoma")  # no conflict with an open subtype
    own = reviews.review(store, "ann", mine)
    assert reviews.discordant_ids(store) == [split]
    queued = reviews.queue(store, include_reviewed=True)
    assert queued.discordant == 1
    assert {r["id"]: r["discordant"] for r in queued.reviewed.rows} == {
        split: True, settled: False, changed: False, open_class: False, mine: False}
    [row] = [r for r in queued.reviewed.rows if r["id"] == split]
    assert [r["user"] for r in row["reviews"]] == ["bob", "carol"]
    only = reviews.queue(store, include_reviewed=True, discordant_only=True).reviewed
    assert [r["id"] for r in only.rows] == [split] and only.total == 1
    assert store.event(own)["details"]["self_review"] is True and reviews.self_review(store.event(mine), store.event(own))
    assert not any(reviews.self_review(r, r["review"]) for r in queued.reviewed.rows if r["id"] != mine)
    reviews.review(store, "dee", open_class, subtype="adenosis")  # now two subtypes of benign
    assert reviews.discordant_ids(store) == [split, open_class]


def test_agreeing_with_a_subtype_the_app_calls_not_reliable_confirms_the_class_only(store, predictor, diagnosed,
                                                                                     tmp_path):
    """QA demo #1: a one-click "agree" with a result shown as "subtype: not reliable for this model" was saved as
    the reviewer's Ductal carcinoma, and the training export wrote it as a SOB_M_DC-... label."""
    items, results = diagnosed
    kept = ImageStore(tmp_path / "images")
    ids = records.record_diagnosis(store, "ann", results, predictor,
                                   records.diagnosis_settings(predictor, False, None, "not stated"))
    unreliable = [ids[records.audit_key(r)] for r in results if r.ok]
    for _, data in items[:3]:
        kept.put(data)
    row = store.event(unreliable[0])
    assert row["details"]["subtype_reliable"] is False  # the tiny model's subtype head was never compared: not reliable
    agreed = store.event(reviews.submit(store, "bob", unreliable[0], "agree"))["details"]
    assert (agreed["agree"], agreed["label"], agreed["subtype"], agreed["subtype_assessed"]) == (
        True, row["details"]["call"], None, False)
    assert reviews.verdict_text({"details": agreed}).endswith(", subtype not assessed")
    other = next(s for s in SUBTYPES_BY_CLASS[row["details"]["call"]] if s != row["details"]["subtype"])
    chosen = store.event(reviews.submit(store, "cy", unreliable[1], "correct", subtype=other))["details"]
    assert chosen["agree"] is False and chosen["subtype"] == other and chosen["subtype_assessed"] is True

    reliable = store.record("diagnosis", "ann", "SOB_B_A-14-22549AB-40-001.png", image_sha256=kept.put(
        png_bytes(tissue_like())), model="other", details={**row["details"], "subtype_reliable": True})
    confirmed = store.event(reviews.review(store, "bob", reliable))["details"]
    assert confirmed["subtype"] == row["details"]["subtype"] and confirmed["subtype_assessed"] is True
    older = store.record("review", "dee", "x.png", refers_to=unreliable[2], details={  # before subtype_assessed
        "agree": True, "label": store.event(unreliable[2])["details"]["call"], "comment": "",
        "subtype": store.event(unreliable[2])["details"]["subtype"], "model_call": reviews.model_call(
            store.event(unreliable[2]))})
    assert reviews.assessed_subtype(store.event(older), store.event(unreliable[2])) is None

    summary = review_export.export_training_folder(store, tmp_path / "export", kept)
    exported = {(r["result_id"], r["subtype"]) for r in csv.DictReader((tmp_path / "export" / review_export.PROVENANCE).open())}
    assert exported == {(str(unreliable[1]), other), (str(reliable), row["details"]["subtype"])}
    assert summary["written"] == 2 and summary["skipped"]["no subtype"] == 2  # the one-click agreements, old and new
