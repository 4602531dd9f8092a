"""Is the GAN any good? The checks of core.gan.checks, plus KID/FID and memorisation in a
classifier's feature space, as `gan evaluate` (one generator) and `gan compare` (two, same real patches).

    python -m core gan evaluate --model models/gan-default --data DIR [--features MODEL_DIR]
    python -m core gan compare --model runs/gan-NEW/model --against models/gan-default --data DIR

KID (optional, --features) is measured with the classifier's own backbone (the pooled last tap of
core.model.feature_extractor), because "realistic" only matters as far as the classifier can
tell. Every number is reported with the number of images behind it, next to two references: two
independent draws of real patches (the noise floor) and an untrained generator (the ceiling).
Features are divided by the RMS of the subtype's real features, so KID's cubic kernel does not
depend on the backbone's arbitrary scale: read a KID against the references in its own row; it is
not comparable with published Inception-feature KIDs.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import keras
import numpy as np
from PIL import Image

from core.data.labels import INPUT_SIZE, SUBTYPES
from core.data.preprocess import to_model_input
from core.data.stain import StainNormalizer
from core.errors import UserInputError
from core.gan.checks import RealPatches, judge
from core.gan.model import GanConfig, build_generator
from core.gan.sampling import Generator, grid
from core.gan.train import training_fields
from core.gan.two_sample import MIN_PATCHES
from core.jsonfile import write_json_atomic
from core.model.classifier import build_classifier, feature_extractor
from core.model.folders import load_model_folder, update_card
from core.paths import DEFAULT_MODEL_DIR

log = logging.getLogger(__name__)

QUALITY_DIR = "quality"  # inside the generator folder: quality.json and the closest pairs


@dataclasses.dataclass
class Features:
    """uint8 images -> pooled last-tap features of a classifier (resized by the one resize)."""

    model: keras.Model
    input_size: int
    description: str

    def __call__(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        out = [np.asarray(self.model(to_model_input(images[i:i + batch_size], self.input_size), training=False))
               for i in range(0, len(images), batch_size)]
        return np.concatenate(out).astype(np.float64) if out else np.zeros((0, 0))


def load_features(source: str | None = None, input_size: int | None = None) -> Features:
    """The feature space of KID: "imagenet" (ImageNet DenseNet121, where its weights can be loaded;
    otherwise, saying so, the default classifier), a classifier model folder, or "backbone:NAME"
    (random weights). The description names the space, since KIDs in different spaces do not compare."""
    source = source or "imagenet"
    if source == "imagenet":
        try:
            network = keras.applications.DenseNet121(weights="imagenet", include_top=False, pooling="avg",
                                                     input_shape=(INPUT_SIZE, INPUT_SIZE, 3))
        except Exception as error:  # offline: no weights to download
            log.warning("ImageNet weights unavailable (%s); KID uses the default classifier's features instead",
                        type(error).__name__)
            return load_features(str(DEFAULT_MODEL_DIR), input_size)
        inputs = keras.Input((INPUT_SIZE, INPUT_SIZE, 3))
        scaled = keras.applications.densenet.preprocess_input(inputs)
        return Features(keras.Model(inputs, network(scaled)), INPUT_SIZE, "ImageNet DenseNet121 (pooled)")
    if source.startswith("backbone:"):
        name = source.split(":", 1)[1]
        model, weights = build_classifier(name, weights=None, input_size=input_size or INPUT_SIZE)
        description = f"{name} backbone, {weights} (no classifier training)"
    else:
        model, card = load_model_folder(source)
        description = f"classifier {card.get('name', Path(source).name)} ({card.get('backbone')})"
    last_tap = keras.Model(model.inputs, feature_extractor(model).outputs[-1])
    return Features(last_tap, int(model.input_shape[1]), description)


def kid(real: np.ndarray, fake: np.ndarray, subset_size: int = 100, subsets: int = 50, seed: int = 0) -> dict:
    """Kernel Inception Distance (unbiased MMD^2, cubic polynomial kernel), mean and std over subsets.

    With fewer images than subset_size, subsets take 3/4 of the smaller set, so they still differ
    and the std says how much the estimate moves with the images drawn.
    """
    smaller = min(len(real), len(fake))
    if smaller < 2:
        raise ValueError(f"KID needs at least 2 images per set (got {len(real)} real, {len(fake)} synthetic)")
    m = subset_size if smaller >= subset_size else max(2, (3 * smaller) // 4)
    rng, dim, values = np.random.default_rng(seed), real.shape[1], []
    for _ in range(subsets):
        x = real[rng.choice(len(real), m, replace=False)]
        y = fake[rng.choice(len(fake), m, replace=False)]
        kxx, kyy, kxy = ((a @ b.T / dim + 1.0) ** 3 for a, b in ((x, x), (y, y), (x, y)))
        off_diagonal = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        values.append(off_diagonal - 2.0 * kxy.mean())
    return {"kid": float(np.mean(values)), "kid_std": float(np.std(values)),
            "n_real": int(len(real)), "n_synthetic": int(len(fake)), "subset_size": int(m)}


def fid(real: np.ndarray, fake: np.ndarray) -> float | None:
    """Frechet distance, or None when there are too few images for a full-rank covariance."""
    from scipy import linalg

    if min(len(real), len(fake)) <= real.shape[1]:
        return None
    mu1, mu2 = real.mean(0), fake.mean(0)
    s1, s2 = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2.0 * np.real(covmean)))


def nearest_real(fake: np.ndarray, real: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each synthetic feature vector: index of and Euclidean distance to the nearest real one."""
    squared = (fake ** 2).sum(1)[:, None] + (real ** 2).sum(1)[None] - 2.0 * fake @ real.T
    index = squared.argmin(1)
    return index, np.sqrt(np.maximum(squared[np.arange(len(fake)), index], 0.0))


