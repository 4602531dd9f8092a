"""One source of options: every command line flag, form choice and rule derives from the settings dataclasses."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from core.data.selection import MAGNIFICATION_CHOICES, NO_SPLIT, SplitSpec, kfold_problem
from core.data.splits import SPLIT_CHOICES
from core.errors import UserInputError
from core.options import choices_of


def _actions(parser, *path):
    for name in path:  # walk down the sub-commands
        parser = next(a for a in parser._actions if a.dest in ("command", "gan_command")).choices[name]
    return {a.dest: a for a in parser._actions}


def test_the_ablation_takes_its_classifier_flags_from_train_config():
    from core.cli import build_parser
    from core.gan.commands import ABLATION_OPTIONS
    from core.training.config import TrainConfig

    parser = build_parser()
    ablation, train = _actions(parser, "gan", "ablation"), _actions(parser, "train")
    for name in ABLATION_OPTIONS:
        assert ablation[name].choices == train[name].choices == choices_of(TrainConfig, name), name
        assert ablation[name].default is None  # unset: the runs keep TrainConfig's own defaults
        assert ablation[name].help.startswith(train[name].help.split(" (default")[0])
    args = parser.parse_args(["gan", "ablation", "--data", "d", "--gan", "g", "--out", "o", "--epochs", "3"])
    assert args.epochs == 3 and args.backbone is None
    with pytest.raises(SystemExit):
        parser.parse_args(["gan", "ablation", "--data", "d", "--gan", "g", "--out", "o", "--backbone", "alexnet"])


def test_split_and_magnification_choices_have_one_source():
    from core.gan.model import GanConfig
    from core.training.config import TrainConfig

    assert choices_of(TrainConfig, "split") == SPLIT_CHOICES
    assert choices_of(GanConfig, "split") == (*SPLIT_CHOICES, NO_SPLIT)
    assert choices_of(TrainConfig, "magnification") == choices_of(GanConfig, "magnification") == MAGNIFICATION_CHOICES


@pytest.mark.parametrize("folds, fold, split, ok", [(0, None, "patient-wise", True), (3, 2, "patient-wise", True),
                                                    (3, None, "patient-wise", True), (1, 0, "patient-wise", False),
                                                    (3, 3, "patient-wise", False), (3, 0, "image-level", False),
                                                    (0, 1, "patient-wise", False)])
def test_the_k_fold_rule_is_the_same_for_a_split_and_a_training_run(folds, fold, split, ok, tmp_path):
    from core.training.config import TrainConfig, validate

    assert (kfold_problem(folds, fold, split) is None) == ok
    config = TrainConfig(data=str(tmp_path), out=str(tmp_path / "run"), folds=folds, fold=fold, split=split)
    if ok:
        validate(config)
        SplitSpec(split, 0, "all", folds, fold or 0)
    else:
        with pytest.raises(UserInputError, match="fold"):
            validate(config)
        with pytest.raises(UserInputError, match="fold"):
            SplitSpec(split, 0, "all", folds, fold or 0)


def test_the_retrain_form_builds_the_run_the_cli_would_parse(tmp_path):
    import datetime

    from core.app import jobs, retrain
    from core.cli import build_parser
    from core.options import from_args
    from core.training.config import TrainConfig

    assert retrain.choices("backbone") == list(choices_of(TrainConfig, "backbone"))
    assert "synthetic" not in retrain.choices("balance") and "synthetic" in retrain.choices("balance", "gan/")
    assert retrain.choices("weights")[retrain.default_index("weights")] == TrainConfig.weights
    values = {"data": f" {tmp_path} ", "backbone": "small_cnn", "epochs": 3.0, "weights": "none", "split": "image-level"}
    config = retrain.training_config(values, tmp_path / "runs", name="my run/1")
    assert config.out == str(tmp_path / "runs" / "my_run_1") and config.data == str(tmp_path) and config.epochs == 3
    command = jobs.build_command(config)
    assert from_args(TrainConfig, build_parser().parse_args(command[3:])) == config
    assert retrain.shown_settings(config)["split"] == "image-level"
    named = retrain.training_config({"data": str(tmp_path)}, tmp_path, now=datetime.datetime(2026, 1, 2, 3, 4, 5))
    assert Path(named.out).name == f"20260102-030405-{TrainConfig.backbone}-{TrainConfig.mode}"
    with pytest.raises(UserInputError, match="data folder not found"):
        retrain.training_config({"data": str(tmp_path / "nowhere")}, tmp_path)
    with pytest.raises(TypeError, match="not TrainConfig fields"):
        retrain.training_config({"data": str(tmp_path), "colour": "red"}, tmp_path)


def test_a_home_folder_typed_into_the_retrain_form_is_the_folder_its_run_uses(tmp_path, monkeypatch):
    """The form's folder check expanded '~' (folder_problem) and the run's validation did not: '~/data'
    passed the check, then failed as 'data folder not found: ~/data'."""
    from core.app import retrain
    from core.data.breakhis import folder_problem

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "data").mkdir()
    (tmp_path / "reviewed").mkdir()
    assert "Data folder not found" not in (folder_problem("~/data") or "")
    config = retrain.training_config({"data": " ~/data ", "reviewed_dir": "~/reviewed"}, tmp_path / "runs", name="r")
    assert (config.data, config.reviewed_dir) == (str(tmp_path / "data"), str(tmp_path / "reviewed"))
    with pytest.raises(UserInputError, match=f"data folder not found: {tmp_path / 'nowhere'}"):
        retrain.training_config({"data": "~/nowhere"}, tmp_path / "runs", name="r")


def test_gan_images_are_checked_for_leaks_when_the_form_builds_the_run(tmp_path, synthetic_breakhis):
    """As the job checks them (core.data.synthetic.check_synthetic_folder on the run's data fingerprint), for
    both pipelines: the job was started and failed with advice the form's user could not follow."""
    from core.app import retrain
    from tests.test_app_retrain import gan_folder

    gan = str(gan_folder(tmp_path / "gan", synthetic_breakhis, seed=0))
    for pipeline in ("tfdata", "fields"):
        values = {"data": str(synthetic_breakhis), "pipeline": pipeline, "balance": "synthetic"}
        assert retrain.training_config(values, tmp_path / "runs", gan, name="ok").synthetic_dir == gan
        with pytest.raises(UserInputError, match=r"learned from split patient-wise \(seed 0.*uses patient-wise \(seed 1"):
            retrain.training_config({**values, "seed": 1}, tmp_path / "runs", gan, name="leaky")
    assert retrain.synthetic_problem(retrain.training_config({**values, "balance": "none", "seed": 1},
                                                             tmp_path / "runs", gan, name="none")) is None


def test_the_retrain_form_offers_only_the_balancing_its_pipeline_takes(tmp_path):
    """The CPU form (fields pipeline) offered class_weights, oversample and undersample, each then refused at
    submit ("the fields pipeline balances subtypes itself"); validate is what decides."""
    from core.app import retrain
    from core.training.config import TrainConfig, checked

    assert retrain.choices("balance", "gan/", pipeline="fields") == ["none", "synthetic"]
    assert retrain.choices("balance", None, pipeline="fields") == ["none"]
    assert retrain.choices("balance", "gan/", pipeline="tfdata") == list(choices_of(TrainConfig, "balance"))
    for strategy in set(choices_of(TrainConfig, "balance")) - set(retrain.accepted_balances("fields")):
        with pytest.raises(UserInputError, match="the fields pipeline balances subtypes itself"):
            checked(TrainConfig(data=str(tmp_path), out="", pipeline="fields", balance=strategy))


def test_the_retrain_form_offers_only_the_modes_its_pipeline_takes(tmp_path):
    """The fields form offered "Fast (frozen backbone, heads only)", then refused it at submit ("the fields
    pipeline does not take --mode fast"); validate decides, as for the balancing."""
    from core.app import retrain
    from core.training.config import TrainConfig, checked

    assert retrain.choices("mode", pipeline="fields") == ["finetune"]
    assert retrain.choices("mode", pipeline="tfdata") == list(choices_of(TrainConfig, "mode"))
    assert retrain.default_index("mode", pipeline="fields") == 0
    for mode in set(choices_of(TrainConfig, "mode")) - set(retrain.accepted("mode", "fields")):
        with pytest.raises(UserInputError, match="does not take --mode"):
            checked(TrainConfig(data=str(tmp_path), out="", pipeline="fields", mode=mode))


def test_a_refused_run_name_is_quoted_as_typed_not_as_its_folder(tmp_path):
    """QA #11: "../escape" was refused as "the run name '.._escape' starts with a dot", a name the user never
    typed; the refusal now quotes what was typed and says which characters became '_'."""
    from core.app import retrain

    with pytest.raises(UserInputError) as refused:
        retrain.training_config({"data": str(tmp_path)}, tmp_path / "runs", name=" ../escape")
    said = str(refused.value)
    assert "the run name '../escape' starts with a dot (its folder would be '.._escape': characters other than " \
           "letters, digits, '.', '-' and '_', such as '/', become '_')" in said, said
    with pytest.raises(UserInputError) as refused:
        retrain.training_config({"data": str(tmp_path)}, tmp_path / "runs", name=".best")
    assert "the run name '.best' starts with a dot, so" in str(refused.value)  # nothing replaced: no aside


@pytest.mark.parametrize("name", [".best", " .best", "..", "."])
def test_a_run_name_that_starts_with_a_dot_is_refused_in_words(name, tmp_path):
    """The model list skips hidden folders: such a run's model could never become the active model
    ('..' and '.' would not even be a folder in the runs folder)."""
    from core.app import retrain

    with pytest.raises(UserInputError, match="starts with a dot, so its model would be hidden from the model list"):
        retrain.training_config({"data": str(tmp_path)}, tmp_path / "runs", name=name)
    assert Path(retrain.training_config({"data": str(tmp_path)}, tmp_path / "runs", name="best.1").out).name == "best.1"


def test_a_missing_reviewed_images_folder_is_refused_before_anything_is_written(tmp_path):
    """It failed in the job as "Dataset folder not found" (read as the main data folder) and left
    progress.jsonl behind, which blocked the run name."""
    from core.app import retrain
    from core.training.config import TrainConfig, checked

    missing = str(tmp_path / "nonexistent")
    with pytest.raises(UserInputError, match=r"reviewed images to add to the training split \(--reviewed-dir\) not "
                                             r"found: .*nonexistent"):
        checked(TrainConfig(data=str(tmp_path), out=str(tmp_path / "run"), reviewed_dir=missing))
    with pytest.raises(UserInputError, match="reviewed images to add"):  # the Retrain form's check
        retrain.training_config({"data": str(tmp_path), "reviewed_dir": missing}, tmp_path / "runs", name="r")
    assert not (tmp_path / "run").exists()
    checked(TrainConfig(data=str(tmp_path), out=str(tmp_path / "run"), reviewed_dir=str(tmp_path)))


@pytest.mark.parametrize("setting, value, said", [
    ("dropout", 1.5, "--dropout must be in [0, 1), not 1.5"),  # Keras raised mid-run, after split.csv
    ("crop_min", 1.5, "--crop-min must be in (0, 1], not 1.5"),
    ("crop_min", 0.0, "--crop-min must be in (0, 1], not 0"),
    ("label_smoothing", 2.0, "--label-smoothing must be in [0, 1), not 2"),
    ("weight_decay", -0.1, "--weight-decay must be >= 0, not -0.1"),
    ("learning_rate", -1.0, "--learning-rate must be > 0, not -1"),  # it trained, losses in the millions
    ("patience", -1, "--patience must be >= 0, not -1")])
def test_out_of_range_settings_are_refused_before_anything_is_written(tmp_path, setting, value, said):
    from core.training.config import TrainConfig, checked

    with pytest.raises(UserInputError, match=re.escape(said)):
        checked(TrainConfig(data=str(tmp_path), out=str(tmp_path / "run"), **{setting: value}))
    assert not (tmp_path / "run").exists()


def test_a_missing_gan_images_folder_is_refused_before_anything_is_written(tmp_path):
    """--balance synthetic with a --synthetic-dir that does not exist failed inside the run, after its
    progress stream was written."""
    from core.training.config import TrainConfig, checked

    for pipeline in ("tfdata", "fields"):
        with pytest.raises(UserInputError, match=r"GAN images folder \(--synthetic-dir\) not found: .*nowhere"):
            checked(TrainConfig(data=str(tmp_path), out=str(tmp_path / "run"), pipeline=pipeline, balance="synthetic",
                                synthetic_dir=str(tmp_path / "nowhere")))
    assert not (tmp_path / "run").exists()
    checked(TrainConfig(data=str(tmp_path), out=str(tmp_path / "run"), balance="synthetic", synthetic_dir=str(tmp_path)))


@pytest.mark.parametrize("quality", ["-5", "0", "96", "150", "high"])
def test_pack_fields_refuses_a_jpeg_quality_outside_1_to_95_as_a_usage_error(tmp_path, capsys, quality):
    """-5, 0 and 150 were accepted (type=int) and handed to Pillow."""
    from core.cli import build_parser, main

    assert main(["pack-fields", "--data", str(tmp_path), "--out", str(tmp_path / "pack"), "--quality", quality]) == 2
    assert "--quality" in capsys.readouterr().err and not (tmp_path / "pack").exists()
    assert build_parser().parse_args(["pack-fields", "--data", "d", "--out", "o", "--quality", "95"]).quality == 95


def test_every_off_switch_says_what_turning_it_off_does():
    """--no-evaluate's help read "calibrate ... and evaluate ... after training": the "on" help."""
    import dataclasses

    from core.cli import build_parser
    from core.gan.model import GanConfig
    from core.training.config import TrainConfig

    parser = build_parser()
    for path, cls in ((("train",), TrainConfig), (("compare",), TrainConfig), (("tune",), TrainConfig),
                      (("gan", "train"), GanConfig)):
        actions = _actions(parser, *path)
        switches = [f for f in dataclasses.fields(cls) if f.default is True and f.metadata.get("cli")]
        assert switches, path
        for field in switches:
            action = actions[field.name]
            assert action.option_strings == [f"--no-{field.name.replace('_', '-')}"] and action.default is True
            assert action.help != field.metadata["help"]
            assert action.help == field.metadata["off_help"] if field.metadata["off_help"] else \
                action.help.startswith("turn off (on by default): "), (path, field.name, action.help)
    assert _actions(parser, "train")["evaluate"].help.startswith("save the model uncalibrated and unmeasured")


def test_the_tfdata_pipeline_refuses_the_fields_pipelines_own_options_it_would_ignore(tmp_path, capsys):
    """`train --band-limit --refit-subtypes --physical-crops --crop-min 0.3` (tf.data) ran to exit 0,
    config.json recorded them and the model had none of them."""
    from core.cli import main

    out = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path), "--out", str(out), "--band-limit", "--refit-subtypes",
                 "--physical-crops", "--crop-min", "0.3", "--no-final-model"]) == 2
    assert ("the tf.data pipeline does not take --crop-min, --physical-crops, --band-limit, --refit-subtypes, "
            "--no-final-model") in capsys.readouterr().err and not out.exists()
    from core.app import retrain
    from core.training.config import FIELDS_ONLY, TrainConfig, checked
    from core.training.recipes import FIELD, launch_defaults

    for name, value in (("label_smoothing", 0.2), ("weight_decay", 0.0), ("warmup_steps", 5)):
        with pytest.raises(UserInputError, match="the tf.data pipeline does not take --"):
            checked(TrainConfig(data=str(tmp_path), out=str(out), **{name: value}))
    checked(TrainConfig(data=str(tmp_path), out=str(out), crop_min=TrainConfig.crop_min))  # defaults pass
    checked(TrainConfig(data=str(tmp_path), out=str(out), **FIELD))  # and the fields pipeline takes them
    # A form that starts from the field recipe and is switched to tf.data does not inherit the recipe's hidden
    # settings (it inherited dropout 0.3 and learning rate 2e-3, shown nowhere): tf.data's own, as on the CLI.
    shown = {"data": str(tmp_path), "pipeline": "tfdata", "backbone": "small_cnn", "epochs": 2}
    switched = retrain.training_config(shown, tmp_path / "runs", name="t", defaults=launch_defaults(False))
    checked(switched)
    assert all(getattr(switched, n) == getattr(TrainConfig, n) for n in (*FIELDS_ONLY, "dropout", "learning_rate"))
    assert (switched.dropout, switched.learning_rate) == (0.5, None) != (FIELD["dropout"], FIELD["learning_rate"])
    assert (switched.backbone, switched.epochs) == ("small_cnn", 2)  # what the form shows is what it runs
    fields = retrain.training_config({**shown, "pipeline": "fields"}, tmp_path / "runs", name="f",
                                     defaults=launch_defaults(False))
    assert (fields.dropout, fields.learning_rate, fields.band_limit) == (0.3, 2e-3, True)  # the recipe's own


