"""The conditional GAN: shapes, learning, resume, sampling names, folders and fill."""

import json

import numpy as np
import pytest

from core import gan
from core.cli import main as cli
from core.data.breakhis import index_folder, parse_name, parse_synthetic_name
from core.data.labels import SUBTYPES
from core.data.synthetic import PROVENANCE_FILE, read_provenance
from core.errors import ModelFolderError, UserInputError
from core.gan.sampling import fill_folder_from_generator, noise_for
from core.gan.train import real_patches, training_images
from core.model.folders import GENERATOR, load_model_folder

TINY = dict(image_size=32, width=64, latent_dim=32, batch_size=16, patches_per_image=4,
            sample_every=1000, checkpoint_every=1000, log_every=1)
PAIR = ("adenosis", "ductal_carcinoma")  # benign pink vs malignant purple in the synthetic set


def _events(run_dir):
    return [json.loads(line) for line in (run_dir / "progress.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def tiny_generator(synthetic_breakhis, tmp_path_factory):
    """A few steps of training: enough for a real generator folder."""
    out = tmp_path_factory.mktemp("gan") / "gan-tiny"
    config = gan.GanConfig(name="gan-tiny", subtypes=PAIR, steps=4, **TINY)
    return gan.train_gan(config, synthetic_breakhis, out)


def test_generator_output_shape_and_range_for_each_subtype():
    config = gan.GanConfig(**TINY)
    generator = gan.build_generator(config)
    noise = noise_for(0, 3, config.latent_dim)
    raw = {s: np.asarray(generator([noise, np.full((3, 1), i, np.int32)])) for i, s in enumerate(SUBTYPES)}
    for subtype, images in raw.items():
        assert images.shape == (3, 32, 32, 3)
        assert images.min() >= -1.0 and images.max() <= 1.0
        assert gan.generate(generator, subtype, 3, seed=0).dtype == np.uint8
    # The subtype is an input that matters: same noise, different subtype, different image.
    assert np.abs(raw["adenosis"] - raw["ductal_carcinoma"]).mean() > 1e-4
    # Deterministic per seed, and image i does not depend on how many are drawn.
    first_two = gan.generate(generator, "adenosis", 2, seed=3)
    assert np.array_equal(gan.generate(generator, "adenosis", 5, seed=3)[:2], first_two)
    large = gan.build_generator(gan.GanConfig(image_size=128, width=64))
    assert large.output_shape == (None, 128, 128, 3)
    assert gan.build_discriminator(gan.GanConfig(image_size=128, width=64)).output_shape == (None, 1)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="image_size"):
        gan.GanConfig(image_size=100)
    with pytest.raises(ValueError, match="subtypes"):
        gan.GanConfig(subtypes=("cancer",))
    with pytest.raises(ValueError, match="crop_scale"):
        gan.GanConfig(crop_scale=(0.9, 0.2))


def _mean_colour(images):
    return np.asarray(images, np.float64).reshape(-1, 3).mean(0)


def test_short_training_learns_each_subtypes_colour(synthetic_breakhis, tmp_path):
    """Proof of learning: per-subtype mean-colour gap to the real patches shrinks, and by subtype."""
    config = gan.GanConfig(name="learn", subtypes=PAIR, steps=150, lr_g=1e-3, lr_d=1e-3, **TINY)
    images, _ = training_images(synthetic_breakhis, config)
    patches, labels, _ = real_patches(images, config, seed=0)
    real = {s: _mean_colour(patches[labels == SUBTYPES.index(s)]) for s in PAIR}
    untrained = gan.build_generator(config)
    model_dir = gan.train_gan(config, synthetic_breakhis, tmp_path / "run")
    trained, _ = load_model_folder(model_dir, kind=GENERATOR)
    for subtype, other in (PAIR, PAIR[::-1]):
        before = np.linalg.norm(_mean_colour(gan.generate(untrained, subtype, 64)) - real[subtype])
        after_colour = _mean_colour(gan.generate(trained, subtype, 64))
        after = np.linalg.norm(after_colour - real[subtype])
        assert after < 0.5 * before, (subtype, before, after)
        assert after < np.linalg.norm(after_colour - real[other]), f"{subtype} looks like {other}"
    grids = sorted((tmp_path / "run" / "samples").glob("step_*.png"))
    assert grids and grids[-1].name == "step_000150.png"


def test_cancel_then_resume_continues_the_step_count(synthetic_breakhis, tmp_path):
    import itertools

    out = tmp_path / "run"
    config = gan.GanConfig(name="resume", subtypes=("adenosis",), steps=6, **TINY)
    calls = itertools.count()
    gan.train_gan(config, synthetic_breakhis, out, stop=lambda: next(calls) >= 3)  # e.g. SIGTERM after 3 steps
    with pytest.raises(UserInputError, match="--resume"):
        gan.train_gan(config, synthetic_breakhis, out)
    model_dir = gan.train_gan(gan.GanConfig(steps=6), synthetic_breakhis, out, resume=True)
    events = _events(out)
    assert [e["step"] for e in events if e["event"] == "start"] == [0, 3]
    assert [e["step"] for e in events if e["event"] == "step"] == [1, 2, 3, 4, 5, 6]
    assert [e["status"] for e in events if e["event"] == "end"] == ["cancelled", "completed"]
    _, card = load_model_folder(model_dir, kind=GENERATOR)
    assert card["training"]["steps"] == 6 and card["training"]["resumed_from_step"] == 3
    assert card["subtypes"] == ["adenosis"]  # the configuration came from the run folder


def test_mixed_precision_path_trains_and_saves_float32(synthetic_breakhis, tmp_path):
    config = gan.GanConfig(name="mixed", subtypes=("adenosis",), steps=2, precision="mixed_float16", **TINY)
    generator, card = load_model_folder(gan.train_gan(config, synthetic_breakhis, tmp_path / "run"), kind=GENERATOR)
    assert card["precision"] == "mixed_float16"
    assert all(w.dtype == "float32" for w in generator.weights)
    assert generator.layers[-1].compute_dtype == "float32"


def test_only_the_train_split_is_learned_from(synthetic_breakhis):
    from core.data.splits import make_split

    config = gan.GanConfig(subtypes=PAIR, split="patient-wise", split_seed=0, **TINY)
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
    gan.write_samples(tiny_generator, "adenosis", 2, tmp_path / "out")
    gan.write_samples(tiny_generator, "ductal_carcinoma", 1, tmp_path / "out")  # same generator: one entry
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
        gan.write_samples(tiny_generator, "adenosis", 1, tmp_path / "out")


def test_a_subtype_without_readable_images_is_named(synthetic_breakhis, tmp_path, monkeypatch):
    import core.data.images

    original = core.data.images.load_image

    def unreadable_adenosis(path, *args, **kwargs):
        if "SOB_B_A-" in str(path):
            raise core.data.images.ImageError(f"{path}: cannot decode")
        return original(path, *args, **kwargs)

    monkeypatch.setattr(core.data.images, "load_image", unreadable_adenosis)
    config = gan.GanConfig(name="broken", subtypes=PAIR, steps=1, **TINY)
    with pytest.raises(ValueError, match=r"No readable training images for subtypes \['adenosis'\]"):
        gan.train_gan(config, synthetic_breakhis, tmp_path / "run")


def test_the_default_split_keeps_val_and_test_images_out(synthetic_breakhis):
    assert gan.GanConfig().split == "patient-wise"
    everything, _ = training_images(synthetic_breakhis, gan.GanConfig(subtypes=PAIR, split="none"))
    assert len(training_images(synthetic_breakhis, gan.GanConfig(subtypes=PAIR))[0]) < len(everything)


def test_bulk_patches_skip_the_histology_check(synthetic_breakhis, monkeypatch):
    import core.data.images

    calls = []
    original = core.data.images.load_image
    monkeypatch.setattr(core.data.images, "load_image", lambda *a, **k: calls.append(k) or original(*a, **k))
    config = gan.GanConfig(subtypes=("adenosis",), **TINY)
    real_patches(training_images(synthetic_breakhis, config)[0].head(2), config)
    assert calls == [{"check_histology": False}] * 2


def test_the_discriminator_sees_how_much_each_group_of_images_differs():
    """GroupSpread: a group of identical images gets a spread channel of ~0, a varied group a
    clearly positive one, so a generator that ignores its noise can be told apart from real data."""
    from core.gan.model import GROUP, GroupSpread

    rng = np.random.default_rng(0)
    same = np.repeat(rng.normal(size=(1, 8, 8, 5)), GROUP, axis=0).astype(np.float32)
    varied = rng.normal(size=(GROUP, 8, 8, 5)).astype(np.float32)
    out = np.asarray(GroupSpread()(np.concatenate([same, varied])))
    assert out.shape == (2 * GROUP, 8, 8, 6)
    assert np.allclose(out[..., :5], np.concatenate([same, varied]))  # the features pass unchanged
    assert out[:GROUP, ..., 5].max() < 1e-3 and out[GROUP:, ..., 5].min() > 0.5


def test_balanced_batches_come_in_groups_of_one_subtype():
    from core.gan.model import GROUP
    from core.gan.train import _balanced_batches

    labels = np.array([0] * 50 + [4] * 5 + [7] * 2)  # imbalanced, as BreakHis is
    batches = _balanced_batches(labels, [SUBTYPES[0], SUBTYPES[4], SUBTYPES[7]], 16, np.random.default_rng(0))
    drawn = np.concatenate([labels[next(batches)] for _ in range(200)]).reshape(-1, GROUP)
    assert (drawn == drawn[:, :1]).all()  # every group one subtype
    shares = np.bincount(drawn[:, 0], minlength=8)[[0, 4, 7]] / len(drawn)
    assert np.all(np.abs(shares - 1 / 3) < 0.06)  # the minority subtypes as often as the majority
    with pytest.raises(ValueError, match="batch_size"):
        gan.GanConfig(batch_size=18)


def test_mode_seeking_training_keeps_the_noise_in_the_images(synthetic_breakhis, tmp_path):
    """The same short training with and without the mode-seeking term: with it, images of
    different noises for one subtype differ clearly more (a collapsing generator draws one image
    per subtype), and the subtype colour is still learnt."""
    spread, colour = {}, {}
    for weight in (0.0, 1.0):
        config = gan.GanConfig(name="seek", subtypes=PAIR, steps=60, lr_g=1e-3, lr_d=1e-3, mode_seeking=weight,
                               **TINY)
        trained, _ = load_model_folder(gan.train_gan(config, synthetic_breakhis, tmp_path / f"run{weight}"),
                                       kind=GENERATOR)
        images = {s: gan.generate(trained, s, 16, seed=1).astype(np.float64) for s in PAIR}
        spread[weight] = np.mean([np.abs(x - x.mean(axis=0)).mean() for x in images.values()])
        colour[weight] = {s: _mean_colour(x) for s, x in images.items()}
    assert spread[1.0] > 1.3 * spread[0.0], spread  # seen: about 2.1 without, 4 to 5 with
    benign, malignant = colour[1.0][PAIR[0]], colour[1.0][PAIR[1]]
    assert benign.mean() > malignant.mean()  # pink benign lighter than purple malignant, as in the data
