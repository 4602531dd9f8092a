"""The conditional GAN: shapes, sampling names, folders, fields and fill (tests/test_gan_learning.py: that it
learns)."""

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
from core.gan.train import train_gan, training_images
from core.model.folders import GENERATOR, ModelFolderError, load_model_folder
from tests.gan_helpers import PAIR, TINY, compile_gan_eagerly


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


def test_skipped_fields_are_logged_without_their_server_path(tmp_path, caplog):
    """The gallery logged "(first: ('/srv/.../SOB_B_A-...-40-001.png', 'coarser ...'))" at warning level on every
    run: a full server path in the log. The warning names the file only; the paths are at debug level."""
    import logging

    import pandas as pd
    from PIL import Image

    from core.gan.patches import load_fields

    name = "SOB_B_A-14-22549AB-40-001.png"
    Image.new("RGB", (700, 460), (200, 120, 180)).save(tmp_path / name)
    images = pd.DataFrame({"path": [str(tmp_path / name)], "subtype": ["adenosis"], "magnification": ["40X"]})
    with caplog.at_level(logging.WARNING, logger="core.gan.patches"):
        load_fields(images, 1.5625, 64)
    [record] = caplog.records
    assert name in record.getMessage() and "coarser" in record.getMessage()
    assert str(tmp_path) not in record.getMessage()


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
        assert "Not patient tissue" in Image.open(path).text["Description"]  # as the gallery's downloads say
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
