"""BreakHis file names and dataset folders -> one tidy table of images.

BreakHis file names carry every label we need (`SOB_B_A-14-22549AB-40-001.png` is a benign
adenosis, slide 14-22549AB of case 14-22549, at 40X), so indexing relies on names, not on folder
layout. That makes the original archive, Kaggle's doubled `BreaKHis_v1/BreaKHis_v1/...` and flat
or class-per-folder copies index the same way.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from pathlib import Path

import pandas as pd
from PIL import Image

from core.data.labels import (
    CLASS_CODES,
    CLASS_OF_SUBTYPE,
    CLASSES,
    CODE_OF_SUBTYPE,
    MAGNIFICATIONS,
    SUBTYPE_CODES,
    SUBTYPES,
)
from core.digests import file_sha256
from core.errors import DatasetError

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".tif", ".tiff"}
COLUMNS = ["path", "label", "subtype", "magnification", "slide", "slide_folder", "case", "synthetic"]

_NAME = re.compile(
    r"^SOB_(?P<cls>[BM])_(?P<code>[A-Z]+)-(?P<case>\d+-\d+)(?P<letters>[A-Z]*)"
    r"-(?P<mag>\d+)-(?P<seq>\d+)\.(?P<ext>png|jpe?g|tiff?)$",
    re.IGNORECASE,
)
# BreakHis photographed every field at these four objectives only; a name stating another number (50)
# is not a BreakHis name, else it would be counted as an image that no magnification chart shows.
_MAGNIFICATION_NUMBERS = {int(m.removesuffix("X")) for m in MAGNIFICATIONS}
# GAN output: SYN_<code>-<generator>-<seed>-<n>.png. The SYN prefix can never match _NAME, so a
# synthetic image is never mistaken for (or collides with) a real BreakHis image.
_SYNTHETIC = re.compile(r"^SYN_(?P<code>[A-Z]+)-(?P<generator>[\w.]+)-\d+-\d+\.png$", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class ImageName:
    label: str
    subtype: str
    magnification: str
    slide: str
    case: str

    @property
    def slide_folder(self) -> str:
        """Slide folder as in the archive. Keyed with the subtype: slide 14-13412 has two."""
        return f"SOB_{self.label[0].upper()}_{CODE_OF_SUBTYPE[self.subtype]}_{self.slide}"


def parse_name(filename: str) -> ImageName | None:
    """Labels from a BreakHis file name, or None when the name is not a BreakHis name."""
    match = _NAME.match(os.path.basename(filename))
    if not match:
        return None
    subtype = SUBTYPE_CODES.get(match["code"].upper())
    label = CLASS_CODES[match["cls"].upper()]
    if subtype is None or CLASS_OF_SUBTYPE[subtype] != label:
        return None
    magnification = int(match["mag"])
    if magnification not in _MAGNIFICATION_NUMBERS:
        return None
    case = match["case"]
    return ImageName(label, subtype, f"{magnification}X", case + match["letters"].upper(), case)


def name_problem(filename: str) -> str:
    """Why parse_name refuses a file name, in words for the skipped list."""
    match = _NAME.match(os.path.basename(filename))
    if match and int(match["mag"]) not in _MAGNIFICATION_NUMBERS:
        return f"magnification {int(match['mag'])}X is not a BreakHis magnification ({', '.join(MAGNIFICATIONS)})"
    return "name is not a BreakHis image name"


def field_key(filename: str) -> str | None:
    """One key per BreakHis field, or None for another name: the name without its format, case or
    leading zeros, so that one field stored as .png, .jpg and .PNG is indexed once (index_folder)."""
    name = parse_name(filename)
    if name is None:
        return None
    match = _NAME.match(os.path.basename(filename))
    code = CODE_OF_SUBTYPE[name.subtype]
    return f"SOB_{name.label[0].upper()}_{code}-{name.slide}-{name.magnification[:-1]}-{int(match['seq']):03d}"


def safe_generator_name(generator) -> str:
    """A generator's name as it appears in its images' file names."""
    return re.sub(r"[^\w.]", "_", str(generator))


def synthetic_name(subtype: str, generator: str, seed: int, n: int) -> str:
    """File name for a GAN image: marked synthetic and disjoint from BreakHis names."""
    return f"SYN_{CODE_OF_SUBTYPE[subtype]}-{safe_generator_name(generator)}-{seed}-{n:05d}.png"


def parse_synthetic_name(filename: str) -> str | None:
    """Subtype of a GAN image from its name, or None."""
    match = _SYNTHETIC.match(os.path.basename(filename))
    return SUBTYPE_CODES.get(match["code"].upper()) if match else None


def synthetic_generator(filename: str) -> str | None:
    """Name of the generator that made a GAN image (as written by `synthetic_name`), or None."""
    match = _SYNTHETIC.match(os.path.basename(filename))
    return match["generator"] if match else None


@dataclasses.dataclass
class IndexResult:
    """Indexed images plus what was skipped and why, so nothing is dropped silently; `unreadable`: the
    folders the walk could not enter (os.walk skips them without a word), relative to the root;
    `copies`: (left-out file, indexed file) pairs of byte-identical images; `misfiled`: (file, how its
    folders contradict its name) for indexed images whose folder names another label."""

    images: pd.DataFrame
    skipped: list[tuple[str, str]]
    unreadable: list[str] = dataclasses.field(default_factory=list)
    copies: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    misfiled: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    @property
    def cross_patient_copies(self) -> list[tuple[str, str]]:
        """The copies whose name gives another patient (case) than the indexed file's: a labelling mistake."""
        return [(copy, kept) for copy, kept in self.copies if parse_name(copy).case != parse_name(kept).case]

    def summary(self, examples: int = 5, listed: int = 50) -> str:
        lines = [f"{len(self.images)} images indexed, {len(self.skipped)} files skipped"]
        by_reason: dict[str, list[str]] = {}
        for path, reason in self.skipped:
            by_reason.setdefault(reason, []).append(path)
        for reason, paths in sorted(by_reason.items()):
            lines.append(f"  {len(paths)} {reason}, e.g. " + ", ".join(paths[:examples]))
        crossed = self.cross_patient_copies
        if crossed:
            lines.append(f"{_files(crossed)} byte-identical to an image of another patient, so one of the two names "
                         "is likely a labelling mistake; each is left out (the image counts once, under the name that "
                         "sorts first), so it can never sit in two splits:")
            lines += _listed([f"{copy} (case {parse_name(copy).case}) = {kept} (case {parse_name(kept).case})"
                              for copy, kept in crossed], listed)
        if self.misfiled:
            lines.append(f"{_files(self.misfiled)} in a folder that names another label than the file name, a "
                         "likely labelling mistake (labels come from file names, as always):")
            lines += _listed([f"{path}: {how}" for path, how in self.misfiled], listed)
        return "\n".join(lines)