def test_the_fields_pipeline_refuses_no_evaluate_and_a_missing_weights_file_is_refused_early(tmp_path):
    """The fields pipeline always measured itself and its baselines, whatever --no-evaluate and
    --no-baselines said; a weights file that does not exist failed inside the run, after split.csv."""
    from core.training.config import TrainConfig, checked

    for switch in ("evaluate", "baselines"):
        with pytest.raises(UserInputError, match=f"does not take --no-{switch}"):
            checked(TrainConfig(data=str(tmp_path), out=str(tmp_path / "run"), pipeline="fields", **{switch: False}))
    with pytest.raises(UserInputError, match=r"--weights: neither imagenet nor none nor a file: .*missing\.h5"):
        checked(TrainConfig(data=str(tmp_path), out=str(tmp_path / "run"), weights=str(tmp_path / "missing.h5")))
    assert not (tmp_path / "run").exists()


def test_every_help_names_its_default_once():
    """gan train --name's help read "(default: the --out folder name) (default: gan)"."""
    from core.cli import build_parser

    parser = build_parser()
    for path in (("train",), ("compare",), ("tune",), ("gan", "train"), ("gan", "sample")):
        for action in _actions(parser, *path).values():
            assert (action.help or "").count("(default:") <= 1, (path, action.dest, action.help)


