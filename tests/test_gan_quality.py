"""GAN quality measures: KID/FID behave as distances, memorisation finds copies, the ablation runs."""

import json

import numpy as np
import pytest

from core import gan
from core.cli import main as cli
from core.data.labels import SUBTYPES
from core.data.selection import SplitSpec, select_images
from core.data.synthetic import PROVENANCE_FILE, leak_check
from core.gan import quality as gan_quality
from core.gan.train import real_patches, training_images
from core.model.folders import GENERATOR, load_model_folder

TINY = dict(image_size=32, width=32, latent_dim=16, batch_size=8, patches_per_image=2,
            sample_every=1000, checkpoint_every=1000, log_every=10)
PAIR = ("adenosis", "ductal_carcinoma")


@pytest.fixture(scope="module")
def features():
    return gan_quality.load_features("backbone:small_cnn", input_size=64)


@pytest.fixture(scope="module")
def imbalanced(synthetic_breakhis, tmp_path_factory):
    """The synthetic set with half of the adenosis images removed: a minority subtype to fill."""
    import shutil

    root = tmp_path_factory.mktemp("imbalanced")
    shutil.copytree(synthetic_breakhis, root, dirs_exist_ok=True)
    for path in sorted(root.rglob("SOB_B_A-*.png")):
        if int(path.stem.rsplit("-", 1)[1]) > 2:
            path.unlink()
    return root


@pytest.fixture(scope="module")
def split_generator(imbalanced, tmp_path_factory):
    """A generator trained (briefly) on the patient-wise seed-0 train split only."""
    config = gan.GanConfig(name="gan-split", subtypes=PAIR, steps=3, split="patient-wise", split_seed=0, **TINY)
    return gan.train_gan(config, imbalanced, tmp_path_factory.mktemp("gan") / "run")


def test_kid_is_about_zero_for_the_same_distribution_and_positive_for_a_shift():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(300, 32))
    same = rng.normal(size=(300, 32))
    shifted = rng.normal(size=(300, 32)) + 0.5
    against_itself = gan_quality.kid(real, real)
    against_shift = gan_quality.kid(real, shifted)
    assert against_shift["kid"] > 0.05
    # ~0 up to subset noise (a set against itself dips slightly below 0: its subsets overlap).
    assert abs(against_itself["kid"]) < 0.1 * against_shift["kid"]
    assert abs(gan_quality.kid(real, same)["kid"]) < 0.05 * against_shift["kid"]
    assert against_itself["n_real"] == 300 and against_itself["subset_size"] == 100
    with pytest.raises(ValueError, match="at least 2"):
        gan_quality.kid(real[:1], shifted)


def test_fid_only_where_the_sample_count_allows():
    rng = np.random.default_rng(1)
    real = rng.normal(size=(200, 8))
    assert gan_quality.fid(real[:8], real[:8]) is None  # n <= feature dim: covariance is singular
    assert abs(gan_quality.fid(real, real)) < 1e-6
    assert gan_quality.fid(real, rng.normal(size=(200, 8)) + 1.0) > 5.0


def test_memorisation_finds_an_exact_copy_at_distance_zero(synthetic_breakhis, features):
    config = gan.GanConfig(subtypes=("adenosis",), **TINY)
    patches, _, sources = real_patches(training_images(synthetic_breakhis, config)[0], config, seed=0)
    rng = np.random.default_rng(0)
    synthetic = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    synthetic[4] = patches[7]  # a memorised training patch
    result = gan_quality.memorisation(features(synthetic), features(patches), sources)
    assert result["nearest"][4] == 7
    assert result["distance"][4] < 1e-3 * result["real_to_real_median"]
    assert int(np.argmin(result["distance"])) == 4
    assert result["min_ratio"] < 1e-3
    assert np.delete(result["distance"], 4).min() > 0.05 * result["real_to_real_median"]


def _old_real_neighbour_distance(real, sources):
    """The full N x N formula that real_neighbour_distance computes in row blocks."""
    sources = np.asarray(sources)
    squared = (real ** 2).sum(1)[:, None] + (real ** 2).sum(1)[None] - 2.0 * real @ real.T
    squared[sources[:, None] == sources[None]] = np.inf
    nearest = squared.min(1)
    finite = nearest[np.isfinite(nearest)]
    return float(np.median(np.sqrt(np.maximum(finite, 0.0))))