def _files(items: list) -> str:
    return "1 file is" if len(items) == 1 else f"{len(items)} files are"


def _listed(lines: list[str], most: int) -> list[str]:
    more = [f"  ... and {len(lines) - most} more"] if len(lines) > most else []
    return [f"  {line}" for line in lines[:most]] + more


def _readable(path: Path) -> str | None:
    """Reason the file cannot be used as an image, or None. Reads the header only (fast)."""
    try:
        if path.stat().st_size == 0:
            return "empty file"
        with Image.open(path) as image:
            image.verify()
    except Exception as error:  # Pillow raises many types for bad files.
        return f"unreadable image ({type(error).__name__})"
    return None


def folder_problem(folder: str) -> str | None:
    """Why a folder typed into a form cannot be trained on (None when it can): said before a job is
    launched, with what to type instead, rather than failing minutes later in the job's log."""
    if not folder.strip():
        return ("Enter the folder that holds the BreakHis images: the Kaggle download (e.g. "
                "data/BreaKHis_v1) or any folder of files named like SOB_B_A-14-22549AB-40-001.png, in "
                "any layout (e.g. ../shared/breakhis/real).")
    path = Path(folder).expanduser()
    if not path.is_dir():
        return f"Data folder not found: {folder} (paths are on the server, relative to {Path.cwd()})."
    found = index_folder(path, check_readable=False)
    if not len(found.images):
        return (f"{folder} holds no BreakHis images ({len(found.skipped)} other files): names must follow "
                "BreakHis, e.g. SOB_B_A-14-22549AB-40-001.png.")
    if not any(_readable(Path(image)) is None for image in found.images["path"]):  # stops at the first readable
        unread = unreadable_images(index_folder(path).skipped)  # the run's own index says which
        return (f"{folder} holds no readable BreakHis image: {unreadable_words(unread)}. Copy the images "
                "themselves (PNG, JPEG or TIFF) into it, or choose another folder.")
    return None


# index_folder's reasons for a file whose BreakHis name parsed but whose bytes are no image.
_UNREADABLE = ("empty file", "unreadable image")


def unreadable_images(skipped: list[tuple[str, str]]) -> list[str]:
    """The skipped files (IndexResult.skipped) named as BreakHis images that could not be read as images."""
    return [path for path, reason in skipped if reason.startswith(_UNREADABLE)]


