"""scripts/gpu_machine.sh's packing of what comes back from a lent GPU machine (at most 8 files of
16 MiB): over MAX_BACK_MB the fold models' weights stay there, then a GAN's resume checkpoint, and
left_out.txt says which; an archive over 16 MiB is split into pieces that join back."""

import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_machine.sh"
MB = 1024 * 1024

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("tar") is None, reason="needs bash and tar")


def write_random(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))  # random bytes do not compress: sizes stay what they are


def both_runs(root: Path, fold_mb: float, checkpoint_mb: float) -> Path:
    """A folder as `both` leaves it: a fields cross-validation and a GAN run."""
    run = root / "run"
    for fold in range(2):
        write_random(run / "fields" / f"fold-{fold}" / "model" / "model.keras", int(fold_mb * MB))
        (run / "fields" / f"fold-{fold}" / "model" / "card.json").write_text("{}")
    write_random(run / "fields" / "model" / "model.keras", MB // 2)
    (run / "fields" / "cv.json").write_text("{}")
    write_random(run / "gan" / "checkpoint.weights.h5", int(checkpoint_mb * MB))
    write_random(run / "gan" / "model" / "model.keras", MB // 4)
    return run


def back(run: Path, out: Path, max_mb: int | None = None) -> subprocess.CompletedProcess:
    """`OUT=out scripts/gpu_machine.sh back run` (MAX_BACK_MB: the script's default unless given)."""
    env = {**os.environ, "OUT": str(out), **({"MAX_BACK_MB": str(max_mb)} if max_mb is not None else {})}
    return subprocess.run(["bash", str(SCRIPT), "back", str(run)], env=env, capture_output=True, text=True,
                          check=True)


def members(archive: Path) -> set[str]:
    with tarfile.open(archive) as tar:
        return {m.name for m in tar.getmembers() if m.isfile()}


@pytest.mark.parametrize("max_mb, folds_back, checkpoint_back", [(8, True, True), (3, False, True),
                                                                 (1, False, False)])
def test_what_stays_on_the_machine_goes_largest_first(tmp_path, max_mb, folds_back, checkpoint_back):
    run = both_runs(tmp_path, fold_mb=1.5, checkpoint_mb=1.5)  # 3 MB of folds, 1.5 of checkpoint, 0.75 else
    out = tmp_path / "out"
    back(run, out, max_mb)
    names = members(out / "run.tgz")
    assert {"run/fields/model/model.keras", "run/fields/cv.json", "run/gan/model/model.keras",
            "run/fields/fold-0/model/card.json"} <= names  # what is always wanted comes back
    assert ("run/fields/fold-0/model/model.keras" in names) == folds_back
    assert ("run/gan/checkpoint.weights.h5" in names) == checkpoint_back
    note = (out / "left_out.txt").read_text() if (out / "left_out.txt").exists() else ""
    assert ("fold models" in note) == (not folds_back) and ("checkpoint" in note) == (not checkpoint_back)
    assert (out / "run.tgz").stat().st_size <= max_mb * MB


def test_an_archive_over_16_mib_comes_back_in_pieces_that_join(tmp_path):
    run = both_runs(tmp_path, fold_mb=9, checkpoint_mb=1)  # ~19.75 MB, under the 75 MB default
    out = tmp_path / "out"
    back(run, out)
    pieces = sorted(out.glob("run.tgz.*"))
    assert [p.name for p in pieces] == ["run.tgz.00", "run.tgz.01"] and not (out / "run.tgz").exists()
    assert all(p.stat().st_size <= 16 * MB for p in pieces)
    joined = tmp_path / "joined.tgz"
    joined.write_bytes(b"".join(p.read_bytes() for p in pieces))  # cat run.tgz.* > run.tgz
    assert "run/fields/fold-1/model/model.keras" in members(joined) and not (out / "left_out.txt").exists()
