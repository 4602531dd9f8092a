"""The conditional GAN: shapes, learning, resume, sampling names, folders and fill."""

import json

import numpy as np
import pytest

from core.cli import main as cli
from core.data.breakhis import index_folder, parse_name, parse_synthetic_name
from core.data.labels import SUBTYPES
from core.data.synthetic import PROVENANCE_FILE, read_provenance
from core.errors import UserInputError
from core.gan.model import GanConfig, build_discriminator, build_generator
from core.gan.patches import PatchSampler
from core.gan.sampling import fill_folder_from_generator, generate, noise_map, write_samples
from core.gan.train import build_gan, train_gan, training_fields, training_images
from core.model.folders import GENERATOR, ModelFolderError, load_model_folder
from tests.gan_helpers import compile_gan_eagerly

# Synthetic fields are 96x64 "fields" (core/testing/synthetic.py): at 4 um/px the 200X and 400X ones
# are 88x58 and 44x29 px (40X and 100X would be enlarged and are left out, as the real 40X are).
TINY = dict(image_size=16, width=32, d_width=8, latent_dim=8, batch_size=16, mpp=4.0, holdout=0.0,
            sample_every=1000, checkpoint_every=1000, log_every=1)
PAIR = ("adenosis", "ductal_carcinoma")  # benign pink vs malignant purple in the synthetic set