def test_every_option_and_argument_of_every_command_says_what_it_is():
    """gan sample --model/--seed/--out, tune --search, slide PATH, users add NAME --role ... had no help."""
    import argparse

    from core.cli import build_parser

    def parsers(parser, path=()):
        yield path, parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from parsers(sub, (*path, name))

    missing = [(" ".join(path), action.dest) for path, parser in parsers(build_parser()) for action in parser._actions
               if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)) and not action.help]
    assert not missing


def test_help_and_the_light_commands_do_not_import_keras_but_a_training_command_has_all_its_options():
    """`python -m core --help` (and `users`, `db`, `index`, `predict` before their work) waited ~4.5 s
    for Keras: the training settings' choices imported it to build every command's options."""
    import subprocess
    import sys

    probe = ("import sys; from core.cli import main; code = main(sys.argv[1:]); "
             "print('KERAS', 'keras' in sys.modules, code)")
    for argv in (["--help"], ["users", "--help"], ["db", "--help"], ["gan", "--help"]):
        done = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, timeout=120)
        last = done.stdout.strip().splitlines()[-1]
        expected = "KERAS True 0" if argv[0] == "gan" else "KERAS False 0"
        assert last == expected, (argv, done.stdout[-500:], done.stderr[-500:])
    from core.cli import _command_word, build_parser

    assert _command_word(["--help"]) == "" and _command_word(["train", "--epochs", "3"]) == "train"
    light = build_parser("predict")
    full = build_parser()
    assert light.parse_args(["predict", "x.png"]).command == "predict"
    assert full.parse_args(["train", "--data", "d", "--out", "o", "--epochs", "3"]).epochs == 3
    assert build_parser("train").parse_args(["train", "--data", "d", "--out", "o", "--epochs", "3"]).epochs == 3


@pytest.mark.parametrize("command", ["slide", "slides"])
def test_a_slide_magnification_is_read_as_the_scale_reads_it_or_refused_in_words(tmp_path, capsys, command):
    """`slide --magnification abcX` ran and failed mid-analysis with "ValueError: invalid literal for int() with
    base 10: 'ABC'"; `--magnification 20` was ignored and the slide then said it "states no resolution"."""
    from core.cli import build_parser, main

    for given, read in (("200X", "200X"), ("200x", "200X"), ("20", "20X"), (" 40 X ", "40X")):
        assert build_parser().parse_args([command, "s", "--out", "o", f"--magnification={given}"]).magnification == read
    for bad in ("abcX", "0X", "-40X", "1.5X", "X", ""):
        assert main([command, str(tmp_path), "--out", str(tmp_path / "out"), f"--magnification={bad}"]) == 2
        said = capsys.readouterr().err
        assert "argument --magnification: a magnification is a whole number of times such as 200X" in said, said
        assert "ValueError" not in said and not (tmp_path / "out").exists()
