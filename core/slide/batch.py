"""Slides from a file or a folder to output folders: one process, or many on a Dask cluster.

    python -m core slide PATH --out DIR            one slide or image -> DIR/{heatmap.png, tiles.csv, ...}
    python -m core slides DIR --out DIR [--scheduler tcp://HOST:8786] [--workers 2]

A batch's tasks are slides (a slide is thousands of tiles; one task per slide keeps each
worker's reads local and its model batches full). `--scheduler` uses an existing Dask cluster
(every worker must see the slide paths and the model folder); without it a LocalCluster of
`--workers` single-threaded processes on 127.0.0.1 is started and closed. Each worker process
loads the model once (`_predictor`, cached per process), whichever slides it gets. The
per-slide work is `analyse_slide`, the same function the serial run calls, so the results are
the same file for file. Each slide's folder is complete only once its summary.json exists;
`slides.csv` (one row per slide, errors included, each with its `error_kind`: input, failure or
stopped) is written last, an earlier run's removed
first; a batch stopped part-way (Ctrl-C, a cancel) writes the rows of the slides it finished and
names the others as not analysed. The model is loaded once in this process before any slide
(`slide_model`): an unusable --model is one message, not a row each.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
from pathlib import Path

import pandas as pd

from core.data.scale import model_scale
from core.errors import ModelFolderError, UserInputError
from core.slide.export import SUMMARY, check_out_folder, write_outputs
from core.slide.predictor import SlidePredictor, TileSettings
from core.slide.reader import SlideError, open_slide, slide_files
from core.slide.tissue import TissueSettings

log = logging.getLogger(__name__)
BATCH_TABLE = "slides.csv"
HEATMAP = "heatmap.png"  # what core.slide.export writes into each slide's folder


@dataclasses.dataclass(frozen=True)
class SlideJob:
    """Everything a worker needs to analyse one slide (picklable: paths and settings only)."""

    path: str
    out_dir: str
    model: str
    tiles: TileSettings = TileSettings()
    tissue: TissueSettings = TissueSettings()
    mpp: float | None = None
    magnification: str | None = None


@functools.lru_cache(maxsize=2)
def _predictor(model: str):
    """The model, loaded once per process (a Dask worker keeps it for every slide it runs)."""
    from core.model.loading import load_predictor

    return load_predictor(model)


def slide_model(model: str):
    """The model, loaded and checked for slides before any slide is read: a missing, damaged or
    wrong-kind folder raises one ModelFolderError (the CLI's exit 2), not a traceback per slide."""
    predictor = _predictor(model)
    try:
        model_scale(predictor.card)  # what SlidePredictor tiles by
    except (KeyError, TypeError, ValueError) as error:
        raise ModelFolderError(f"{model}: the card's scale cannot tile slides ({error})") from None
    return predictor


def analyse_slide(job: SlideJob, progress=None, cancelled=None) -> dict:
    """One slide -> its output folder; returns the batch table's row (an unusable slide: its error)."""
    row = {"slide": Path(job.path).name, "out": job.out_dir}
    try:
        with open_slide(job.path, mpp=job.mpp, magnification=job.magnification) as reader:
            result = SlidePredictor(slide_model(job.model), job.tiles, job.tissue).predict(reader, progress, cancelled)
    except UserInputError as error:  # the slide's or (a worker that cannot see it) the model folder's
        return {**row, "error": str(error), "error_kind": INPUT}
    except Exception as error:  # noqa: BLE001 - one slide's failure is its row's error; the batch goes on
        log.exception("slide %s failed", job.path)
        return {**row, "error": f"'{row['slide']}' could not be analysed ({type(error).__name__}: {error}).",
                "error_kind": FAILURE}
    try:
        write_outputs(result, job.out_dir)
    except OSError as error:  # a file in the way, a full disk: this slide's row, not the batch's end
        return {**row, "error": f"'{row['slide']}' was analysed but could not be written to {job.out_dir} "
                                f"({error.strerror or error}).", "error_kind": FAILURE}
    call = result.call
    region = call["region"] or {}
    return {**row, "label": call["label"], "region_tiles": len(region.get("tiles", [])), "region_score": region.get("score"),
            "region_mean_p": region.get("mean_p_malignant"), "region_box": region.get("box_level0"),
            "rule": call["rule"], "tissue_tiles": call["tissue_tiles"], "malignant_share": call["malignant_share"],
            "mean_p_malignant": call["mean_p_malignant"], "model": result.model["name"],
            "model_limited": result.model["limited"], "model_demo": result.model["demo"], "error": "", "error_kind": ""}


def slide_jobs(folder, out_dir, model: str, **options) -> list[SlideJob]:
    out = Path(out_dir)
    # OUT inside (or the same as) the slide folder: an earlier run's OUT/<slide>/heatmap.png is no slide.
    earlier = {f.resolve() for f in out.glob(f"*/{HEATMAP}")}
    files = [f for f in slide_files(folder) if f.resolve() not in earlier]
    if not files:
        raise SlideError(f"'{folder}' has no slides or images (looked for {', '.join(('.svs', '.ndpi', '.tif', '.png', '...'))}).")
    return [SlideJob(str(f), str(out / name), model, **options) for f, name in zip(files, _out_names(folder, files))]


def _out_names(folder, files: list[Path]) -> list[str]:
    """One output folder per slide: its path in the folder without the extension, '/' as '__'. Where
    two would share one (x.svs and x.tif, a/b.svs and a__b.svs) each keeps its extension, then a
    number, so no slide's files replace another's."""
    stems = [f.relative_to(folder).with_suffix("").as_posix().replace("/", "__") for f in files]
    shared = collections.Counter(stems)
    names, taken = [], set()
    for file, stem in zip(files, stems):
        name = base = stem if shared[stem] == 1 else stem + file.suffix
        number = 1
        while name in taken:
            number += 1
            name = f"{base}-{number}"
        taken.add(name)
        names.append(name)
    return names


def run_serial(jobs: list[SlideJob], rows: dict | None = None) -> list[dict]:
    """The jobs one after the other; each finished row is also put in `rows` {job index: row}."""
    rows = {} if rows is None else rows
    for index, job in enumerate(jobs):
        rows[index] = analyse_slide(job)
    return [rows[i] for i in range(len(jobs))]


def run_dask(jobs: list[SlideJob], scheduler: str | None = None, workers: int = 2,
             rows: dict | None = None) -> list[dict]:
    """The jobs on a Dask cluster; results in the jobs' order (each also in `rows` as it finishes)."""
    from dask.distributed import Client, LocalCluster, as_completed

    rows = {} if rows is None else rows
    cluster = None
    if scheduler is None:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address=None)
    try:
        with Client(cluster if cluster is not None else scheduler) as client:
            futures = client.map(analyse_slide, jobs, pure=False)
            index = {future.key: i for i, future in enumerate(futures)}
            for future, row in as_completed(futures, with_results=True):
                rows[index[future.key]] = row
            return [rows[i] for i in range(len(jobs))]
    finally:
        if cluster is not None:
            cluster.close()