def _events(run_dir):
    return [json.loads(line) for line in (run_dir / "progress.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def tiny_generator(synthetic_breakhis, tmp_path_factory):
    """A few steps of training: enough for a real generator folder."""
    out = tmp_path_factory.mktemp("gan") / "gan-tiny"
    config = GanConfig(name="gan-tiny", subtypes=PAIR, steps=4, **TINY)
    with pytest.MonkeyPatch.context() as patch:
        compile_gan_eagerly(patch)  # a folder for the tests of sampling and folders, not of learning
        return train_gan(config, synthetic_breakhis, out)


def test_generator_is_fully_convolutional_and_conditional():
    config = GanConfig(**TINY)
    generator = build_generator(config)
    noise = noise_map(0, 3, 16, 16, generator.inputs[0].shape[-1])
    raw = {s: np.asarray(generator([noise, np.full((3, 1), i, np.int32)])) for i, s in enumerate(SUBTYPES)}
    for subtype, images in raw.items():
        assert images.shape == (3, 16, 16, 3)
        assert images.min() >= -1.0 and images.max() <= 1.0
    # The subtype is an input that matters: same noise, different subtype, different image.
    assert np.abs(raw["adenosis"] - raw["ductal_carcinoma"]).mean() > 1e-4
    # Any canvas: a field-size image from the same network, cropped from whole noise cells.
    field = generate(generator, "adenosis", 2, seed=3, size=(100, 60))
    assert field.shape == (2, 60, 100, 3) and field.dtype == np.uint8
    assert np.array_equal(generate(generator, "adenosis", 5, seed=3, size=(100, 60))[:2], field)  # per seed
    discriminator = build_discriminator(config)
    assert discriminator.output_shape == (None, 1)
    assert np.asarray(discriminator([np.zeros((2, 40, 24, 3)), np.zeros((2, 1), np.int32)])).shape == (2, 1)


@pytest.mark.parametrize("fine_noise", [False, True])
def test_a_large_canvas_is_its_patches_without_seams(fine_noise):
    """Fully convolutional with reflect padding and batch statistics at inference: the middle of a
    canvas drawn from a crop of a noise map equals the same pixels of the canvas from the whole map,
    so a field-size image is seamless patches, and no frame is painted inside it. With fine noise
    too: it is read from the noise map, cell by cell, not drawn afresh."""
    config = GanConfig(**TINY, fine_noise=fine_noise)
    generator = build_generator(config)
    injections = [layer for layer in generator.layers if type(layer).__name__ == "InjectNoise"]
    assert len(injections) == (8 if fine_noise else 0)  # after each of the 2 convolutions of 4 stages
    for layer in injections:  # as if trained: their weights start at zero
        layer.weight.assign(np.full(layer.weight.shape, 0.5, np.float32))
    channels = generator.inputs[0].shape[-1]
    assert channels == config.latent_dim + (2 * (1 + 4 + 16 + 64) if fine_noise else 0)
    noise = noise_map(1, 1, 144, 144, channels)  # 18 x 18 cells
    whole = np.asarray(generator([noise, np.zeros((1, 1), np.int32)]))
    part = np.asarray(generator([noise[:, 2:16, 3:17], np.zeros((1, 1), np.int32)]))  # 112 x 112 px
    border = 48  # the receptive field: about 5.6 cells (two 3x3 convolutions and a resize per stage)
    inside = part[:, border:-border, border:-border]
    same = whole[:, 16 + border:128 - border, 24 + border:136 - border]
    assert np.abs(inside - same).max() < 1e-4
    assert np.abs(part - whole[:, 16:128, 24:136]).max() > 1e-3  # the border does differ: the test can fail
    if fine_noise:  # the fine planes matter, and only where they were changed (locally)
        changed = noise.copy()
        changed[:, 9, 9, config.latent_dim:] = 0.0
        other = np.asarray(generator([changed, np.zeros((1, 1), np.int32)]))
        moved = np.abs(other - whole).max(axis=(0, 3))
        assert moved[72:80, 72:80].max() > 1e-3 and moved[:24].max() < 1e-6


def test_a_generator_with_fine_noise_trains_saves_and_samples(synthetic_breakhis, tmp_path):
    config = GanConfig(name="fine", subtypes=("adenosis",), steps=2, fine_noise=True, **TINY)
    generator, card = load_model_folder(train_gan(config, synthetic_breakhis, tmp_path / "run"), kind=GENERATOR)
    assert card["config"]["fine_noise"] is True  # loaded in Keras safe mode: its layers are registered
    field = generate(generator, "adenosis", 2, seed=3, size=(100, 60))
    assert field.shape == (2, 60, 100, 3) and np.array_equal(generate(generator, "adenosis", 2, seed=3,
                                                                      size=(100, 60)), field)


def test_config_rejects_bad_values():
    with pytest.raises(UserInputError, match="image_size"):
        GanConfig(image_size=100)
    with pytest.raises(UserInputError, match="subtypes"):
        GanConfig(subtypes=("cancer",))
    with pytest.raises(UserInputError, match="holdout"):
        GanConfig(holdout=0.6)
    with pytest.raises(UserInputError, match="loss"):
        GanConfig(loss="wasserstein")
    for bad in (dict(lr_g=-1.0), dict(lr_d=0.0)):  # a negative rate trained without a word
        with pytest.raises(UserInputError, match="lr_g and lr_d must be > 0"):
            GanConfig(**bad)
    for bad in (dict(r1=-1.0), dict(reconstruction=-0.5)):
        with pytest.raises(UserInputError, match="must be >= 0"):
            GanConfig(**bad)


def _mean_colour(images):
    return np.asarray(images, np.float64).reshape(-1, 3).mean(0)


def _real_patches(data, config, subtype, n=128):
    train, _, _ = training_fields(data, config)
    return PatchSampler(train, config.image_size, [subtype]).patches(subtype, n, 0)[0]


LEARN = dict(name="learn", subtypes=PAIR, steps=150, lr_g=1e-3, lr_d=1e-3, **TINY)


def _assert_learned(data, run_dir):
    """Proof of learning: per-subtype mean-colour gap to the real patches shrinks, and by subtype;
    the discriminator's loss (the epoch's running mean) falls below its chance value (hinge: 2).
    The generator is loaded here, under TensorFlow, whichever backend trained it."""
    config = GanConfig(**LEARN)
    real = {s: _mean_colour(_real_patches(data, config, s)) for s in PAIR}
    untrained = build_generator(config)
    trained, card = load_model_folder(run_dir / "model", kind=GENERATOR)
    for subtype, other in (PAIR, PAIR[::-1]):
        before = np.linalg.norm(_mean_colour(generate(untrained, subtype, 64, size=16)) - real[subtype])
        after_colour = _mean_colour(generate(trained, subtype, 64, size=16))
        after = np.linalg.norm(after_colour - real[subtype])
        assert after < 0.5 * before, (subtype, before, after)
        assert after < np.linalg.norm(after_colour - real[other]), f"{subtype} looks like {other}"
    losses = [e["metrics"]["d_loss"] for e in _events(run_dir) if e["event"] == "step"]
    assert losses[0] > 1.95 and losses[-1] < 1.85, (losses[0], losses[-1])  # seen: 2.00 -> 1.71
    grids = sorted((run_dir / "samples").glob("step_*.png"))
    assert grids and grids[-1].name == "step_000150.png"
    return card


def test_short_training_learns_each_subtypes_colour_through_fit(synthetic_breakhis, tmp_path):
    train_gan(GanConfig(**LEARN), synthetic_breakhis, tmp_path / "run")
    assert _assert_learned(synthetic_breakhis, tmp_path / "run")["versions"]["keras_backend"] == "tensorflow"


_GAN_UNDER_JAX = """
import json, sys
import keras
from core.gan.model import GanConfig
from core.gan.train import train_gan
config = GanConfig(**json.loads(sys.argv[3]))
train_gan(config, sys.argv[1], sys.argv[2])
print(json.dumps({"backend": keras.backend.backend(), "tensorflow_loaded": "tensorflow" in sys.modules}))
"""


def test_the_same_training_under_jax_learns_by_the_same_checks(synthetic_breakhis, tmp_path):
    """The JAX train_step (stateless: both optimisers, the moving average and the seeds threaded
    through its state) in a process that cannot import TensorFlow, judged by the same checks."""
    from core.testing.jax_process import run_under_jax

    report = run_under_jax(_GAN_UNDER_JAX, synthetic_breakhis, tmp_path / "run", json.dumps(LEARN))
    assert report == {"backend": "jax", "tensorflow_loaded": False}
    card = _assert_learned(synthetic_breakhis, tmp_path / "run")
    assert card["versions"]["keras_backend"] == "jax" and card["training"]["steps"] == 150


def test_the_gan_is_a_keras_model_trained_by_fit():
    import keras

    config = GanConfig(**TINY)
    model = build_gan(config)
    assert isinstance(model, keras.Model) and model.adversarial_loss is not None
    real = np.random.default_rng(0).integers(0, 256, (16, 16, 16, 3)).astype(np.uint8)
    history = model.fit(real, np.zeros((16, 1), np.int32), batch_size=16, epochs=2, verbose=0)
    assert set(history.history) >= {"d_loss", "g_loss", "d_real", "d_fake"} and model.steps_done == 2
    assert history.history["d_rebuild"] == history.history["d_r1"] == [0.0, 0.0]  # neither on by default
    with pytest.raises(UserInputError, match="Unknown GAN loss"):
        model.compile(model.g_optimizer, model.d_optimizer, loss="l2")


_REBUILD = """
import json, sys
import keras
import numpy as np
from core.gan.model import GanConfig
from core.gan.train import build_gan
config = GanConfig(image_size=32, width=32, d_width=8, latent_dim=8, batch_size=16, mpp=4.0, holdout=0.0,
                   reconstruction=1.0)
model = build_gan(config)
y, x = np.mgrid[0:32, 0:32]
rng = np.random.default_rng(0)  # broad bands of random angle and colour: a rebuild can learn them
angles, colours = rng.uniform(0, np.pi, 64), rng.uniform(0, 1, (64, 1, 1, 3))
waves = 0.5 + 0.5 * np.sin((np.cos(angles)[:, None, None] * x + np.sin(angles)[:, None, None] * y) * 0.15)
real = (255 * waves[..., None] * colours).astype(np.uint8)
history = model.fit(real, np.zeros((64, 1), np.int32), batch_size=16, epochs=30, verbose=0).history
print(json.dumps({"backend": keras.backend.backend(), "rebuild": [float(v) for v in history["d_rebuild"]],
                  "rebuilt": list(model.discriminator([real[:2] / 127.5 - 1.0, np.zeros((2, 1), np.int32)])[1].shape)}))
"""


def test_the_discriminator_learns_to_rebuild_real_patches(capsys):
    """FastGAN's self-supervision: with --reconstruction, D also rebuilds each real patch it sees at
    half size from its coarsest features, and that L1 falls as it trains (the JAX step carries the
    head in the R1 test below)."""
    exec(compile(_REBUILD, "rebuild", "exec"), {})
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["backend"] == "tensorflow" and report["rebuilt"] == [2, 16, 16, 3]
    first, last = np.mean(report["rebuild"][:2]), np.mean(report["rebuild"][-10:])
    assert last < 0.7 * first, report["rebuild"]


_R1 = """
import json
import keras
import numpy as np
from core.gan.model import GanConfig
from core.gan.train import build_gan
real = np.random.default_rng(0).integers(0, 256, (64, 16, 16, 3)).astype(np.uint8)
norms, rebuild = {}, []
for weight in (1e-4, 10.0):  # with the reconstruction head on too: both regularisers in one step
    keras.utils.set_random_seed(0)
    config = GanConfig(image_size=16, width=32, d_width=8, latent_dim=8, batch_size=16, mpp=4.0, holdout=0.0, r1=weight,
                       reconstruction=1.0)
    history = build_gan(config).fit(real, np.zeros((64, 1), np.int32), batch_size=16, epochs=15, verbose=0).history
    norms[str(weight)] = [float(v) for v in history["d_r1"]]
    rebuild += [float(v) for v in history["d_rebuild"]]
print(json.dumps({"backend": keras.backend.backend(), "d_r1": norms, "d_rebuild": rebuild}))
"""


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_the_r1_penalty_flattens_the_discriminator_at_real_patches(backend, capsys):
    """--r1: the same run with a strong penalty ends with a smaller gradient of D at real patches than
    with a negligible one (D's gradient norm grows as it learns), under either backend's step, with
    the reconstruction head in the same step (its loss is reported, finite and non-zero)."""
    if backend == "jax":
        from core.testing.jax_process import run_under_jax

        report = run_under_jax(_R1)
    else:
        exec(compile(_R1, "r1", "exec"), {})
        report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    weak, strong = report["d_r1"]["0.0001"], report["d_r1"]["10.0"]
    assert report["backend"] == backend and weak[-1] > 10 * weak[0]  # unpenalised, D steepens
    assert np.mean(strong[-3:]) < 0.7 * np.mean(weak[-3:]), report
    assert all(0.0 < value < 2.0 for value in report["d_rebuild"])


def test_cancel_then_resume_continues_the_step_count(synthetic_breakhis, tmp_path, monkeypatch):
    import itertools

    compile_gan_eagerly(monkeypatch)  # bookkeeping over 6 steps (tests/gan_helpers.py)
    out = tmp_path / "run"
    config = GanConfig(name="resume", subtypes=("adenosis",), steps=6, **TINY)
    calls = itertools.count()
    train_gan(config, synthetic_breakhis, out, stop=lambda: next(calls) >= 3)  # checked after each step: 4
    with pytest.raises(UserInputError, match="--resume"):
        train_gan(config, synthetic_breakhis, out)
    model_dir = train_gan(GanConfig(steps=6), synthetic_breakhis, out, resume=True)
    events = _events(out)
    assert [e["step"] for e in events if e["event"] == "start"] == [0, 4]
    assert len([e for e in events if e["event"] == "step"]) == 6  # 4 + 2 steps, none repeated
    assert [e["status"] for e in events if e["event"] == "end"] == ["cancelled", "completed"]
    _, card = load_model_folder(model_dir, kind=GENERATOR)
    assert card["training"]["steps"] == 6 and card["training"]["resumed_from_step"] == 4
    assert card["subtypes"] == ["adenosis"]  # the configuration came from the run folder


def test_mixed_precision_path_trains_and_saves_float32(synthetic_breakhis, tmp_path):
    config = GanConfig(name="mixed", subtypes=("adenosis",), steps=2, precision="mixed_float16", **TINY)
    generator, card = load_model_folder(train_gan(config, synthetic_breakhis, tmp_path / "run"), kind=GENERATOR)
    assert card["precision"] == "mixed_float16"
    assert all(w.dtype == "float32" for w in generator.weights)
    assert generator.layers[-1].compute_dtype == "float32"


def test_only_the_train_split_is_learned_from(synthetic_breakhis):
    from core.data.splits import make_split

    config = GanConfig(subtypes=PAIR, split="patient-wise", split_seed=0, **TINY)
    used = set(training_images(synthetic_breakhis, config)[0]["path"])
    split = make_split(index_folder(synthetic_breakhis).images, protocol="patient-wise", seed=0)
    train = set(split.loc[split["split"] == "train", "path"])
    assert used and used <= train
    assert used.isdisjoint(split.loc[split["split"] != "train", "path"])


def test_sample_cli_names_count_and_never_breakhis(tiny_generator, tmp_path, capsys):
    out = tmp_path / "samples"
    assert cli(["gan", "sample", "--model", str(tiny_generator), "--subtype", "adenosis", "--n", "7",
                     "--seed", "5", "--out", str(out)]) == 0
    files = sorted(out.glob("SYN_*"))
    assert len(files) == 7 and (out / PROVENANCE_FILE).is_file()
    for path in files:
        assert path.name.startswith("SYN_A-gan_tiny-5-")  # "-" separates fields, so it is replaced
        assert parse_synthetic_name(path.name) == "adenosis"
        assert parse_name(path.name) is None
    assert len(index_folder(out).images) == 0  # the real indexer never takes them for BreakHis images
    assert cli(["gan", "sample", "--model", str(tiny_generator), "--subtype", "fibroadenoma", "--n", "2",
                     "--out", str(out)]) == 2
    assert "not trained on 'fibroadenoma'" in capsys.readouterr().err
    assert cli(["gan", "sample", "--model", str(tmp_path), "--subtype", "adenosis", "--out", str(out)]) == 2
    assert "not a model folder" in capsys.readouterr().err


def test_fill_folder_feeds_balance_synthetic_fill(tiny_generator, tmp_path):
    from core.data.synthetic import find_synthetic_images

    written = fill_folder_from_generator(tiny_generator, list(PAIR), {"adenosis": 5, "ductal_carcinoma": 2},
                                                tmp_path / "fill")
    assert written == {"adenosis": 5, "ductal_carcinoma": 2}
    found = find_synthetic_images(tmp_path / "fill")
    assert found["subtype"].value_counts().to_dict() == {"adenosis": 5, "ductal_carcinoma": 2}
    assert found["synthetic"].all()


def test_generator_folder_is_verified(tiny_generator, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_generator, copy)
    with open(copy / "model.keras", "ab") as handle:
        handle.write(b"tampered")
    with pytest.raises(ModelFolderError, match="does not match its card"):
        load_model_folder(copy, kind=GENERATOR)
    with pytest.raises(ModelFolderError, match="Model folder not found"):
        load_model_folder(tmp_path / "missing", kind=GENERATOR)
    card = json.loads((tiny_generator / "card.json").read_text())
    (copy / "card.json").write_text(json.dumps({**card, "kind": "classifier"}))
    with pytest.raises(ModelFolderError, match="not a GAN generator"):
        load_model_folder(copy, kind=GENERATOR)
    reordered = {**card["labels"], "subtypes": card["labels"]["subtypes"][::-1]}
    (copy / "card.json").write_text(json.dumps({**card, "labels": reordered}))
    shutil.copy(tiny_generator / "model.keras", copy / "model.keras")
    with pytest.raises(ModelFolderError, match="different label order"):
        load_model_folder(copy, kind=GENERATOR)  # the subtype embedding is indexed by the label order


def test_samples_carry_the_provenance_of_their_generator(tiny_generator, tmp_path):
    card = json.loads((tiny_generator / "card.json").read_text())
    write_samples(tiny_generator, "adenosis", 2, tmp_path / "out")
    write_samples(tiny_generator, "ductal_carcinoma", 1, tmp_path / "out")  # same generator: one entry
    recorded = read_provenance(tmp_path / "out")
    assert list(recorded) == ["gan_tiny"]  # keyed by the name as it appears in the file names
    record = recorded["gan_tiny"]
    assert record["generator"] == "gan-tiny"
    assert record["sha256"] == card["sha256"] and record["split"]["protocol"] == "patient-wise"
    assert record["split"]["seed"] == 0 and record["split"]["magnification"] == "all"
    assert record["fingerprint"] == card["training"]["data_fingerprint"]
    assert record["data_source"] == card["training"]["data_source"]
    impostor = json.loads((tmp_path / "out" / PROVENANCE_FILE).read_text())
    impostor["generators"]["gan_tiny"]["sha256"] = "0" * 64  # another model under the same name
    (tmp_path / "out" / PROVENANCE_FILE).write_text(json.dumps(impostor))
    with pytest.raises(ValueError, match="another generator named"):
        write_samples(tiny_generator, "adenosis", 1, tmp_path / "out")


def test_a_subtype_without_readable_images_is_named(synthetic_breakhis, tmp_path, monkeypatch):
    import core.data.images

    original = core.data.images.load_image

    def unreadable_adenosis(path, *args, **kwargs):
        if "SOB_B_A-" in str(path):
            raise core.data.images.ImageError(f"{path}: cannot decode")
        return original(path, *args, **kwargs)

    monkeypatch.setattr(core.data.images, "load_image", unreadable_adenosis)
    config = GanConfig(name="broken", subtypes=PAIR, steps=1, **TINY)
    with pytest.raises(UserInputError, match=r"No usable training images for subtypes \['adenosis'\]"):
        train_gan(config, synthetic_breakhis, tmp_path / "run")


def test_the_default_split_keeps_val_and_test_images_out(synthetic_breakhis):
    assert GanConfig().split == "patient-wise"
    everything, _ = training_images(synthetic_breakhis, GanConfig(subtypes=PAIR, split="none"))
    assert len(training_images(synthetic_breakhis, GanConfig(subtypes=PAIR))[0]) < len(everything)


def test_bulk_fields_skip_the_histology_check(synthetic_breakhis, monkeypatch):
    import core.data.images
    from core.gan.patches import load_fields

    calls = []
    original = core.data.images.load_image
    monkeypatch.setattr(core.data.images, "load_image", lambda *a, **k: calls.append(k) or original(*a, **k))
    config = GanConfig(subtypes=("adenosis",), **TINY)
    load_fields(training_images(synthetic_breakhis, config)[0].head(2), config.mpp, config.image_size)
    assert calls == [{"check_histology": False}] * 2


def test_fields_come_at_one_scale_and_coarser_ones_are_left_out(tmp_path):
    """A 224x224 squashed 200X copy gets its aspect back (224 x 147 at 1.5625 um/px, the 700x460
    field's 350 x 230 um); a 40X field (2.5 um/px) would be enlarged, so it is skipped and says why."""
    import pandas as pd
    from PIL import Image

    from core.gan.patches import load_fields

    paths = {"SOB_B_A-14-22549AB-200-001.png": (224, 224), "SOB_B_A-14-22549AB-40-001.png": (700, 460)}
    for name, size in paths.items():
        Image.new("RGB", size, (200, 120, 180)).save(tmp_path / name)
    images = pd.DataFrame({"path": [str(tmp_path / n) for n in paths], "subtype": ["adenosis"] * 2,
                           "magnification": ["200X", "40X"]})
    fields = load_fields(images, 1.5625, 64)
    assert [f.shape for f in fields.images] == [(147, 224, 3)]
    assert "coarser (2.50 um/px)" in fields.skipped[str(tmp_path / "SOB_B_A-14-22549AB-40-001.png")]


def test_held_out_fields_and_balanced_patch_batches():
    from core.gan.patches import Fields, holdout_split

    rng = np.random.default_rng(0)
    labels = np.array([0] * 10 + [4] * 3 + [7] * 1, np.int32)  # imbalanced, as BreakHis is
    fields = Fields([rng.integers(0, 256, (40, 50, 3), dtype=np.uint8) for _ in labels], labels,
                    [f"f{i}" for i in range(len(labels))])
    train, held = holdout_split(fields, 0.2, seed=0)
    assert not set(train.paths) & set(held.paths) and len(train.paths) + len(held.paths) == 14
    assert [held.count(SUBTYPES[i]) for i in (0, 4, 7)] == [2, 1, 0]  # at least one, none of a lone field
    sampler = PatchSampler(train, 16, [SUBTYPES[i] for i in (0, 4, 7)])
    patches, batch_labels = sampler.batch(np.random.default_rng(1), 3000)
    assert patches.shape == (3000, 16, 16, 3)
    shares = np.bincount(batch_labels[:, 0], minlength=8)[[0, 4, 7]] / 3000
    assert np.all(np.abs(shares - 1 / 3) < 0.04)  # the minority subtypes as often as the majority


def test_augmentation_is_differentiable_and_views_keep_the_pixels():
    import keras
    import tensorflow as tf

    from core.gan.augment import _roll, diff_augment, dihedral

    images = keras.random.uniform((4, 16, 16, 3), -1, 1, seed=1)
    views = dihedral(images, keras.random.SeedGenerator(3))
    assert np.allclose(np.sort(np.asarray(views).ravel()), np.sort(np.asarray(images).ravel()))
    rolled = _roll(images, tf.constant([[3, -2], [0, 5], [1, 1], [-7, 0]]))
    for i, shift in enumerate([(3, -2), (0, 5), (1, 1), (-7, 0)]):
        assert np.allclose(rolled[i], np.roll(images[i], shift, axis=(0, 1)))
    with tf.GradientTape() as tape:
        tape.watch(images)
        out = diff_augment(images, keras.random.SeedGenerator(5))
        total = tf.reduce_sum(out)
    assert out.shape == images.shape and float(tf.reduce_sum(tf.abs(tape.gradient(total, images)))) > 0


def test_many_samples_are_drawn_in_chunks_with_the_same_noise(tiny_generator, tmp_path):
    """`gan sample --n 100000` needed 80 GiB of noise at once (MemoryError): the noise is drawn per
    chunk of the same stream, so image i is the same whatever n or the chunk is, and a count < 1 is refused."""
    import argparse

    from PIL import Image

    from core.gan import sampling
    from core.options import positive_int

    chunks = list(sampling.noise_chunks(3, 5, (30, 20), 4, chunk=2))
    assert [len(c) for c in chunks] == [2, 2, 1]
    np.testing.assert_array_equal(np.concatenate(chunks), sampling.noise_map(3, 5, 30, 20, 4))
    np.testing.assert_array_equal(np.concatenate(list(sampling.noise_chunks(3, 5, None, 4, 2))),
                                  sampling.noise_for(3, 5, 4))
    paths = write_samples(tiny_generator, "adenosis", 3, tmp_path / "chunked", seed=1, chunk=2)
    whole = sampling.Generator.load(tiny_generator).fields("adenosis", 3, seed=1)
    assert [p.name[-9:] for p in paths] == ["00000.png", "00001.png", "00002.png"]
    for path, image in zip(paths, whole):
        np.testing.assert_array_equal(np.asarray(Image.open(path)), image)
    for value in ("0", "-4", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            positive_int(value)


def test_negative_seeds_are_refused_in_words(tiny_generator, synthetic_breakhis, tmp_path, capsys):
    """numpy takes no negative seed, and SYN_<code>-<generator>-<seed>-<n> names could not carry one."""
    for field in ("seed", "split_seed"):
        with pytest.raises(UserInputError, match=field):
            GanConfig(**{field: -1})
    for command in (["sample", "--model", str(tiny_generator), "--subtype", "adenosis", "--out", str(tmp_path / "s")],
                    ["evaluate", "--model", str(tiny_generator), "--data", str(synthetic_breakhis)]):
        assert cli(["gan", *command, "--seed", "-1"]) == 2
        assert "must be at least 0" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
    with pytest.raises(UserInputError, match="seed"):
        write_samples(tiny_generator, "adenosis", 1, tmp_path / "lib", seed=-1)


@pytest.mark.parametrize("field", ["sample_every", "log_every", "latent_dim", "width", "d_width"])
def test_sizes_and_intervals_below_one_are_refused_before_any_work(field):
    """--sample-every 0 divided by zero after the whole run; --latent-dim 0 / --d-width 0 failed in Keras."""
    with pytest.raises(UserInputError, match=field):
        GanConfig(**{**TINY, field: 0})


@pytest.mark.parametrize("content", ["{broken", "[1, 2]", '{"image_size": "big"}'])
def test_resume_with_a_damaged_config_is_refused_in_words(synthetic_breakhis, tmp_path, content):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(content)
    with pytest.raises(UserInputError, match="config.json"):
        train_gan(GanConfig(steps=1, **TINY), synthetic_breakhis, tmp_path / "run", resume=True)