def real_neighbour_distance(real: np.ndarray, sources: list[str], block: int = 1024) -> float:
    """Median distance from a real patch to the nearest real patch of ANOTHER image: what 'close' means.

    Row blocks of the distance matrix: memory is block x N, not N x N (N is tens of thousands).
    """
    sources = np.asarray(sources)
    norms = (real ** 2).sum(1)
    nearest = np.empty(len(real))
    for start in range(0, len(real), block):
        rows = slice(start, start + block)
        squared = norms[rows, None] + norms[None] - 2.0 * real[rows] @ real.T
        squared[sources[rows, None] == sources[None]] = np.inf
        nearest[rows] = squared.min(1)
    finite = nearest[np.isfinite(nearest)]
    return float(np.median(np.sqrt(np.maximum(finite, 0.0)))) if len(finite) else float("nan")


def memorisation(fake_feats, real_feats, real_sources) -> dict:
    """Nearest real training patch per synthetic image, and the distances relative to real-real."""
    index, distance = nearest_real(fake_feats, real_feats)
    scale = real_neighbour_distance(real_feats, real_sources)
    scale = scale if np.isfinite(scale) else None  # no other image to compare: null in the JSON, not NaN
    return {"nearest": index, "distance": distance, "real_to_real_median": scale,
            "min_distance": float(distance.min()), "median_distance": float(np.median(distance)),
            "min_ratio": float(distance.min() / scale) if scale else None}


def _save_pairs(out: Path, subtype: str, fakes, reals, order, distances) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    pairs = []
    for rank, (i, j) in enumerate(order):
        names = (f"{subtype}_{rank}_synthetic.png", f"{subtype}_{rank}_real.png")
        Image.fromarray(fakes[i]).save(out / names[0])
        Image.fromarray(reals[j]).save(out / names[1])
        pairs.append({"synthetic": names[0], "real": names[1], "distance": float(distances[i])})
    return pairs


