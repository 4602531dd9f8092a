"""Where things live: the repository's folders and bundled files, defined once.

Every module that needs a bundled file (samples, manifest, published results, default models)
or the runs folder takes it from here. `portable` turns a path into what a model card may record:
relative to the repository when inside it, else just the folder's name, so a card never carries
one machine's absolute paths.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path

from core.errors import UserInputError

REPO = Path(__file__).resolve().parent.parent
ASSETS = REPO / "assets"
SAMPLES_DIR = ASSETS / "samples"
MANIFEST = ASSETS / "breakhis_manifest.csv"
REFERENCE_RESULTS = ASSETS / "reference_results.csv"
MODELS_DIR = REPO / "models"
DEFAULT_MODEL_DIR = MODELS_DIR / "default"
DEFAULT_GENERATOR_DIR = MODELS_DIR / "gan-default"
SHARED_DATA_DIR = REPO.parent / "shared" / "breakhis"  # the reference data next to the checkout (README)


def runs_dir() -> Path:
    """Where training runs (and the app's job file) go: BREAKHIS_RUNS_DIR, default runs/."""
    return Path(os.environ.get("BREAKHIS_RUNS_DIR") or REPO / "runs")


def data_dir() -> Path:
    """Where the app keeps its database, the session signing key (session.key, unless
    BREAKHIS_SESSION_KEY is set) and (only if enabled) kept images: BREAKHIS_DATA_DIR, default data/
    inside the checkout (git-ignored). Created by the store on first start (0700), not here."""
    return Path(os.environ.get("BREAKHIS_DATA_DIR") or REPO / "data")


ENABLED_VALUES = ("1", "true", "yes", "on")


def switch_setting(variable: str) -> bool:
    """Whether an on/off setting is on (1, true, yes, on, any case); unset or anything else is off. The
    one reading of every such setting (BREAKHIS_KEEP_IMAGES, BREAKHIS_SINGLE_USER, ...)."""
    return os.environ.get(variable, "").strip().lower() in ENABLED_VALUES


def visible_files(folder: str | os.PathLike) -> list[str]:
    """Every file name under a folder's tree as a path, hidden files and folders left out (a share's
    .snapshot copies, a stick's .Trashes, macOS ._ files); linked folders (a scanner share linked in)
    are followed, each real folder once, so a link back up is no loop. What `predict` reads of a
    folder and what `slides` lists; each keeps the names it reads."""
    found, walked = [], set()
    for here, folders, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(here)
        if real in walked:  # a link back up, or a second link to the same folder
            folders[:] = []
            continue
        walked.add(real)
        folders[:] = [f for f in folders if not f.startswith(".")]
        found += [os.path.join(here, name) for name in files if not name.startswith(".")]
    return found


def folders_setting(variable: str, default: tuple[Path, ...] = ()) -> list[Path]:
    """The folders an os.pathsep-separated setting names (~ expanded), or `default` when it is unset.
    Set but empty names no folder: a deployment switches a server-folder feature off that way. The
    one reading of every such setting (BREAKHIS_SLIDE_DIRS, BREAKHIS_DATASET_DIRS)."""
    configured = os.environ.get(variable)
    if configured is None:
        return list(default)
    return [Path(p.strip()).expanduser() for p in configured.split(os.pathsep) if p.strip()]


def folder_setting_problem(variable: str, folder: Path) -> str | None:
    """Why a folder that `variable` names cannot be listed, in words, or None: a missing, file or
    unreadable folder would otherwise just find nothing (os.scandir / rglob skip it without a word)."""
    if not folder.exists():
        return f"{variable} names a folder that was not found: {folder}"
    if not folder.is_dir():
        return f"{variable} names a file, not a folder: {folder}"
    try:
        with os.scandir(folder):
            return None
    except OSError as error:
        return f"{variable} names a folder that cannot be read: {folder} ({error.strerror or error})"


def dataset_dirs() -> list[Path]:
    """Server folders the Dataset page may scan (and their sub-folders): BREAKHIS_DATASET_DIRS,
    default the bundled samples and the shared reference data (../shared/breakhis)."""
    return folders_setting("BREAKHIS_DATASET_DIRS", (SAMPLES_DIR, SHARED_DATA_DIR))


PROGRESS_STREAM = "progress.jsonl"  # core.training.progress writes it; read here without importing training
MODEL_CARD = "card.json"  # core.model.folders.CARD_FILE (a folder holding one is a model), named without Keras
UNFINISHED = ".unfinished-"  # the prefix of a model a run saved but did not complete, moved aside (hidden)


RUN_CLAIM = ".run.lock"  # in a run folder: flock-ed by the one process writing it (claim_run)
CLAIMED_ELSEWHERE = ".claimed-elsewhere"  # in the runs folder: where runs held outside it are (claimed_folders)
CLAIM_FD = "BREAKHIS_RUN_CLAIM_FD"  # a claim the app took for a Retrain job, handed to its process (core.app.jobs)


def _failed_before_start(stream: Path) -> bool:
    try:
        events = [json.loads(line) for line in stream.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, ValueError):
        return False
    return (bool(events) and all(isinstance(e, dict) for e in events) and events[-1].get("event") == "end"
            and events[-1].get("status") == "failed" and not any(e.get("event") == "start" for e in events))


def refused_before_start(folder: str | os.PathLike) -> bool:
    """True when `folder` holds nothing but progress streams (its own, or its folds' in sub-folders)
    that failed before training started (no "start" event: an empty data folder, a missing
    --synthetic-dir): the record of a refusal, not a run, so the same --out may be used again."""
    try:
        entries = [entry for entry in Path(folder).iterdir() if entry.name != RUN_CLAIM]
        return bool(entries) and all(_failed_before_start(entry) if entry.name == PROGRESS_STREAM and entry.is_file()
                                     else entry.is_dir() and refused_before_start(entry) for entry in entries)
    except OSError:
        return False


def refuse_existing_run(folder: str | os.PathLike, markers: tuple[str, ...] = (), holds: str = "a training run",
                        hint: str = "choose a new --out folder", error: type[UserInputError] = UserInputError) -> Path:
    """`folder` as a Path, for a new run; `error` when it already holds one: any of `markers` (names
    inside it) exists, or, without markers, it is a folder that is not empty. Every command that
    creates a run folder (training, cross-validation, comparison, ensemble, the default model, a
    job) checks here, so none overwrites another's results. A folder holding only the stream of a
    run refused before it started (`refused_before_start`) is not a run: that stream is removed, so
    the retry's stream starts clean."""
    folder = Path(folder)
    if folder.is_dir() and refused_before_start(folder):
        for entry in folder.iterdir():
            if entry.name != RUN_CLAIM:  # the claim is the caller's (claim_run), not the refused run's
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    taken = any((folder / name).exists() for name in markers) if markers else \
        folder.is_dir() and any(entry.name != RUN_CLAIM for entry in folder.iterdir())
    if taken:
        raise error(f"{folder} already holds {holds}; {hint}")
    return folder


def claim_run(folder: str | os.PathLike, markers: tuple[str, ...] = (), holds: str = "a training run",
              hint: str = "choose a new --out folder", error: type[UserInputError] = UserInputError):
    """Take `folder` for a new run; the open claim file, to keep open while writing there. The folder is held
    (hold_run) and then checked by refuse_existing_run under that lock. Every writer of a run folder claims it
    (train, the fields runs, a Retrain job before its process starts), so two runs given one name a second apart
    do not both pass the check and write one folder: the second is refused."""
    claim = hold_run(folder, hint, error)
    try:
        refuse_existing_run(folder, markers, holds, hint, error)
    except BaseException:
        claim.close()
        raise
    return claim


def hold_run(folder: str | os.PathLike, hint: str = "choose a new --out folder",
             error: type[UserInputError] = UserInputError):
    """Lock `folder`'s RUN_CLAIM for this process (flock: held until closed or the process ends, so a crash frees
    it), making the folder; the open file. Without claim_run's check for an earlier run: for the commands that
    may resume into their folder (`tune`, `gan train`), which check what is there themselves. A Retrain job's
    process adopts the claim the app took for it (CLAIM_FD) instead of being refused by it."""
    folder = Path(folder)
    claim = _inherited_claim(folder)
    if claim is None:
        folder.mkdir(parents=True, exist_ok=True)
        claim = open(folder / RUN_CLAIM, "a")
        try:
            fcntl.flock(claim, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            claim.close()
            raise error(f"{folder} is being written by another training process (one started from the command "
                        f"line, or a Retrain job); {hint}") from None
        _point_to(folder)
    _write_owner(claim)  # this process, also for a claim the app took for a job and handed to it
    return claim


@contextlib.contextmanager
def holding(folder: str | os.PathLike, hint: str = "choose a new --out folder"):
    """hold_run for the length of a block. A folder the block was refused in before writing anything (it holds
    only the claim) is removed if hold_run made it, so a refused command leaves nothing behind."""
    folder = Path(folder)
    made = not folder.exists()
    claim = hold_run(folder, hint)
    try:
        yield claim
    except BaseException:
        if made and all(entry.name == RUN_CLAIM for entry in folder.iterdir()):
            shutil.rmtree(folder, ignore_errors=True)
        raise
    finally:
        claim.close()


def _point_to(folder: Path) -> None:
    """A run held outside the runs folder leaves its path in runs/CLAIMED_ELSEWHERE, so that the app, which scans
    only its runs folder, still counts it as a training (claimed_folders). No lock: the path's own RUN_CLAIM says
    whether it still runs. Best effort: a runs folder this process cannot write only loses that count."""
    runs, here = runs_dir().resolve(), folder.resolve()
    if here == runs or runs in here.parents:
        return
    key = hashlib.sha256(str(here).encode()).hexdigest()[:16]
    try:
        (runs / CLAIMED_ELSEWHERE).mkdir(parents=True, exist_ok=True)
        (runs / CLAIMED_ELSEWHERE / key).write_text(str(here), encoding="utf-8")
    except OSError:
        pass


def claimed_folders(root: str | os.PathLike, depth: int = 2) -> list[Path]:
    """The run folders under `root` (up to `depth` levels: a cross-validation's folds), and those held outside it
    that left their path in root/CLAIMED_ELSEWHERE, that a process is writing now: their RUN_CLAIM is locked by
    someone. What lets the app see a training started from the command line, wherever its --out."""
    found = [lock.parent for lock in sorted(p for level in range(1, depth + 1)
                                            for p in Path(root).glob("/".join(["*"] * level) + "/" + RUN_CLAIM))
             if _is_held(lock)]
    for pointer in sorted((Path(root) / CLAIMED_ELSEWHERE).glob("*")):  # runs held outside root (_point_to)
        try:
            elsewhere = Path(pointer.read_text(encoding="utf-8").strip())
            if _is_held(elsewhere / RUN_CLAIM):
                found.append(elsewhere)
            else:  # that run ended (or its folder is gone): forget it
                pointer.unlink()
        except (OSError, ValueError):
            continue
    return [folder for folder in found if not any(folder != other and other in folder.parents for other in found)]


def process_stat(pid: int) -> list[str] | None:
    """A process's /proc/PID/stat fields after its name (Linux: the state first, field 3), or None where they
    cannot be read. Counted after the ")" that ends the name, which may itself hold spaces or brackets."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def process_start_time(pid: int) -> str | None:
    """Kernel start time of a process (field 22), or None where it cannot be read: with the pid, it names one
    process even after its pid is reused."""
    fields = process_stat(pid)
    return None if fields is None else fields[19]


def _write_owner(claim) -> None:
    """This process (pid and start time) written into the claim it holds, so that the Retrain page can stop a
    training started from the command line (claim_owner). Best effort: a claim without it cannot be stopped there."""
    with contextlib.suppress(OSError, ValueError):
        claim.seek(0)
        claim.truncate()
        claim.write(json.dumps({"pid": os.getpid(), "started": process_start_time(os.getpid())}))
        claim.flush()


def claim_owner(folder: str | os.PathLike) -> int | None:
    """The pid of the process writing `folder` now: its RUN_CLAIM is held, and the process it names runs on this
    machine and started when the claim says (not a reused pid). None otherwise, or where /proc is not readable."""
    lock = Path(folder) / RUN_CLAIM
    if not _is_held(lock):
        return None
    try:
        record = json.loads(lock.read_text(encoding="utf-8"))
        pid, started = int(record["pid"]), record["started"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return pid if pid > 0 and started is not None and process_start_time(pid) == started else None


def _is_held(lock: Path) -> bool:
    """Whether a process holds this RUN_CLAIM now: a probe takes it for an instant and frees it. Opened for
    reading (flock needs no write access), so a probe never makes a lock file that is not there."""
    try:
        with open(lock, "rb") as probe:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False


def _inherited_claim(folder: Path):
    """The claim of `folder` this process was handed (CLAIM_FD names an open file that is its RUN_CLAIM), adopted
    once; else None."""
    handed = os.environ.get(CLAIM_FD, "")
    try:
        held, here = os.fstat(int(handed)), os.stat(folder / RUN_CLAIM)
    except (OSError, ValueError):
        return None
    if (held.st_dev, held.st_ino) != (here.st_dev, here.st_ino):
        return None
    del os.environ[CLAIM_FD]  # a second run in this process (a fold) claims its own folder
    return os.fdopen(int(handed), "a")


def set_aside_models(run_dir: str | os.PathLike) -> list[Path]:
    """Move every model folder a run wrote under `run_dir` (a folder holding a card; hidden ones and those inside
    another left alone) to a hidden sibling, .unfinished-NAME (-2, -3, ... when taken); their new places. For a
    run that did not complete: what it saved is not calibrated or evaluated, and no model list shows a hidden
    folder (core.model.folders.find_model_folders). An OSError stops it."""
    run_dir = Path(run_dir)
    models = sorted({card.parent for card in run_dir.rglob(MODEL_CARD) if card.parent != run_dir
                     and not any(part.startswith(".") for part in card.parent.relative_to(run_dir).parts)})
    moved = []
    for model in [m for m in models if not any(m != o and m.is_relative_to(o) for o in models)]:
        aside = unused_name(model.with_name(UNFINISHED + model.name))
        model.rename(aside)
        moved.append(aside)
    return moved


def unused_name(path: Path) -> Path:
    """`path`, or the first of path-2, path-3, ... that does not exist: a folder moved aside (a run's unfinished
    model, make-default's backup of the default it replaced) never lands on an earlier one."""
    candidate, number = path, 1
    while candidate.exists():
        number += 1
        candidate = path.with_name(f"{path.name}-{number}")
    return candidate


def portable(path: str | os.PathLike) -> str:
    """A path as a card records it: 'assets/samples' inside the repository, else the folder name."""
    resolved = Path(path).resolve()
    if resolved.is_relative_to(REPO):
        return resolved.relative_to(REPO).as_posix() or "."
    return resolved.name
