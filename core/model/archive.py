"""A model folder as one zip, to move it to another machine: export verifies it first, import unpacks only its
two files, under a size limit, verifies them in a hidden staging folder, and only then puts the folder in place."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from core.errors import ModelFolderError
from core.model.folders import CARD_FILE, ENSEMBLE, MODEL_FILE, card_kind, read_card, verify_checksum

# The most an imported model folder may unpack to: many times the largest backbone's file (a
# DenseNet121 is ~30 MB), far less than a zip bomb's gigabytes.
MAX_UNPACKED_BYTES = 2 << 30


def _self_contained(folder: Path) -> dict:
    """The card of a folder that travels as one zip: an ensemble's members are folders elsewhere."""
    card = read_card(folder)
    if card_kind(card) == ENSEMBLE:
        raise ModelFolderError(f"{folder} holds an ensemble of classifiers, whose members are folders of their own: "
                               "export each member, import them, and make the ensemble there (python -m core ensemble)")
    return card


def export_zip(folder: str | os.PathLike, dest_zip: str | os.PathLike) -> Path:
    """Zip a verified model folder (model.keras + card.json) to move it to another machine.

    An existing file is never replaced (it may be another model's), and the zip is written under a
    temporary name first, so a failed export leaves no zip that looks whole."""
    folder, dest_zip = Path(folder), Path(dest_zip)
    verify_checksum(folder, _self_contained(folder))
    if dest_zip.exists():
        raise ModelFolderError(f"{dest_zip} already exists; choose a new zip file name")
    dest_zip.parent.mkdir(parents=True, exist_ok=True)
    partial = dest_zip.with_name(f".{dest_zip.name}.partial")
    try:
        with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name in (MODEL_FILE, CARD_FILE):
                archive.write(folder / name, arcname=f"{folder.name}/{name}")
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(dest_zip)
    return dest_zip


def import_zip(zip_path: str | os.PathLike, dest_root: str | os.PathLike) -> Path:
    """Unpack an exported model zip under dest_root and verify it; returns the model folder.

    Only the two files' names are taken from the archive (never its paths), and their declared sizes
    must stay under MAX_UNPACKED_BYTES (zipfile reads no further than them). They are unpacked and
    verified in a hidden staging folder (which the model lists skip) and moved into place only
    then, so a refused zip leaves no model folder behind for the app to offer.
    """
    zip_path, dest_root = Path(zip_path), Path(dest_root)
    if not zip_path.exists():
        raise ModelFolderError(f"{zip_path} not found")
    if zip_path.is_dir():
        raise ModelFolderError(f"{zip_path} is a folder; import-model takes the zip export-model wrote")
    if dest_root.exists() and not dest_root.is_dir():
        raise ModelFolderError(f"--dest {dest_root} is a file, not a folder")
    try:
        with zipfile.ZipFile(zip_path) as archive:
            members = [m for m in archive.infolist() if Path(m.filename).name in (MODEL_FILE, CARD_FILE)]
            names = [m.filename for m in members]
            folders = {Path(n).parent for n in names}
            if len(names) != 2 or len(folders) != 1:
                raise ModelFolderError(f"{zip_path.name} is not an exported model folder")
            unpacked = sum(m.file_size for m in members)
            if unpacked > MAX_UNPACKED_BYTES:
                raise ModelFolderError(f"{zip_path.name} would unpack to {unpacked:,} bytes, more than a model "
                                       f"folder holds ({MAX_UNPACKED_BYTES:,}); it is refused")
            folder_name = next(iter(folders)).name
            named = folder_name if folder_name not in ("", ".", "..") else zip_path.stem
            # A hidden folder ('.name') is one the model lists skip: the model would be imported and never offered.
            visible = named.lstrip(".") or "imported-model"
            if visible != named:
                logging.getLogger(__name__).warning("%s holds the hidden folder %r, which the app never lists: "
                                                    "imported as %r", zip_path.name, named, visible)
            target = dest_root / visible
            if target.exists() and (not target.is_dir() or any(target.iterdir())):
                raise ModelFolderError(f"{target} already exists; import into another folder")
            dest_root.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=dest_root, prefix=".importing-") as staging:
                staged = Path(staging) / target.name
                staged.mkdir()
                for name in names:
                    with archive.open(name) as source, open(staged / Path(name).name, "wb") as sink:
                        shutil.copyfileobj(source, sink)
                try:
                    verify_checksum(staged, _self_contained(staged))
                except ModelFolderError as error:  # named as in the zip, not by the staging folder
                    raise ModelFolderError(f"{zip_path.name}: " + str(error).replace(f"{staged}/", "")
                                           .replace(str(staged), target.name)) from None
                os.replace(staged, target)
    except zipfile.BadZipFile:
        raise ModelFolderError(f"{zip_path.name} is not a zip file") from None
    return target
