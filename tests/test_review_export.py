"""Reviewed images as training data (core.store.review_export): only reviews made in the app become labels, each
image once with its newest review, into the training split only, in private and audited folders, never with a
made-up magnification (tests/test_store_reviews.py: the rows, the queue and the kept images)."""

import csv
from pathlib import Path

import pytest

from core.data.breakhis import index_folder
from core.store import review_export, reviews
from core.store.images import ImageStore
from tests.app_helpers import png_bytes, tissue_like
from tests.review_helpers import reviewers  # noqa: F401  (autouse: the reviewers' accounts)


def test_the_same_image_reviewed_twice_is_exported_once_with_its_newest_review(store, tmp_path):
    kept = ImageStore(tmp_path / "images")
    sha = kept.put(png_bytes(tissue_like()))
    call = {"call": "benign", "subtype": "adenosis", "magnification": "200X"}
    first, second, third = [store.record("diagnosis", "ann", "scan_0001.png", image_sha256=sha, details=call)
                            for _ in range(3)]  # one image uploaded three times
    older = reviews.review(store, "bob", second, subtype="ductal_carcinoma")
    reviews.review(store, "bob", third, subtype="fibroadenoma")
    newest = reviews.review(store, "cy", first, subtype="fibroadenoma")  # the newest review, of the first upload
    summary = review_export.export_training_folder(store, tmp_path / "export", kept)
    assert summary["written"] == 1 and summary["skipped"] == {"discordant": 0, "not kept": 0, "no subtype": 0,
                                                              "superseded": 1, "repeated": 1, "no magnification": 0,
                                                              "fail the audit chain": 0}
    indexed = index_folder(tmp_path / "export").images
    assert len(indexed) == 1 and indexed.iloc[0]["subtype"] == "fibroadenoma"
    with (tmp_path / "export" / review_export.PROVENANCE).open(newline="") as handle:
        [row] = list(csv.DictReader(handle))
    assert row["review_id"] == str(newest) and row["superseded_reviews"] == str(older)


def test_a_review_written_around_the_app_never_becomes_a_training_label(store, tmp_path):
    """A review row inserted by raw SQL (no chain hash) is not exported, nor is a result so inserted; both counted."""
    from tests.test_store_queue_chain import forge

    kept = ImageStore(tmp_path / "images")
    sha, other = kept.put(png_bytes(tissue_like())), kept.put(png_bytes(tissue_like((96, 130))))
    call = {"call": "benign", "subtype": "adenosis", "magnification": "200X"}
    result = store.record("diagnosis", "ann", "scan_0001.png", image_sha256=sha, details=call)
    forge(store, "review", {"agree": False, "label": "malignant", "subtype": "lobular_carcinoma", "model_call":
                            ["benign", "adenosis"]}, user="bob", refers_to=result, subject="scan_0001.png",
          image_sha256=sha)
    forge(store, "diagnosis", call, user="ann", subject="scan_0002.png", image_sha256=other)
    summary = review_export.export_training_folder(store, tmp_path / "export", kept)
    assert summary["written"] == 0 and summary["skipped"]["fail the audit chain"] == 2
    genuine = reviews.review(store, "bob", result, subtype="fibroadenoma")
    summary = review_export.export_training_folder(store, tmp_path / "export2", kept)
    assert summary["written"] == 1 and summary["skipped"]["fail the audit chain"] == 2
    with (tmp_path / "export2" / review_export.PROVENANCE).open(newline="") as handle:
        [row] = list(csv.DictReader(handle))
    assert row["review_id"] == str(genuine) and row["subtype"] == "fibroadenoma"