def unreadable_words(paths: list[str], examples: int = 2) -> str:
    """'2 files named as BreakHis images could not be read as images (e.g. A.png, B.png)', or '' for none: the one
    sentence the Retrain form and both pipelines' "no images" refusals add, so junk is not called misnamed."""
    if not paths:
        return ""
    names = ", ".join(os.path.basename(path) for path in paths[:examples])
    count = "1 file named as a BreakHis image" if len(paths) == 1 else f"{len(paths)} files named as BreakHis images"
    return f"{count} could not be read as {'an image' if len(paths) == 1 else 'images'} (e.g. {names})"


def index_folder(root: str | os.PathLike, check_readable: bool = True) -> IndexResult:
    """Index every BreakHis image under `root`, any layout, recursively.

    Hidden files are ignored; other files that are not recognisable BreakHis images are
    reported in `skipped` with the reason, never raised. A field is indexed once (field_key): the
    first readable copy in walk order, a lossless one before a JPEG of the same name in a folder;
    its other copies (another folder or format) are skipped. Of byte-identical files under different
    names only the one whose name sorts first is indexed, the others are skipped (`copies`): filed
    under two patients, the same picture would otherwise count twice and could sit in train and test
    of a patient-wise split. Images whose folders name another label than their file names are listed
    in `misfiled`.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"Dataset folder not found: {root}")
    rows, skipped, seen, errors, misfiled = [], [], {}, [], []
    for dirpath, dirnames, filenames in os.walk(root, onerror=errors.append):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for filename in sorted(filenames, key=_walk_order):
            if filename.startswith("."):
                continue
            path = Path(dirpath) / filename
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                skipped.append((str(path), "not an image file name"))
                continue
            name = parse_name(filename)
            if name is None:
                skipped.append((str(path), name_problem(filename)))
                continue
            key = field_key(filename)
            if key in seen:  # The same field twice: a copy in a class folder, or in another format.
                skipped.append((str(path), f"duplicate of {seen[key]}"))
                continue
            reason = _readable(path) if check_readable else None
            if reason:
                skipped.append((str(path), reason))
                continue
            seen[key] = str(path)
            rows.append(_row(str(path), name))
            if how := folder_disagreement(path.relative_to(root), name):
                misfiled.append((str(path), how))
    copies = {}
    for group in identical_files(row["path"] for row in rows):
        kept = min(group, key=lambda path: (field_key(path), path))  # by name, so every layout keeps the same one
        copies.update({copy: kept for copy in group if copy != kept})
    skipped += [(copy, "same bytes as an indexed image of another name") for copy in copies]
    rows = [row for row in rows if row["path"] not in copies]
    misfiled = [(path, how) for path, how in misfiled if path not in copies]
    unreadable = [os.path.relpath(error.filename, root) if error.filename else str(error) for error in errors]
    return IndexResult(pd.DataFrame(rows, columns=COLUMNS), skipped, unreadable, list(copies.items()), misfiled)


def identical_files(paths) -> list[list[str]]:
    """Groups of byte-identical files among `paths` (each group and the groups in the given order).

    Only files whose size (from stat) is shared with another are hashed, since files of different sizes
    cannot be identical: for BreakHis (7,909 PNGs, ~2.5 GB, sizes spread over hundreds of KB) that is one
    stat per file and a read of the few that collide, not a read of the whole folder at every scan.
    Files that cannot be read, and empty ones, are not compared.
    """
    order = {path: i for i, path in enumerate(dict.fromkeys(map(str, paths)))}
    by_size: dict[int, list[str]] = {}
    for path in order:
        try:
            size = os.stat(path).st_size
        except OSError:
            continue
        if size:
            by_size.setdefault(size, []).append(path)
    by_digest: dict[str, list[str]] = {}
    for same_size in (group for group in by_size.values() if len(group) > 1):
        for path in same_size:
            if digest := _digest(path):
                by_digest.setdefault(digest, []).append(path)
    groups = [sorted(group, key=order.get) for group in by_digest.values() if len(group) > 1]
    return sorted(groups, key=lambda group: order[group[0]])


def _digest(path: str) -> str | None:
    try:
        stat = os.stat(path)
        return _sha256(path, stat.st_size, stat.st_mtime_ns)
    except OSError:
        return None


@functools.lru_cache(maxsize=8192)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """Keyed by size and time too, so a changed file is read again; a split check after a scan reads nothing."""
    return file_sha256(path)


_FOLDER_LABELS = {**{c: "label" for c in CLASSES}, **{s: "subtype" for s in SUBTYPES},
                  **{m.lower(): "magnification" for m in MAGNIFICATIONS}}
_SLIDE_FOLDER = re.compile(r"^SOB_[BM]_[A-Z]+_\d+-\d+[A-Z]*$", re.IGNORECASE)


def folder_disagreement(relative: Path, name: ImageName) -> str | None:
    """How the folders of a file (relative to the scanned root) contradict its name, or None: a folder
    named like a class, subtype, magnification or slide (as in the archive) that is not this file's."""
    said = []
    for folder in relative.parent.parts:
        column = "slide_folder" if _SLIDE_FOLDER.match(folder) else _FOLDER_LABELS.get(_folder_key(folder))
        stated = getattr(name, column) if column else None
        if stated and _folder_key(folder) != _folder_key(stated):
            said.append(f"folder {folder} but the name says {stated}")
    return "; ".join(said) or None


