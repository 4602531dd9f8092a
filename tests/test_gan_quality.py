"""GAN quality: the two-sample test and nuclei count can fail and pass, KID/FID behave as distances,
memorisation finds copies, `gan evaluate` writes its checks, the ablation runs."""

import json

import numpy as np
import pandas as pd
import pytest

from core.cli import main as cli
from core.data.labels import SUBTYPES
from core.data.selection import SplitSpec, select_images
from core.data.synthetic import PROVENANCE_FILE, leak_check
from core.gan import nuclei
from core.gan import quality as gan_quality
from core.gan.ablation import run_ablation
from core.gan.model import GanConfig
from core.gan.patches import PatchSampler
from core.gan.sampling import write_samples
from core.gan.train import train_gan, training_fields
from core.gan.two_sample import two_sample_test
from core.model.folders import GENERATOR, load_model_folder
from core.training.config import TrainConfig, checked
from tests.gan_helpers import compile_gan_eagerly

# At 8 um/px the synthetic set's 100X and 200X "fields" (96x64) are 87x58 and 44x29 px.
TINY = dict(image_size=16, width=16, d_width=8, latent_dim=8, batch_size=8, mpp=8.0,
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
    config = GanConfig(name="gan-split", subtypes=PAIR, steps=3, split="patient-wise", split_seed=0, **TINY)
    with pytest.MonkeyPatch.context() as patch:
        compile_gan_eagerly(patch)  # a folder to evaluate, not a test of learning
        return train_gan(config, imbalanced, tmp_path_factory.mktemp("gan") / "run")


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
    config = GanConfig(subtypes=("adenosis",), holdout=0.0, **TINY)
    train, _, _ = training_fields(synthetic_breakhis, config)
    patches, sources = PatchSampler(train, 16, ["adenosis"]).patches("adenosis", 24, 0)
    rng = np.random.default_rng(0)
    synthetic = rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    synthetic[4] = patches[7]  # a memorised training patch
    result = gan_quality.memorisation(features(synthetic), features(patches), sources)
    assert np.array_equal(patches[result["nearest"][4]], patches[7])
    assert result["distance"][4] < 1e-3 * result["real_to_real_median"]
    assert int(np.argmin(result["distance"])) == 4
    assert np.delete(result["distance"], 4).min() > 0.05 * result["real_to_real_median"]


def _stripes(n, period, rng, size=16):
    """Noisy pink stripes of one period: a toy 'tissue' whose texture a critic can learn."""
    yy, xx = np.mgrid[0:size, 0:size]
    out = []
    for _ in range(n):
        phase = rng.uniform(0, period)
        wave = (np.sin(2 * np.pi * (xx + yy + phase) / period) > 0)[..., None]
        out.append(np.clip(np.where(wave, [230, 160, 200], [150, 90, 160]) + rng.normal(0, 20, (size, size, 3)), 0, 255))
    return np.asarray(out, np.uint8)


def test_two_sample_test_tells_different_sets_apart_and_not_equal_ones():
    """The learning claim of the test: near-perfect on a texture difference, at chance on two
    draws of one distribution (its interval covers 0.5, the p-value is not small)."""
    rng = np.random.default_rng(0)
    real, same, other = _stripes(96, 6, rng), _stripes(96, 6, rng), _stripes(96, 3, rng)
    groups = [f"field{i // 8}" for i in range(96)]
    apart = two_sample_test(real, other, groups, seed=0)
    assert apart["accuracy"] > 0.9 and apart["p_value"] < 1e-6 and apart["split"] == "by source image"
    alike = two_sample_test(real, same, groups, seed=0)
    assert alike["ci95"][0] < 0.5 < alike["ci95"][1] and alike["p_value"] > 0.01, alike
    assert apart["n_scored"] == alike["n_scored"] == 96  # half of 96 real + half of 96 synthetic
    with pytest.raises(ValueError, match="at least 8"):
        two_sample_test(real[:4], other[:4])


def test_the_halves_hold_about_half_the_patches_each_and_keep_images_whole():
    """Alternate source images went to the two halves whatever their patch counts: at --n 8 a subtype
    was fitted on 14 patches and scored on 2. Now images are dealt so each half holds about half."""
    from core.gan.two_sample import _halves

    groups = ["a"] * 5 + ["b"] * 4 + ["c"] * 3 + ["d"] * 2 + ["e"] + ["f"]  # 16 patches of 6 images
    for seed in range(20):
        fit, score, split = _halves(len(groups), groups, np.random.default_rng(seed))
        assert split == "by source image" and sorted([*fit, *score]) == list(range(16))
        assert {groups[i] for i in fit}.isdisjoint(groups[i] for i in score)
        assert len(fit) == len(score) == 8, (seed, len(fit), len(score))


def test_a_scoring_half_under_the_minimum_is_flagged_and_every_table_shows_the_count():
    """An image holding most of the patches cannot be split: the result says how many were scored and
    that they are too few, and the CLI table shows the count beside each accuracy."""
    from core.gan.checks import accuracy_text

    rng = np.random.default_rng(0)
    real, other = _stripes(8, 6, rng), _stripes(8, 3, rng)
    result = two_sample_test(real, other, ["big"] * 7 + ["small"], seed=0)
    assert result["n_scored"] == 2 and result["too_few_scored"] is True
    assert accuracy_text(result).endswith("n=2, too few (< 8)")
    even = two_sample_test(real, other, ["one"] * 4 + ["two"] * 4, seed=0)
    assert even["n_scored"] == 8 and even["too_few_scored"] is False and accuracy_text(even).endswith("] n=8")


def test_nuclei_are_counted_by_size_in_microns():
    """Dark hematoxylin-blue disks of nucleus size on pink are counted one each; disks far smaller
    than a nucleus and a blank patch give none; the radius comes back in microns."""
    from skimage.draw import disk

    mpp, centres = 1.0, [(12, 12), (12, 40), (40, 20), (44, 50)]
    patch = np.full((64, 64, 3), (235, 190, 215), np.uint8)
    tiny = patch.copy()
    for centre in centres:
        patch[disk(centre, 4)] = (70, 50, 140)  # r = 4 um
        tiny[disk(centre, 1)] = (70, 50, 140)  # r = 1 um: no nucleus
    assert list(nuclei.count(np.stack([patch, tiny, np.full_like(patch, 235)]), mpp)) == [4, 0, 0]
    result = nuclei.compare(np.stack([patch] * 3), np.stack([tiny] * 3), mpp)
    assert result["real_per_patch"] == 4 and result["synthetic_per_patch"] == 0 and not result["within_tolerance"]
    assert 2.5 <= result["real_radius_um"] <= 6.0
    assert nuclei.compare(np.stack([patch] * 3), np.stack([patch] * 3), mpp)["within_tolerance"]
    # None found: null, not NaN (which JSON has not: quality.json failed every strict reader), and said so.
    assert result["synthetic_radius_um"] is None and nuclei.radius_text(None) == "none found"
    none_real = nuclei.compare(np.stack([tiny] * 3), np.stack([patch] * 3), mpp)
    assert none_real["ratio"] is None and none_real["real_radius_um"] is None and not none_real["within_tolerance"]
    json.dumps([result, none_real], allow_nan=False)


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


def test_evaluate_writes_every_check_on_held_out_fields_and_keeps_the_folder_valid(split_generator, imbalanced):
    from core.gan.checks import format_judgement

    result = gan_quality.evaluate_generator(split_generator, imbalanced, n=8)
    report = result["generators"]["generator"]
    # The imbalanced set leaves adenosis one usable training field: none to hold out, so it is not judged.
    assert set(report["subtypes"]) == {"ductal_carcinoma"} and report["not_judged"] == ["adenosis"]
    assert set(report["classes"]) == {"malignant"}
    for row in report["subtypes"].values():
        assert row["two_sample"]["n_scored"] >= 8 and 0.0 <= row["two_sample"]["accuracy"] <= 1.0
        assert row["two_sample"]["goal"] == 0.85 and row["held_out_images"] >= 1
        assert set(row["distances"]) == {"hed_sliced_wasserstein", "power_spectrum", "lbp"}
        assert row["nuclei"]["n_real"] == row["nuclei"]["n_synthetic"] == 8
    assert report["meets_all_goals"] is False  # three training steps are far from real tissue
    assert result["saw_held_out_fields"] is False  # its card lists the fields it kept out
    _, card = load_model_folder(split_generator, kind=GENERATOR)  # the card update did not break the checksum
    assert set(card["quality"]["two_sample_accuracy"]) == {"ductal_carcinoma", "malignant"}
    saved = json.loads((split_generator / gan_quality.QUALITY_DIR / "quality.json").read_text())
    assert saved["patches_per_set"] == 8 and (split_generator / gan_quality.QUALITY_DIR / "patches.jpg").is_file()
    table = format_judgement(result)
    assert f"{report['classes']['malignant']['two_sample']['accuracy']:.3f}" in table and "All goals met" in table
    json.loads((split_generator / gan_quality.QUALITY_DIR / "quality.json").read_text(),
               parse_constant=lambda token: pytest.fail(f"{token} in quality.json"))  # strict JSON
    report["subtypes"]["ductal_carcinoma"]["nuclei"]["synthetic_radius_um"] = None  # a generator drawing no nuclei
    assert "; r none found (" in format_judgement(result)
    scored = report["subtypes"]["ductal_carcinoma"]["two_sample"]["n_scored"]
    assert f"n={scored}" in table.split("| ductal_carcinoma |")[1].splitlines()[0]  # the count beside each accuracy


def test_ablation_refuses_a_generator_that_saw_test_images(split_generator, imbalanced, tmp_path):
    import shutil

    leaky = tmp_path / "leaky"
    shutil.copytree(split_generator, leaky)
    card = json.loads((leaky / "card.json").read_text())
    card["training"]["split_spec"]["protocol"] = "none"  # as if trained on every image, test images included
    (leaky / "card.json").write_text(json.dumps(card))
    with pytest.raises(ValueError, match="Refusing the ablation"):
        run_ablation(imbalanced, leaky, tmp_path / "ablation")
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
    write_samples(leaky, "adenosis", 3, tmp_path / "leaky-images")
    options = dict(data=str(imbalanced), out=str(tmp_path / "run"), balance="synthetic")
    with pytest.raises(ValueError, match="trained on all images.*--allow-gan-leak"):
        prepare_data(TrainConfig(**options, synthetic_dir=str(tmp_path / "leaky-images")))
    allowed = prepare_data(TrainConfig(**options, synthetic_dir=str(tmp_path / "leaky-images"), allow_gan_leak=True))
    assert allowed["train"]["synthetic"].astype(bool).sum() > 0

    write_samples(split_generator, "adenosis", 3, tmp_path / "matching")
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
    result = run_ablation(imbalanced, split_generator, tmp_path / "ablation", subtypes=[smallest],
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


def test_the_field_recipe_ablation_scores_each_subtype_with_intervals(split_generator, imbalanced, tmp_path):
    """--pipeline fields: both arms are field-recipe runs on the generator's split, the GAN fields go
    to the training part only, and each arm is scored on every validation and test patient with
    per-subtype F1 and patient-bootstrap intervals."""
    train = select_images(imbalanced, SplitSpec("patient-wise", 0, "all"), report_skipped=False).part("train")
    counts = train["subtype"].value_counts().to_dict()
    smallest = min(PAIR, key=counts.get)
    result = run_ablation(imbalanced, split_generator, tmp_path / "ablation", subtypes=[smallest], pipeline="fields",
                          backbone="resnet18_half", weights="none", input_size=48, epochs=1, batch_size=8)
    assert result["same_split"] and result["gan_leak"] is None
    none, filled = result["runs"]["none"], result["runs"]["synthetic"]
    assert filled["synthetic_by_subtype"] == {smallest: max(counts.values()) - counts[smallest]}
    assert none["synthetic_by_subtype"] == {}
    split = pd.read_csv(tmp_path / "ablation" / "synthetic" / "split.csv")
    assert set(split.loc[split["synthetic"].astype(bool), "split"]) == {"train"}  # never a scored image
    for run in (none, filled):
        assert "validation and test patients" in run["evaluated_on"]
        for s, block in run["subtype_f1"].items():
            if block["value"] is not None and block["low"] is None:  # every resample the same (an F1 of 0)
                assert block["method"].startswith("no interval") and block["patients"] >= 1
            elif block["value"] is not None:
                assert block["low"] <= block["value"] <= block["high"] and block["patients"] >= 1
    assert "patient-bootstrap" in (tmp_path / "ablation" / "ablation.md").read_text()
    assert json.loads((split_generator / "quality" / "ablation.json").read_text())["runs"] == result["runs"]
    with pytest.raises(ValueError, match="balances subtypes itself"):
        checked(TrainConfig(data=str(imbalanced), out=str(tmp_path / "x"), pipeline="fields", balance="oversample"))


def test_evaluate_cli_prints_the_checks_and_refuses_a_non_generator(split_generator, imbalanced, tmp_path, capsys):
    args = ["evaluate", "--data", str(imbalanced), "--n", "8"]
    assert cli(["gan", *args] + ["--model", str(split_generator)]) == 0
    out = capsys.readouterr().out
    assert "Two-sample test accuracy" in out and "| ductal_carcinoma |" in out
    assert cli(["gan", *args] + ["--model", str(tmp_path)]) == 2
    assert "not a model folder" in capsys.readouterr().err


def test_evaluate_with_features_adds_kid_memorisation_and_closest_pairs(split_generator, imbalanced, features):
    result = gan_quality.evaluate_generator(split_generator, imbalanced, features, n=8, pairs=2)
    row = result["generators"]["generator"]["subtypes"]["ductal_carcinoma"]
    assert np.isfinite(row["kid"]["kid"]) and row["kid"]["n_real"] == row["kid"]["n_synthetic"] == 8
    assert row["kid"]["fid"] is None  # 8 patches cannot support a full-rank covariance
    assert row["memorisation"]["training_patches"] == 8 and row["memorisation"]["min_ratio"] is not None
    pairs = result["generators"]["generator"]["pairs"]["ductal_carcinoma"]
    assert len(pairs) == 2 and all((split_generator / gan_quality.QUALITY_DIR / p["synthetic"]).is_file() for p in pairs)
    assert "| ductal_carcinoma |" in gan_quality.format_kid(result["generators"]["generator"])


def test_evaluate_and_compare_refuse_too_few_patches_before_any_work(split_generator, imbalanced, capsys):
    for command in ("evaluate", "compare"):
        against = ["--against", str(split_generator)] if command == "compare" else []
        assert cli(["gan", command, "--model", str(split_generator), *against, "--data", str(imbalanced),
                    "--n", "7"]) == 2
        assert "at least 8 patches" in capsys.readouterr().err



def test_a_generator_that_kept_no_field_out_is_told_why_it_cannot_be_judged(split_generator, imbalanced, tmp_path):
    """--holdout 0 leaves no real set: say that, not "No field of the subtypes [] is large enough"."""
    import shutil

    copy = tmp_path / "no-holdout"
    shutil.copytree(split_generator, copy)
    card = json.loads((copy / "card.json").read_text())
    card["config"]["holdout"] = 0.0
    (copy / "card.json").write_text(json.dumps(card))
    with pytest.raises(ValueError, match="held-out.*--holdout 0"):
        gan_quality.evaluate_generator(copy, imbalanced, n=8, write=False)


def test_a_generator_judged_on_no_subtype_meets_no_goal():
    """all([]) is True: a generator sharing no subtype with the real set was reported 'All goals met: True'."""
    from types import SimpleNamespace

    from core.gan.checks import judge_one

    real = SimpleNamespace(subtypes=["adenosis"], seed=0)
    assert judge_one({}, {}, real)["meets_all_goals"] is False


def test_the_ablation_table_says_n_a_for_a_figure_its_test_split_leaves_undefined():
    """A test split without one class has no macro-F1 (None, core.evaluation.metrics): the table crashed on it."""
    from core.gan.ablation import format_ablation

    def run(macro_f1):
        return {"macro_f1": macro_f1, "subtype_accuracy": 0.5, "stage1_accuracy": 0.75,
                "recall": {s: None for s in SUBTYPES}, "support": {s: 0 for s in SUBTYPES}, "synthetic_by_subtype": {}}

    table = format_ablation({"runs": {"none": run(None), "synthetic": run(0.25)}, "same_split": True, "gan": "g",
                             "filled_subtypes": ["adenosis"], "gan_leak": None})
    assert "| subtype macro-F1 | n/a | 0.250 |" in table and "| stage-1 accuracy | 0.750 | 0.750 |" in table