def test_reviewed_images_join_the_training_split_only(synthetic_breakhis, tmp_path):
    import shutil

    from core.training.config import TrainConfig
    from core.training.fit import prepare_data

    options = dict(data=str(synthetic_breakhis), out=str(tmp_path / "run"))
    plain = prepare_data(TrainConfig(**options))
    held_out = plain["test"].iloc[0]
    reviewed = tmp_path / "reviewed"
    reviewed.mkdir()
    shutil.copy(held_out["path"], reviewed / Path(held_out["path"]).name)  # a test patient: must stay out
    new_patient = plain["train"].iloc[0]
    shutil.copy(new_patient["path"], reviewed / Path(new_patient["path"]).name.replace(new_patient["case"], "0-77"))
    added = prepare_data(TrainConfig(**options, reviewed_dir=str(reviewed)))
    assert len(added["train"]) == len(plain["train"]) + 1 and "0-77" in set(added["train"]["case"])
    assert added["val"]["path"].tolist() == plain["val"]["path"].tolist()
    assert added["test"]["path"].tolist() == plain["test"]["path"].tolist()  # the held-out patient's copy left out


def test_an_empty_reviewed_folder_is_refused_in_words(tmp_path):
    """A --reviewed-dir without images (a wrong folder, an export not run) is said, not trained around."""
    from core.errors import UserInputError
    from core.training.additions import reviewed_for_training

    (tmp_path / "reviewed").mkdir()
    with pytest.raises(UserInputError, match="No reviewed images in"):
        reviewed_for_training(tmp_path / "reviewed", ())


def test_kept_images_are_in_folders_only_the_app_may_read(tmp_path):
    """The database and the session key were private (0700/0600) but kept patient images sat in 0755 folders."""
    import stat

    kept = ImageStore(tmp_path / "data" / "images")
    sha256 = kept.put(b"patient pixels")
    for folder in (kept.root, kept.path(sha256).parent):
        assert stat.S_IMODE(folder.stat().st_mode) & 0o077 == 0, folder


def reviewed_upload(store, kept, name: str, magnification: str, source: str) -> int:
    """A kept image diagnosed as benign adenosis (its magnification as recorded), reviewed to fibroadenoma."""
    sha = kept.put(png_bytes(tissue_like()) + name.encode())
    call = {"call": "benign", "subtype": "adenosis", "magnification": magnification, "magnification_source": source}
    result = store.record("diagnosis", "ann", name, image_sha256=sha, details=call)
    return reviews.review(store, "bob", result, subtype="fibroadenoma")


def test_the_export_is_private_and_audited(store, tmp_path, monkeypatch):
    """QA review #8: the folder was 0755 and the patient images 0644, and no audit row said who exported what."""
    import os
    import stat

    from core.store.db import StoreError

    kept = ImageStore(tmp_path / "images")
    review = reviewed_upload(store, kept, "SOB_B_A-14-22549AB-40-001.png", "40X", "file name")
    previous = os.umask(0o022)
    try:
        summary = review_export.export_training_folder(store, tmp_path / "out" / "export", kept, user="chief")
    finally:
        os.umask(previous)
    folder = tmp_path / "out" / "export"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert sorted(stat.S_IMODE(f.stat().st_mode) for f in folder.iterdir()) == [0o600, 0o600]
    [row] = store.events(kinds="reviews_exported")
    assert row["id"] == summary["audit_id"] and row["user"] == "chief" and row["subject"] == str(folder.resolve())
    assert row["details"]["count"] == 1 and row["details"]["review_ids"] == [review]
    assert row["details"]["folder"] == str(folder.resolve())
    (tmp_path / "mine").mkdir(mode=0o755)  # an empty folder the user made is tightened too
    review_export.export_training_folder(store, tmp_path / "mine", kept)
    assert stat.S_IMODE((tmp_path / "mine").stat().st_mode) == 0o700
    assert store.events(kinds="reviews_exported", limit=1)[0]["user"] == "system"

    def refused(*args, **kwargs):
        raise StoreError("The audit record could not be written: the database is busy or unavailable.")

    monkeypatch.setattr(store, "record", refused)  # no audit row: no unaudited copy of patient images left
    with pytest.raises(StoreError):
        review_export.export_training_folder(store, tmp_path / "unaudited", kept)
    assert not (tmp_path / "unaudited").exists()