def _folder_key(text: str) -> str:
    """"Ductal Carcinoma", "ductal-carcinoma" and "ductal_carcinoma" name one subtype."""
    return re.sub(r"[\s-]+", "_", text.strip().lower()) if not _SLIDE_FOLDER.match(text) else text.upper()


_LOSSY = (".jpg", ".jpeg", ".webp")


def _walk_order(filename: str) -> tuple:
    """Names in order, but of one name's copies the lossless one (PNG, TIFF) first: it is the original."""
    stem, suffix = os.path.splitext(filename)
    return stem, suffix.lower() in _LOSSY, filename


def _row(path: str, name: ImageName, synthetic: bool = False) -> dict:
    return {
        "path": path, "label": name.label, "subtype": name.subtype,
        "magnification": name.magnification, "slide": name.slide,
        "slide_folder": name.slide_folder, "case": name.case, "synthetic": synthetic,
    }


MANIFEST_COLUMNS = ("path", "label", "subtype", "magnification")


def load_manifest(csv_path: str | os.PathLike, root: str | os.PathLike | None = None) -> pd.DataFrame:
    """The full-dataset manifest as the same table `index_folder` returns.

    Labels are parsed from the file names (the manifest's own columns are cross-checked), so the
    manifest and a scanned folder can never disagree. `root` makes paths absolute. A manifest that
    cannot be read, lacks a column or has a row that disagrees with its file name raises DatasetError
    naming the line and why, never a bare ValueError.
    """
    try:
        manifest = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise DatasetError(f"Manifest not found: {csv_path}") from None
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise DatasetError(f"Manifest {csv_path} cannot be read as CSV: {error}") from None
    missing = [column for column in MANIFEST_COLUMNS if column not in manifest.columns]
    if missing:
        raise DatasetError(f"Manifest {csv_path} lacks the column(s) {', '.join(missing)}; it needs "
                           f"{', '.join(MANIFEST_COLUMNS)}.")
    rows = []
    for line, record in enumerate(manifest.itertuples(index=False), start=2):  # line 1 is the header
        name = parse_name(record.path)
        if name is None:
            raise DatasetError(f"Manifest {csv_path}, line {line}: {record.path}: {name_problem(record.path)}.")
        stated = {"label": record.label, "subtype": record.subtype, "magnification": record.magnification}
        wrong = [f"{column} {value!r} where the name says {getattr(name, column)!r}"
                 for column, value in stated.items() if value != getattr(name, column)]
        if wrong:
            raise DatasetError(f"Manifest {csv_path}, line {line} disagrees with its file name {record.path}: "
                               + "; ".join(wrong) + ".")
        path = str(Path(root) / record.path) if root else record.path
        rows.append(_row(path, name))
    return pd.DataFrame(rows, columns=COLUMNS)


def summarize(images: pd.DataFrame) -> dict:
    """Counts that describe a data set (used in model cards and the dataset page)."""
    return {
        "images": int(len(images)),
        "by_class": {k: int(v) for k, v in images["label"].value_counts().sort_index().items()},
        "by_subtype": {k: int(v) for k, v in images["subtype"].value_counts().sort_index().items()},
        "by_magnification": {
            k: int(v) for k, v in images["magnification"].value_counts().sort_index().items()
        },
        "slides": int(images["slide_folder"].nunique()),
        "cases": int(images["case"].nunique()),
        "synthetic": int(images["synthetic"].sum()) if "synthetic" in images else 0,
    }


def subtype_counts(images: pd.DataFrame) -> pd.Series:
    """Images per subtype in SUBTYPES order, 0 where a subtype is absent."""
    return images["subtype"].value_counts().reindex(list(SUBTYPES), fill_value=0).astype(int)