def test_real_neighbour_distance_in_blocks_equals_the_full_matrix():
    rng = np.random.default_rng(3)
    real = rng.normal(size=(53, 7))
    sources = [f"image{i // 4}" for i in range(53)]
    expected = _old_real_neighbour_distance(real, sources)
    for block in (1, 5, 16, 1024):
        assert gan_quality.real_neighbour_distance(real, sources, block=block) == pytest.approx(expected, rel=1e-12)
    assert np.isnan(gan_quality.real_neighbour_distance(real[:3], ["one"] * 3))  # no other image to compare


def test_kid_real_sets_are_seeded_and_disjoint_by_source_image():
    sources = [f"image{i % 10}" for i in range(200)]  # path order would give the first images only
    first, second = gan_quality._real_sets(sources, 40, seed=1)
    assert len(first) == len(second) == 40
    assert not {sources[i] for i in first} & {sources[i] for i in second}
    assert len({sources[i] for i in first}) == 5  # every image of its half, not the first few
    again = gan_quality._real_sets(sources, 40, seed=1)
    assert np.array_equal(first, again[0]) and np.array_equal(second, again[1])
    one, other = gan_quality._real_sets(["only"] * 6, 40, seed=0)  # one image: its patches are split
    assert len(one) == len(other) == 3 and not set(one) & set(other)


def test_evaluate_generator_reports_counts_pairs_and_keeps_the_folder_valid(split_generator, imbalanced, features):
    report = gan_quality.evaluate_generator(split_generator, imbalanced, features, n=12, pairs=2)
    assert set(report["subtypes"]) == set(PAIR)
    for subtype, row in report["subtypes"].items():
        # Real sets come from the generator's own patch pool (images x patches_per_image), up to n.
        assert 2 <= row["n_real"] <= 12 and row["n_synthetic"] == 12
        assert row["fid"] is None  # 12 images cannot support a 128-d covariance
        assert row["kid_untrained_generator"] is not None and np.isfinite(row["kid"])
        assert len(report["pairs"][subtype]) == 2
        for pair in report["pairs"][subtype]:
            assert (split_generator / gan_quality.QUALITY_DIR / pair["synthetic"]).is_file()
    assert "train split" in report["real_set"]
    _, card = load_model_folder(split_generator, kind=GENERATOR)  # the card update did not break the checksum
    assert set(card["quality"]["kid"]) == set(PAIR)
    saved = json.loads((split_generator / gan_quality.QUALITY_DIR / "quality.json").read_text())
    assert saved["images_per_set"] == 12
    table = gan_quality.format_report(report).splitlines()
    for subtype, row in report["subtypes"].items():  # one line per subtype, carrying its own numbers
        [line] = [line for line in table if line.startswith(subtype)]
        assert f"{row['kid']:9.4f}" in line and f"{row['n_real']:>5}/{row['n_synthetic']:<5}" in line


def test_ablation_refuses_a_generator_that_saw_test_images(split_generator, imbalanced, tmp_path):
    import shutil

    leaky = tmp_path / "leaky"
    shutil.copytree(split_generator, leaky)
    card = json.loads((leaky / "card.json").read_text())
    card["training"]["split_spec"]["protocol"] = "none"  # as if trained on every image, test images included
    (leaky / "card.json").write_text(json.dumps(card))
    with pytest.raises(ValueError, match="Refusing the ablation"):
        gan.run_ablation(imbalanced, leaky, tmp_path / "ablation")
    code = cli(["gan", "ablation", "--data", str(imbalanced), "--gan", str(split_generator),
                             "--out", str(tmp_path / "ablation"), "--split", "patient-wise", "--seed", "3"])
    assert code == 2  # a different split seed than the generator's is refused as well