def test_the_export_never_makes_up_a_magnification(store, tmp_path, monkeypatch, capsys):
    """QA review #9: an image whose magnification was never stated was exported as 200X, and nothing said so."""
    from core.cli import main

    monkeypatch.setenv("BREAKHIS_DATA_DIR", str(tmp_path))  # where the command's store keeps images
    kept = ImageStore()
    stated = reviewed_upload(store, kept, "SOB_B_A-14-22549AB-40-001.png", "40X", "file name")
    chosen = reviewed_upload(store, kept, "scan_0002.png", "400X", "chosen by user")
    unstated = reviewed_upload(store, kept, "IMG_0001.png", "not stated", "not stated")
    summary = review_export.export_training_folder(store, tmp_path / "export", kept)
    assert summary["written"] == 2 and summary["skipped"]["no magnification"] == 1
    with (tmp_path / "export" / review_export.PROVENANCE).open(newline="") as handle:
        rows = {int(r["review_id"]): r for r in csv.DictReader(handle)}
    assert sorted(rows) == [stated, chosen]
    assert (rows[stated]["magnification"], rows[stated]["magnification_source"]) == ("40X", "file name")
    assert (rows[chosen]["magnification"], rows[chosen]["magnification_source"]) == ("400X", "chosen by user")
    assert "-40-" in rows[stated]["file"] and "-400-" in rows[chosen]["file"]
    assert not any("-200-" in p.name for p in (tmp_path / "export").iterdir())

    monkeypatch.setenv("BREAKHIS_DATABASE_URL", str(store.engine.url.render_as_string(hide_password=False)))
    assert main(["reviews", "export", str(tmp_path / "cli")]) == 0
    said = capsys.readouterr().out
    assert "1 whose magnification was never stated (--assume-magnification includes them)" in said
    assert main(["reviews", "export", str(tmp_path / "assumed"), "--assume-magnification", "200X"]) == 0
    with (tmp_path / "assumed" / review_export.PROVENANCE).open(newline="") as handle:
        rows = {int(r["review_id"]): r for r in csv.DictReader(handle)}
    assert (rows[unstated]["magnification"], rows[unstated]["magnification_source"]) == (
        "200X", "assumed at export (--assume-magnification)")
    assert store.events(kinds="reviews_exported", limit=1)[0]["details"]["assumed_magnification"] == "200X"