def judged_config(card: dict) -> GanConfig:
    """The real set a generator is judged on: its own scale, patch size, split and held-out fields.
    A generator from before the texture GAN (no "mpp" in its card) is judged at the texture GAN's
    default scale and patch size, on the same split and held-out fields a new one would hold out."""
    config = GanConfig.from_dict(card["config"])
    if "mpp" not in card:
        config = dataclasses.replace(config, mpp=GanConfig.mpp, image_size=GanConfig.image_size)
    return config


def untrained_generator(config: GanConfig) -> Generator:
    """The same architecture with random weights (seeded): every distance's ceiling."""
    keras.utils.set_random_seed(0)
    card = {"name": "untrained", "subtypes": list(SUBTYPES), "mpp": config.mpp, "image_size": config.image_size}
    return Generator(build_generator(config), card)


def real_patches_for(card: dict, data_dir, n: int, seed: int) -> RealPatches:
    """Held-out and training-field patches of the generator's own data (and stain normalisation); too
    few patches for the two-sample test are refused before the fields are loaded."""
    if n < MIN_PATCHES:
        raise UserInputError(f"The checks need at least {MIN_PATCHES} patches per set and subtype (--n), not {n}")
    config = judged_config(card)
    normalizer = StainNormalizer.from_dict(card.get("stain_normalization"))
    train, held, _ = training_fields(data_dir, config, normalizer)
    if not any(held.count(s) and train.count(s) for s in config.subtypes):
        why = ("it was trained with --holdout 0, keeping no field out" if not config.holdout
               else "no subtype has two usable fields")
        raise UserInputError(f"No subtype has both a held-out and a training field at {config.mpp} um/px, so there "
                             f"is no real set to judge this generator on: {why}")
    return RealPatches(train, held, config.image_size, config.mpp, n, seed)


def saw_held_out(card: dict, real: RealPatches) -> bool:
    """Whether the generator trained on any of the held-out fields (e.g. one trained before holding out)."""
    kept_out = set(card.get("training", {}).get("held_out_images", []))
    return any(Path(p).name not in kept_out for _, paths in real.held.values() for p in paths)


def _kid_and_memorisation(generator: Generator, untrained: Generator, real: RealPatches, features: Features,
                          report: dict, pairs: int, out: Path | None) -> None:
    """KID against the held-out patches (floor: training-field patches), memorisation against the
    training-field patches, added to each subtype of the report; closest pairs saved into out."""
    for subtype, row in report["subtypes"].items():
        held = real.held[subtype][0]
        fake = generator.patches(subtype, real.n, real.size, real.mpp, real.seed)
        ceiling = untrained.patches(subtype, real.n, real.size, real.mpp, real.seed)
        f_held, f_train, f_fake, f_untrained = (features(x) for x in (held, real.train[subtype], fake, ceiling))
        scale = np.sqrt(np.mean(f_held ** 2)) or 1.0  # KID's cubic kernel must not depend on feature scale
        f_held, f_train, f_fake, f_untrained = (f / scale for f in (f_held, f_train, f_fake, f_untrained))
        memo = memorisation(f_fake, f_train, [f"train-{i}" for i in range(len(f_train))])
        row["kid"] = {**kid(f_held, f_fake, seed=real.seed), "fid": fid(f_held, f_fake),
                      "real_vs_real": kid(f_held, f_train, seed=real.seed)["kid"],
                      "untrained_generator": kid(f_held, f_untrained, seed=real.seed)["kid"],
                      "features": features.description, "feature_dim": int(f_held.shape[1])}
        row["memorisation"] = {"training_patches": int(len(f_train)),
                               **{k: v for k, v in memo.items() if k not in ("nearest", "distance")}}
        if out is not None:
            order = [(int(i), int(memo["nearest"][i])) for i in np.argsort(memo["distance"])[:pairs]]
            report.setdefault("pairs", {})[subtype] = _save_pairs(out, subtype, fake, real.train[subtype], order,
                                                                  memo["distance"])