def test_training_refuses_gan_images_that_may_have_seen_test_images(split_generator, imbalanced, tmp_path):
    import shutil

    from core.training.config import TrainConfig
    from core.training.fit import prepare_data

    leaky = tmp_path / "leaky"
    shutil.copytree(split_generator, leaky)
    card = json.loads((leaky / "card.json").read_text())
    card["training"]["split_spec"]["protocol"] = "none"  # as if trained on every image, test images included
    (leaky / "card.json").write_text(json.dumps(card))
    gan.write_samples(leaky, "adenosis", 3, tmp_path / "leaky-images")
    options = dict(data=str(imbalanced), out=str(tmp_path / "run"), balance="synthetic")
    with pytest.raises(ValueError, match="trained on all images.*--allow-gan-leak"):
        prepare_data(TrainConfig(**options, synthetic_dir=str(tmp_path / "leaky-images")))
    allowed = prepare_data(TrainConfig(**options, synthetic_dir=str(tmp_path / "leaky-images"), allow_gan_leak=True))
    assert allowed["train"]["synthetic"].astype(bool).sum() > 0

    gan.write_samples(split_generator, "adenosis", 3, tmp_path / "matching")
    matching = prepare_data(TrainConfig(**options, synthetic_dir=str(tmp_path / "matching")))
    assert matching["train"]["synthetic"].astype(bool).sum() > 0  # same data, protocol, seed, magnification
    for mismatch, message in ((dict(seed=2), "seed 0"), (dict(folds=3), "3-fold"),
                              (dict(magnification="40X"), "magnification all")):
        with pytest.raises(ValueError, match=message):
            prepare_data(TrainConfig(**{**options, **mismatch}, synthetic_dir=str(tmp_path / "matching")))

    (tmp_path / "matching" / PROVENANCE_FILE).unlink()  # SYN_ images of unknown origin
    with pytest.raises(ValueError, match="no provenance.json"):
        prepare_data(TrainConfig(**options, synthetic_dir=str(tmp_path / "matching")))


def test_leak_check_accepts_every_spelling_of_the_same_protocol(imbalanced):
    fingerprint = select_images(imbalanced, SplitSpec(), report_skipped=False).fingerprint
    record = {"split": SplitSpec("patient").to_dict(), "fingerprint": fingerprint, "data_source": "imbalanced"}
    for spelling in ("patient-wise", "patient"):
        assert leak_check(record, fingerprint, SplitSpec(spelling)) is None
    assert "split patient" in leak_check(record, fingerprint, SplitSpec("image-level"))
    assert "not on" in leak_check({**record, "fingerprint": "elsewhere"}, fingerprint, SplitSpec("patient"))


def test_ablation_trains_both_arms_on_the_same_split(split_generator, imbalanced, tmp_path):
    train = select_images(imbalanced, SplitSpec("patient-wise", 0, "all"), report_skipped=False).part("train")
    counts = train["subtype"].value_counts().to_dict()
    target = max(counts.values())
    smallest = min(PAIR, key=counts.get)
    assert counts[smallest] < target, "the fixture must leave a subtype to fill"
    result = gan.run_ablation(imbalanced, split_generator, tmp_path / "ablation", subtypes=[smallest],
                                  backbone="small_cnn", weights="none", input_size=64, epochs=1, batch_size=16)
    assert result["same_split"] and result["gan_leak"] is None
    none, filled = result["runs"]["none"], result["runs"]["synthetic"]
    assert filled["synthetic_by_subtype"] == {smallest: target - counts[smallest]}
    assert sum(none["synthetic_by_subtype"].values()) == 0
    for run in (none, filled):
        assert 0.0 <= run["macro_f1"] <= 1.0
        assert set(run["recall"]) == set(SUBTYPES)
    table = (tmp_path / "ablation" / "ablation.md").read_text()
    assert "macro-F1" in table and f"recall {smallest}" in table


def test_evaluate_cli_prints_the_table_and_refuses_a_non_generator(split_generator, imbalanced, tmp_path, capsys):
    args = ["evaluate", "--data", str(imbalanced), "--features", "backbone:small_cnn", "--n", "6"]
    assert cli(["gan", *args] + ["--model", str(split_generator)]) == 0
    out = capsys.readouterr().out
    assert "adenosis" in out and "/6 " in out  # n real (at most the pool allows) / 6 synthetic
    assert cli(["gan", *args] + ["--model", str(tmp_path)]) == 2
    assert "not a model folder" in capsys.readouterr().err
