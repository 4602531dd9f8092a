"""Get BreakHis onto disk and check it: `python -m core download` and `python -m core index`.

The download uses kagglehub (Kaggle dataset "ambarish/breakhis"), which needs network access
and, for most accounts, Kaggle credentials. Where either is missing the command fails fast with
the manual steps instead of hanging, and `index` checks a folder unpacked by hand. Indexing is
by file name (core.data.breakhis), so any layout of the archive works.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from core.data.breakhis import index_folder, summarize
from core.data.labels import CLASSES
from core.errors import DatasetError

KAGGLE_DATASET = "ambarish/breakhis"
KAGGLE_HOST = ("www.kaggle.com", 443)
PROBE_TIMEOUT_S = 5.0
# The complete BreakHis v1 (SOB images), as in the shared manifest.
FULL_BREAKHIS = {"images": 7909, "benign": 2480, "malignant": 5429, "slides": 82, "cases": 70}


def manual_steps(dest: str | os.PathLike) -> str:
    return (
        "Manual steps:\n"
        f"  1. Download the dataset zip from https://www.kaggle.com/datasets/{KAGGLE_DATASET}\n"
        "     (Kaggle account needed; or `kaggle datasets download -d ambarish/breakhis`).\n"
        f"  2. Unzip it into {dest}   (e.g. `unzip breakhis.zip -d {dest}`; any folder layout works).\n"
        f"  3. Check it: python -m core index {dest}   (counts and skipped files;\n"
        "     the full dataset has 7,909 images).\n"
        "For automatic download put Kaggle credentials in ~/.kaggle/kaggle.json or set\n"
        "KAGGLE_USERNAME and KAGGLE_KEY, on a machine with internet access."
    )


def check_network(host: tuple[str, int] = KAGGLE_HOST, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Fail in seconds (not minutes of retries) when Kaggle cannot be reached."""
    try:
        with socket.create_connection(host, timeout=timeout):
            pass
    except OSError as error:
        raise DatasetError(f"Cannot reach {host[0]} ({error}); no network access?") from None


def download(dest: str | os.PathLike) -> Path:
    """Fetch BreakHis with kagglehub into DEST/kagglehub/...; returns the dataset folder."""
    dest = Path(dest)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DatasetError(f"Cannot create {dest}: {error}") from None
    check_network()
    try:
        import kagglehub
    except ImportError:
        raise DatasetError("kagglehub is not installed (pip install kagglehub).") from None
    # kagglehub reads its cache folder from this variable on every call; keep the data in DEST.
    previous = os.environ.get("KAGGLEHUB_CACHE")
    os.environ["KAGGLEHUB_CACHE"] = str(dest / "kagglehub")
    try:
        path = kagglehub.dataset_download(KAGGLE_DATASET)
    except Exception as error:  # Auth, HTTP, quota, disk: all mean "do it by hand".
        raise DatasetError(f"kagglehub could not download {KAGGLE_DATASET}: {type(error).__name__}: {error}") from None
    finally:
        if previous is None:
            os.environ.pop("KAGGLEHUB_CACHE", None)
        else:
            os.environ["KAGGLEHUB_CACHE"] = previous
    return Path(path)


def completeness(summary: dict) -> str:
    """One line saying whether an index matches the full BreakHis, and if not, how it differs."""
    found = {"images": summary["images"], "slides": summary["slides"], "cases": summary["cases"],
             **{c: summary["by_class"].get(c, 0) for c in CLASSES}}
    differences = [f"{key} {found[key]} (full: {value})" for key, value in FULL_BREAKHIS.items()
                   if found[key] != value]
    if not differences:
        full = FULL_BREAKHIS
        return (f"Complete: matches the full BreakHis ({full['images']:,} images, {full['slides']} slides, "
                f"{full['cases']} patients).")
    return "Partial or different from the full BreakHis: " + ", ".join(differences) + "."


def report(folder: str | os.PathLike) -> dict:
    """Index a folder, print the summary and the skipped files; raise if nothing was found."""
    result = index_folder(folder)  # DatasetError for a missing folder
    print(result.summary())
    summary = summarize(result.images)
    if summary["images"] == 0:
        raise DatasetError(f"No BreakHis images (SOB_*.png) found under {folder}.")
    print(f"Classes: {summary['by_class']}")
    print(f"Subtypes: {summary['by_subtype']}")
    print(f"Magnifications: {summary['by_magnification']}")
    print(f"Slides: {summary['slides']}, patients (cases): {summary['cases']}")
    print(completeness(summary))
    return summary