def run_batch(folder, out_dir, model: str, scheduler: str | None = None, workers: int = 2,
              serial: bool = False, **options) -> pd.DataFrame:
    """Every slide of `folder` -> OUT/<slide>/ and OUT/slides.csv (written last)."""
    jobs = slide_jobs(folder, out_dir, model, **options)
    slide_model(model)  # here, once: the serial run reuses it; each worker loads its own
    check_out_folder(out_dir)
    out = Path(out_dir)
    # An earlier run's table would describe slide folders this run rewrites: gone until this one's is written
    # (a batch stopped part-way writes the rows it finished, the other slides named as not analysed).
    (out / BATCH_TABLE).unlink(missing_ok=True)
    rows: dict = {}
    try:
        table = pd.DataFrame(run_serial(jobs, rows) if serial else run_dask(jobs, scheduler, workers, rows))
    except BaseException:  # Ctrl-C, a cancel, a lost cluster: the slides already done keep their rows
        if rows:
            not_done = {"error": STOPPED, "error_kind": STOPPED_KIND}
            _write_table(out, pd.DataFrame([rows.get(i) or {"slide": Path(job.path).name, "out": job.out_dir, **not_done}
                                            for i, job in enumerate(jobs)]))
        raise
    _write_table(out, table)
    return table


STOPPED = "not analysed: the batch was stopped before this slide finished"
# A row's error_kind: what its error was, so that `slide` exits as core.cli says (2 for the input, 1 for a
# failure of the tool or the disk) and a batch table can be filtered for the slides worth retrying.
INPUT, FAILURE, STOPPED_KIND = "input", "failure", "stopped"


def _write_table(out: Path, table: pd.DataFrame) -> None:
    out.mkdir(parents=True, exist_ok=True)
    partial = out / (BATCH_TABLE + ".partial")
    table.to_csv(partial, index=False)
    partial.replace(out / BATCH_TABLE)


def is_complete(slide_out: str | Path) -> bool:
    return (Path(slide_out) / SUMMARY).is_file()