def evaluate_generator(model_dir, data_dir, features: Features | None = None, n: int = 128, seed: int = 1,
                       pairs: int = 4, write: bool = True) -> dict:
    """Every check of core.gan.checks for one generator (and KID/memorisation with `features`);
    with write, saved as quality/quality.json in its folder and summarised in its card."""
    generator = Generator.load(model_dir)
    real = real_patches_for(generator.card, data_dir, n, seed)
    untrained = untrained_generator(judged_config(generator.card))
    result = judge({"generator": generator}, untrained, real)
    result["saw_held_out_fields"] = saw_held_out(generator.card, real)
    out = Path(model_dir) / QUALITY_DIR
    if features is not None:
        _kid_and_memorisation(generator, untrained, real, features, result["generators"]["generator"], pairs,
                              out if write else None)
    if write:
        out.mkdir(parents=True, exist_ok=True)
        Image.fromarray(comparison_sheet(real, {"generator": generator})).save(out / "patches.jpg", quality=85)
        write_json_atomic(out / "quality.json", result)
        report = result["generators"]["generator"]
        update_card(model_dir, quality={
            "real_set": result["real_set"], "scale": result["scale"], "meets_all_goals": report["meets_all_goals"],
            "saw_held_out_fields": result["saw_held_out_fields"],
            "two_sample_accuracy": {**{c: r["two_sample"]["accuracy"] for c, r in report["classes"].items()},
                                    **{s: r["two_sample"]["accuracy"] for s, r in report["subtypes"].items()}}})
    return result


def compare_generators(new_dir, old_dir, data_dir, n: int = 128, seed: int = 1, sheet: Path | None = None) -> dict:
    """Two generators judged on the SAME real patches (the new generator's held-out fields), in one
    run of one code path; with `sheet`, a picture of real | new | old patches per subtype."""
    new, old = Generator.load(new_dir), Generator.load(old_dir)
    real = real_patches_for(new.card, data_dir, n, seed)
    result = judge({"new": new, "old": old}, untrained_generator(judged_config(new.card)), real)
    result["saw_held_out_fields"] = {"new": saw_held_out(new.card, real), "old": saw_held_out(old.card, real)}
    if sheet is not None:
        Path(sheet).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(comparison_sheet(real, {"new": new, "old": old})).save(sheet)
    return result


def format_kid(report: dict) -> str:
    """The KID table of one generator's report (empty without --features)."""
    rows = [(s, r["kid"]) for s, r in report["subtypes"].items() if "kid" in r]
    if not rows:
        return ""
    lines = [f"KID in {rows[0][1]['features']} (lower is closer; floor: held-out vs training-field patches)", "",
             "| subtype | KID | +- | real vs real | untrained | min NN / real-real |", "|---|---|---|---|---|---|"]
    for subtype, k in rows:
        ratio = report["subtypes"][subtype]["memorisation"]["min_ratio"]
        lines.append(f"| {subtype} | {k['kid']:.4f} | {k['kid_std']:.4f} | {k['real_vs_real']:.4f} | "
                     f"{k['untrained_generator']:.4g} | {'n/a' if ratio is None else format(ratio, '.3f')} |")
    return "\n".join(lines)


def comparison_sheet(real: RealPatches, generators: dict, per_set: int = 6, gap: int = 6) -> np.ndarray:
    """One row per subtype: per_set held-out real patches, then per_set of each generator, at one scale."""
    rows = []
    for subtype in real.subtypes:
        row = [real.held[subtype][0][:per_set]]
        for generator in generators.values():
            if subtype in generator.subtypes:
                row.append(generator.patches(subtype, per_set, real.size, real.mpp, real.seed))
            else:
                row.append(np.full((per_set, real.size, real.size, 3), 255, np.uint8))
        pieces = []
        for images in row:
            pieces += [grid([images]), np.full((real.size + 2, gap, 3), 255, np.uint8)]
        rows.append(np.concatenate(pieces, axis=1))
    return np.concatenate(rows, axis=0) if rows else np.zeros((1, 1, 3), np.uint8)