def test_an_export_to_a_file_is_refused_in_words_and_new_parent_folders_are_private(store, tmp_path, monkeypatch,
                                                                                     capsys):
    """QA review #10: OUT naming an existing file ended in a NotADirectoryError traceback; and the folders made
    above OUT got the umask's mode (0755), only OUT itself 0700."""
    import os
    import stat

    from core.cli import main

    monkeypatch.setenv("BREAKHIS_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("BREAKHIS_DATABASE_URL", str(store.engine.url.render_as_string(hide_password=False)))
    (tmp_path / "a-file").write_text("mine")
    assert main(["reviews", "export", str(tmp_path / "a-file")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'a-file'} is a file; choose a new folder for the export" in err and "Traceback" not in err
    assert (tmp_path / "a-file").read_text() == "mine"
    previous = os.umask(0o022)
    try:
        review_export.export_training_folder(store, tmp_path / "new" / "deeper" / "export", ImageStore())
    finally:
        os.umask(previous)
    for folder in (tmp_path / "new", tmp_path / "new" / "deeper", tmp_path / "new" / "deeper" / "export"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder


def test_the_command_says_how_many_rows_failing_the_audit_chain_it_skipped(store, tmp_path, monkeypatch, capsys):
    """QA review #9: rows skipped for failing the audit chain were counted in the audit row only; the command's
    summary left them out (the README says "skipped and counted") and said nothing of `db verify`."""
    from core.cli import main
    from tests.test_store_queue_chain import forge

    monkeypatch.setenv("BREAKHIS_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("BREAKHIS_DATABASE_URL", str(store.engine.url.render_as_string(hide_password=False)))
    assert main(["reviews", "export", str(tmp_path / "clean")]) == 0
    assert "fail the audit trail's hash chain" not in capsys.readouterr().out  # nothing to say
    result = reviewed_upload(store, ImageStore(), "SOB_B_A-14-22549AB-40-001.png", "40X", "file name")
    forge(store, "review", {"agree": True, "label": "benign", "subtype": "adenosis"}, user="bob",
          refers_to=store.event(result)["refers_to"], subject="SOB_B_A-14-22549AB-40-001.png")
    assert main(["reviews", "export", str(tmp_path / "export")]) == 0
    said = capsys.readouterr().out
    assert "skipped 1 audit row of results or reviews that fail the audit trail's hash chain" in said
    assert "python -m core db verify" in said


def test_a_discordant_result_is_skipped_until_settled_and_older_reviews_of_it_count_as_superseded(
        store, tmp_path, monkeypatch, capsys):
    """QA review #3: a result whose reviewers disagree (ductal carcinoma, then one of them fibroadenoma) was exported
    with the newest single review's label, provenance did not say it was disputed, and the summary counted
    "0 older reviews ... with other labels" (superseded looked only at repeats of the image, not at the
    result's own older reviews)."""
    from core.cli import main

    monkeypatch.setenv("BREAKHIS_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("BREAKHIS_DATABASE_URL", str(store.engine.url.render_as_string(hide_password=False)))
    kept = ImageStore()
    call = {"call": "malignant", "subtype": "ductal_carcinoma", "magnification": "40X", "case": "14-2523"}
    result = store.record("diagnosis", "ann", "SOB_M_DC-14-2523-40-010.png", image_sha256=kept.put(
        png_bytes(tissue_like())), details=call)
    first = reviews.review(store, "cy", result, subtype="ductal_carcinoma")
    second = reviews.review(store, "bob", result, subtype="ductal_carcinoma")
    disputed = reviews.review(store, "cy", result, subtype="fibroadenoma")  # now cy and bob disagree
    assert reviews.discordant_ids(store) == [result]
    assert main(["reviews", "export", str(tmp_path / "export")]) == 0
    said = capsys.readouterr().out
    assert said.startswith("wrote 0 reviewed images") and "skipped: 1 discordant, whose reviewers disagree" in said
    assert not list((tmp_path / "export").glob("SOB_*"))
    with (tmp_path / "export" / review_export.PROVENANCE).open(newline="") as handle:
        [row] = list(csv.DictReader(handle))
    assert (row["file"], row["result_id"]) == ("", str(result))
    assert row["skipped"] == f"discordant: reviews {second} {disputed} disagree"
    [audited] = store.events(kinds="reviews_exported")
    assert audited["details"]["skipped"]["discordant"] == 1 and audited["details"]["discordant_result_ids"] == [result]

    settled = reviews.review(store, "bob", result, subtype="fibroadenoma")  # bob changes his mind: settled
    summary = review_export.export_training_folder(store, tmp_path / "settled", kept)
    assert summary["written"] == 1 and summary["skipped"]["discordant"] == 0
    assert (summary["skipped"]["superseded"], summary["skipped"]["repeated"]) == (2, 1)
    assert index_folder(tmp_path / "settled").images.iloc[0]["subtype"] == "fibroadenoma"
    with (tmp_path / "settled" / review_export.PROVENANCE).open(newline="") as handle:
        [row] = list(csv.DictReader(handle))
    assert row["review_id"] == str(settled) and row["superseded_reviews"] == f"{first} {second}"
    assert row["skipped"] == ""
