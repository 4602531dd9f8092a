"""A run that did not complete (cancelled, failed, killed, or still running) offers no model: a model it had saved
is moved aside (a hidden .unfinished-* folder, never listed) and its end says so; the model list leaves out the
models of runs that are running, were killed, or were cancelled (qa-retrain #1)."""

import json

import pytest

from core.errors import Cancelled
from core.training.progress import ProgressWriter, final_events, read_progress
from tests.train_helpers import TINY


def saved_model(folder):
    folder.mkdir(parents=True)
    (folder / "card.json").write_text(json.dumps({"name": folder.parent.name}))
    return folder


def end_of(run) -> dict:
    return read_progress(run / "progress.jsonl")[-1]


def test_the_model_list_and_the_set_aside_name_the_same_card_file():
    from core.model.folders import CARD_FILE
    from core.paths import MODEL_CARD

    assert MODEL_CARD == CARD_FILE


def test_a_tfdata_run_cancelled_after_its_model_was_saved_moves_it_aside_and_says_so(synthetic_breakhis, tmp_path,
                                                                                      monkeypatch):
    """The SIGTERM came during calibration (as the QA's cancel once model/card.json existed): the stream said
    "no model was saved" while model/ was there, uncalibrated and unevaluated, offered in the sidebar."""
    import core.training.calibrate_run
    from core.app import registry
    from core.training.fit import train

    def cancelled(*args, **kwargs):
        raise Cancelled("SIGTERM")

    monkeypatch.setattr(core.training.calibrate_run, "calibrate_run", cancelled)
    monkeypatch.setenv("BREAKHIS_MODEL_DIRS", str(tmp_path))
    monkeypatch.setenv("BREAKHIS_DEFAULT_MODEL", str(tmp_path / "none"))
    run = tmp_path / "late"
    with pytest.raises(Cancelled):
        train(dict(data=str(synthetic_breakhis), out=str(run), echo_stdout=False, **{**TINY, "epochs": 1}))
    assert not (run / "model").exists() and (run / ".unfinished-model" / "card.json").is_file()
    end = end_of(run)
    assert end["status"] == "cancelled" and "no model was saved" not in end["message"]
    assert end["message"] == (f"Training was cancelled (SIGTERM) before the run was complete; the model it had saved "
                              f"was moved aside to {run / '.unfinished-model'}, where the app does not offer it.")
    assert registry.available_models() == []


def test_a_run_ended_before_saving_a_model_says_none_was_saved(tmp_path):
    writer = ProgressWriter(tmp_path / "progress.jsonl", echo_stdout=False)
    with pytest.raises(Cancelled), final_events(writer, tmp_path):
        raise Cancelled("SIGTERM")
    assert end_of(tmp_path)["message"] == "Training was cancelled (SIGTERM); no model was saved."
    assert sorted(p.name for p in tmp_path.iterdir()) == ["progress.jsonl"]


def test_a_failed_run_moves_every_model_it_saved_aside_and_the_failure_says_where(tmp_path):
    """A fields cross-validation saves a model per fold before its final one: all of them are unfinished."""
    run = tmp_path / "cv"
    saved_model(run / "fold-0" / "model")
    saved_model(run / "model")
    saved_model(run / ".unfinished-model")  # an earlier run's, kept: the new one gets another name
    writer = ProgressWriter(run / "progress.jsonl", echo_stdout=False)
    with pytest.raises(MemoryError), final_events(writer, run):
        raise MemoryError("out of memory")
    assert not (run / "model").exists() and not (run / "fold-0" / "model").exists()
    assert (run / "fold-0" / ".unfinished-model" / "card.json").is_file()
    assert (run / ".unfinished-model-2" / "card.json").is_file() and (run / ".unfinished-model").is_dir()
    end = end_of(run)
    assert end["status"] == "failed" and end["message"] == (
        f"MemoryError: out of memory. The 2 models it had saved were moved aside ({run / 'fold-0' / '.unfinished-model'}"
        f", {run / '.unfinished-model-2'}), where the app does not offer them.")


@pytest.mark.parametrize("entry", ["_train_fields", "_cross_validate_fields"])
def test_the_fields_runs_move_an_unfinished_model_aside_too(tmp_path, monkeypatch, entry):
    """A cancel between a fields run's save and its end event (its model, or a cross-validation's fold models and
    first seed, were saved) ended "no model was saved" with the models in place."""
    from core.training import field_run

    def saves_then_cancelled(config, out, writer, *rest):
        saved_model(out / "model")
        raise Cancelled("SIGTERM")

    monkeypatch.setattr(field_run, entry, saves_then_cancelled)
    data = tmp_path / "data"
    data.mkdir()
    run = tmp_path / "fields"
    config = dict(pipeline="fields", data=str(data), out=str(run), echo_stdout=False, **{**TINY, "epochs": 1})
    with pytest.raises(Cancelled):
        if entry == "_train_fields":
            field_run.train_fields(config)
        else:
            field_run.cross_validate_fields({**config, "folds": 2})
    assert not (run / "model").exists() and (run / ".unfinished-model" / "card.json").is_file()
    assert "moved aside" in end_of(run)["message"]


@pytest.mark.parametrize("events, offered", [
    ([], True),  # no stream: a model folder copied in, a run of an older version
    ([{"event": "start"}], False),  # running (calibrating, evaluating), or killed: not finished
    ([{"event": "start"}, {"event": "end", "status": "cancelled"}], False),
    ([{"event": "start"}, {"event": "end", "status": "completed"}], True),
    ([{"event": "start"}, {"event": "end", "status": "failed"}], True),  # put back in model/ to be finished by hand
])
def test_the_model_list_leaves_out_the_models_of_runs_that_did_not_end_or_were_cancelled(tmp_path, monkeypatch,
                                                                                          events, offered):
    from core.app import registry

    run = tmp_path / "runs" / "r"
    model = saved_model(run / "model")
    member = saved_model(run / "member-1" / "model")  # a seed member: its run is the folder above
    if events:
        (run / "progress.jsonl").write_text("".join(json.dumps({"time": 1.0, **e}) + "\n" for e in events))
    monkeypatch.setenv("BREAKHIS_MODEL_DIRS", str(tmp_path / "runs"))
    monkeypatch.setenv("BREAKHIS_DEFAULT_MODEL", str(tmp_path / "none"))
    listed = registry.available_models()
    assert listed == ([str(member.resolve()), str(model.resolve())] if offered else [])
