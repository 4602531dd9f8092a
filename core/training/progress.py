"""The training progress stream: one JSON object per line, written by training, read by the app.

A line-per-event file is the simplest thing a separate process (the Streamlit page following a
run) can poll safely: appends are atomic enough for one writer, and a reader that finds a
half-written last line just skips it and sees it complete on the next poll. Keras is imported
only by `keras_callback`, so the app can read progress without loading TensorFlow.

Events (fields as they apply): start, epoch_begin, step, epoch_end, end, error, each with
"event" and "time" (unix seconds); see CONTRACT.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

from core.data.labels import sentence
from core.errors import Cancelled
from core.jsonfile import plain
from core.paths import set_aside_models

EVENTS = ("start", "epoch_begin", "step", "epoch_end", "end", "error")
FINAL_STATUSES = ("completed", "failed", "cancelled")


class ProgressWriter:
    """Appends events to `path` (one JSON line each) and optionally echoes them to stdout."""

    def __init__(self, path: str | os.PathLike, echo_stdout: bool = True):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.echo_stdout = echo_stdout
        self._lock = threading.RLock()  # re-entrant: a signal handler may emit mid-emit

    def emit(self, event: str, **fields) -> dict:
        """Write one event now (flushed, so a reader polling the file sees it at once)."""
        if event not in EVENTS:
            raise ValueError(f"Unknown progress event {event!r}; expected one of {EVENTS}")
        record = {"event": event, "time": round(time.time(), 3), **plain(fields, unknown=str)}
        line = json.dumps(record, allow_nan=False) + "\n"
        with self._lock:
            with open(self.path, "a", encoding="utf-8") as stream:
                stream.write(line)
                stream.flush()
            if self.echo_stdout:
                sys.stdout.write(line)
                sys.stdout.flush()
        return record


def read_progress(path: str | os.PathLike) -> list[dict]:
    """All complete events in the file; [] if it does not exist yet.

    Lines that are not JSON objects (a partially written last line, or stray output) are skipped.
    """
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    return _events(text)


def final_status(path: str | os.PathLike) -> str | None:
    """The status a progress stream ended with ("completed", "failed", "cancelled"); None while it has no end
    (still running, or its process was killed). Reads the file's tail only: cheap enough for every model list.
    A missing or unreadable file raises OSError."""
    with open(path, "rb") as stream:
        stream.seek(0, os.SEEK_END)
        stream.seek(max(0, stream.tell() - 64_000))
        events = _events(stream.read().decode("utf-8", errors="replace"))
    return events[-1].get("status") if events and events[-1].get("event") == "end" else None


def _events(text: str) -> list[dict]:
    events = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "event" in record:
            events.append(record)
    return events


def latest_state(events: list[dict]) -> dict:
    """Summary of a run from its events, for a progress bar, a status line and learning curves.

    status: "not started" (no events), "running", or the final status of the "end" event
    ("completed", "failed", "cancelled"). history has one metrics dict per finished epoch, each with
    the phase it belongs to. A run of several trainings (a cross-validation's folds, then its final
    model) states every epoch of them at its start (total_epochs) and each training's own (epochs) at
    its epochs, which restart at 1: the phase (the epochs' message, "fold 2", "final model") says
    which, and the progress bar counts over the whole run.
    """
    state = {
        "status": "not started", "epoch": 0, "epochs": None, "step": 0, "steps": None,
        "metrics": {}, "history": [], "message": None, "error": None, "model_dir": None,
        "started": None, "updated": None, "elapsed": None, "fraction": 0.0,
        "total_epochs": None, "phase": None, "phase_epochs_done": 0,
    }
    for event in events:
        kind = event.get("event")
        state["updated"] = event.get("time", state["updated"])
        for key in ("epochs", "steps", "message", "model_dir"):
            if event.get(key) is not None:
                state[key] = event[key]
        if kind == "start":
            state.update(status="running", started=event.get("time"), total_epochs=event.get("epochs"))
        elif kind == "epoch_begin":
            phase = event.get("message") or state["phase"]
            if phase != state["phase"]:
                state.update(phase=phase, phase_epochs_done=0)
            state.update(epoch=event.get("epoch", state["epoch"]), step=0)
        elif kind == "step":
            state["step"] = event.get("step", state["step"])
            state["metrics"] = event.get("metrics") or state["metrics"]
        elif kind == "epoch_end":
            metrics = event.get("metrics") or {}
            state.update(epoch=event.get("epoch", state["epoch"]), metrics=metrics)
            state["phase_epochs_done"] += 1
            phase = {"phase": state["phase"]} if state["phase"] else {}
            state["history"].append({"epoch": event.get("epoch"), **metrics, **phase})
        elif kind == "error":
            state["error"] = event.get("message")
        elif kind == "end":
            state["status"] = event.get("status", "completed")
            state["metrics"] = event.get("metrics") or state["metrics"]
    if state["started"] is not None and state["updated"] is not None:
        state["elapsed"] = round(state["updated"] - state["started"], 3)
    state["fraction"] = _fraction_done(state)
    return state


def _fraction_done(state: dict) -> float:
    """0..1 for a progress bar: finished epochs (of every phase) plus the part of the current one,
    over the run's stated total (a single training's: its epochs)."""
    if state["status"] == "completed":
        return 1.0
    epochs = max(state["total_epochs"] or 0, state["epochs"] or 0)
    if epochs <= 0:
        return 0.0
    done = len(state["history"])
    if state["steps"] and state["epoch"] > state["phase_epochs_done"]:
        done += min(state["step"] / state["steps"], 1.0)
    return max(0.0, min(done / epochs, 1.0))


def phase_history(history: list[dict]) -> tuple[str | None, list[dict]]:
    """(the last phase, its epochs' metrics without the phase): the learning curves of the training
    running now, or of the last one (a cross-validation's final model), whose epochs restart at 1."""
    if not history:
        return None, []
    phase = history[-1].get("phase")
    return phase, [{k: v for k, v in row.items() if k != "phase"} for row in history if row.get("phase") == phase]


def metric_floats(logs) -> dict:
    """Keras logs (tensors, numpy scalars) -> {name: float}; non-numeric entries dropped."""
    out = {}
    for key, value in (logs or {}).items():
        try:
            out[key] = float(value.numpy() if hasattr(value, "numpy") else value)
        except (TypeError, ValueError):
            continue
    return out


def keras_callback(writer: ProgressWriter, epochs: int, steps: int, phase: str, min_interval: float = 1.0):
    """A Keras callback writing epoch_begin, step (at most every min_interval s) and epoch_end."""
    import keras

    class Progress(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.last = 0.0

        def on_epoch_begin(self, epoch, logs=None):
            writer.emit("epoch_begin", epoch=epoch + 1, epochs=epochs, steps=steps, message=phase)

        def _step(self, batch, logs):
            if time.time() - self.last >= min_interval:
                self.last = time.time()
                writer.emit("step", step=batch + 1, steps=steps, metrics=metric_floats(logs), message=phase)

        def on_train_batch_end(self, batch, logs=None):
            raise_if_cancelled()
            self._step(batch, logs)

        def on_predict_batch_end(self, batch, logs=None):
            raise_if_cancelled()
            self._step(batch, {})  # predict logs hold the outputs, not metrics

        def on_epoch_end(self, epoch, logs=None):
            metrics = metric_floats(logs)
            if "learning_rate" not in metrics:  # ReduceLROnPlateau usually adds it
                metrics["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))  # any backend
            writer.emit("epoch_end", epoch=epoch + 1, epochs=epochs, steps=steps, metrics=metrics)

    return Progress()


# Set by SIGTERM, cleared by final_events. The handler also raises at once, but where the signal
# lands inside Keras' own `except:` (keras.src.utils.python_utils.pythonify_logs, a bare except
# around the device-to-host copy, which under JAX is where the main thread waits for nearly every
# step) the exception is swallowed; the progress callback then raises it at the next batch end, so a
# cancel stops a JAX run within one step too (measured: without this it trained on until SIGKILL).
_CANCEL_REQUESTED = threading.Event()


def _raise_cancelled(signum, frame):
    _CANCEL_REQUESTED.set()
    raise Cancelled("SIGTERM")


def raise_if_cancelled() -> None:
    """Raise Cancelled if a SIGTERM arrived since the run began (see _CANCEL_REQUESTED)."""
    if _CANCEL_REQUESTED.is_set():
        raise Cancelled("SIGTERM")


def _set_aside(run_dir) -> str | None:
    """Move aside the models a run that did not complete had saved (core.paths.set_aside_models); what its end
    says of them, None when it saved none."""
    if run_dir is None:
        return None
    try:
        moved = set_aside_models(run_dir)
    except OSError as error:
        return (f"the models it had saved in {run_dir} could not all be moved aside ({type(error).__name__}: "
                f"{error}): they are not calibrated or evaluated, do not use them.")
    if len(moved) == 1:
        return f"the model it had saved was moved aside to {moved[0]}, where the app does not offer it."
    if moved:
        return (f"the {len(moved)} models it had saved were moved aside ({', '.join(map(str, moved))}), where the "
                "app does not offer them.")
    return None


@contextlib.contextmanager
def final_events(writer: ProgressWriter, run_dir: str | os.PathLike | None = None):
    """A run's last event whatever happens (every training command: core.training.fit.train, the
    fields runs): SIGTERM (the Retrain page's cancel) raises Cancelled and ends the stream
    "cancelled", an error "failed"; so the page never waits on a dead run. Given the `run_dir`, a model the
    run had saved before it stopped (a cancel during calibration or evaluation) is moved aside first, and the
    end says where: only a completed run has a model/."""
    previous = None
    _CANCEL_REQUESTED.clear()
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _raise_cancelled)
    try:
        yield
    except (Cancelled, KeyboardInterrupt) as stop:
        if previous is not None:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the event short
        reason = "SIGTERM" if isinstance(stop, Cancelled) else "interrupted"
        aside = _set_aside(run_dir)
        writer.emit("end", status="cancelled", message=f"Training was cancelled ({reason}) before the run was "
                                                       f"complete; {aside}" if aside else
                    f"Training was cancelled ({reason}); no model was saved.")
        raise
    except BaseException as error:
        if previous is not None:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # nor a cancel pressed as it failed
        failure = f"{type(error).__name__}: {error}"
        writer.emit("error", message=failure)
        aside = _set_aside(run_dir)
        if aside:
            failure += f"{' ' if failure.endswith('.') else '. '}{sentence(aside)}"
        writer.emit("end", status="failed", message=failure)
        raise
    finally:
        _CANCEL_REQUESTED.clear()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
