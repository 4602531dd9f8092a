"""Is the GAN any good? KID/FID and memorisation in the classifier's feature space.

Distances are measured with the classifier's own backbone (the pooled last tap of
core.model.feature_extractor), because "realistic" only matters as far as the classifier can
tell. Every number is reported with the number of images behind it, next to two references: two
independent draws of real patches (the noise floor) and an untrained generator (the ceiling).
Features are divided by the RMS of the subtype's real features, so KID's cubic kernel does not
depend on the backbone's arbitrary scale: read a KID against the references in its own row; it is
not comparable with published Inception-feature KIDs.

    python -m core gan evaluate --model models/gan-default --data DIR [--features MODEL_DIR]
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import keras
import numpy as np
from PIL import Image

from core.data.labels import INPUT_SIZE, SUBTYPES
from core.data.preprocess import to_model_input
from core.data.stain import StainNormalizer
from core.errors import UserInputError
from core.gan.distances import classifier_free, upsampling_peaks
from core.gan.model import GanConfig, build_generator
from core.gan.sampling import generate
from core.gan.train import real_patches, training_images
from core.jsonfile import write_json_atomic
from core.model.classifier import build_classifier, feature_extractor
from core.model.folders import GENERATOR, load_model_folder, update_card
from core.paths import DEFAULT_MODEL_DIR

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
            print(f"WARNING: ImageNet weights unavailable ({type(error).__name__}); KID uses the default classifier's "
                  "features instead", flush=True)
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
        raise UserInputError(f"KID needs at least 2 images per set (got {len(real)} real, {len(fake)} synthetic)")
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
    return {"nearest": index, "distance": distance, "real_to_real_median": scale,
            "min_distance": float(distance.min()), "median_distance": float(np.median(distance)),
            "min_ratio": float(distance.min() / scale) if scale and np.isfinite(scale) else None}


def _real_sets(sources: list[str], n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two draws of up to n of these patches (positions) for KID, disjoint by source image.

    Source images are shuffled (seeded) and dealt alternately to the two sets, so both span many
    patients rather than the first few in path order; each set is a seeded sample of its patches.
    """
    rng = np.random.default_rng(seed)
    names = np.asarray(sources)
    images = rng.permutation(np.unique(names))
    if len(images) < 2:  # one image: split its patches instead
        order = rng.permutation(len(names))
        return order[:len(order) // 2][:n], order[len(order) // 2:][:n]
    first = np.isin(names, images[0::2])
    return tuple(rng.permutation(np.flatnonzero(mask))[:n] for mask in (first, ~first))


def _save_pairs(out: Path, subtype: str, fakes, reals, order, distances) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    pairs = []
    for rank, (i, j) in enumerate(order):
        names = (f"{subtype}_{rank}_synthetic.png", f"{subtype}_{rank}_real.png")
        Image.fromarray(fakes[i]).save(out / names[0])
        Image.fromarray(reals[j]).save(out / names[1])
        pairs.append({"synthetic": names[0], "real": names[1], "distance": float(distances[i])})
    return pairs


def evaluate_generator(model_dir, data_dir, features: Features, n: int = 64, seed: int = 1,
                       pairs: int = 4, write: bool = True) -> dict:
    """KID (and FID where n allows), references and memorisation per subtype; saved into the folder."""
    generator, card = load_model_folder(model_dir, kind=GENERATOR)
    config = GanConfig.from_dict(card["config"])
    keras.utils.set_random_seed(seed)  # the untrained reference is the same at every evaluation
    untrained = build_generator(config)  # same architecture, random weights: the ceiling
    images, _ = training_images(data_dir, config)
    # Memorisation is checked against the very patches the generator was trained on (same crops).
    normalizer = StainNormalizer.from_dict(card.get("stain_normalization"))  # the generator's own real data
    pool, pool_labels, pool_sources = real_patches(images, config, seed=config.seed, normalizer=normalizer)
    report = {"features": features.description, "feature_dim": None, "images_per_set": n, "seed": seed,
              "real_set": "patches of the generator's own training images" if config.split == "none"
              else f"patches of the {config.split_spec().label} train split (the images the generator saw)",
              "subtypes": {}, "pairs": {}}
    out = Path(model_dir) / QUALITY_DIR
    for subtype in config.subtypes:
        rows = images[images["subtype"] == subtype]
        in_pool = np.flatnonzero(pool_labels == SUBTYPES.index(subtype))
        real, real_again = _real_sets([pool_sources[i] for i in in_pool], n, seed)
        fake = generate(generator, subtype, n, seed=seed)
        f_fake, f_untrained, f_pool = (features(x) for x in (
            fake, generate(untrained, subtype, n, seed=seed), pool[in_pool]))  # untrained: same seed, same images
        f_real, f_again = f_pool[real], f_pool[real_again]  # already computed: no second decoding
        scale = np.sqrt(np.mean(f_real ** 2)) or 1.0  # KID's cubic kernel must not depend on feature scale
        f_real, f_again, f_fake, f_untrained, f_pool = (
            f / scale for f in (f_real, f_again, f_fake, f_untrained, f_pool))
        memo = memorisation(f_fake, f_pool, [pool_sources[i] for i in in_pool])
        report["feature_dim"] = int(f_real.shape[1])
        untrained_images = generate(untrained, subtype, n, seed=seed)
        report["subtypes"][subtype] = {
            "classifier_free": classifier_free(pool[in_pool][real], pool[in_pool][real_again], fake, untrained_images,
                                               seed),
            "upsampling_peaks": upsampling_peaks(pool[in_pool][real], fake, config.image_size),
            "real_images": int(len(rows)), **kid(f_real, f_fake, seed=seed), "fid": fid(f_real, f_fake),
            "kid_real_vs_real": kid(f_real, f_again, seed=seed)["kid"],
            "kid_untrained_generator": kid(f_real, f_untrained, seed=seed)["kid"],
            "memorisation": {"training_patches": int(len(in_pool)),
                             **{k: v for k, v in memo.items() if k not in ("nearest", "distance")}},
        }
        closest = np.argsort(memo["distance"])[:pairs]
        if write:
            order = [(int(i), int(memo["nearest"][i])) for i in closest]
            report["pairs"][subtype] = _save_pairs(out, subtype, fake, pool[in_pool], order, memo["distance"])
    if write:
        write_json_atomic(out / "quality.json", report)
        summary = {s: {k: r[k] for k in ("kid", "kid_std", "n_real", "n_synthetic", "real_images", "fid",
                                         "kid_real_vs_real", "kid_untrained_generator", "classifier_free")}
                   for s, r in report["subtypes"].items()}
        update_card(model_dir, quality={"features": features.description, "real_set": report["real_set"],
                                        "kid": summary})
    return report


def format_report(report: dict) -> str:
    lines = [f"features: {report['features']} (dim {report['feature_dim']}); real set: {report['real_set']}",
             f"{'subtype':22} {'KID':>9} {'+-':>8} {'real/real':>10} {'untrained':>10} {'n real/syn':>11} "
             f"{'imgs':>5} {'FID':>8} {'min NN/real-real':>17}"]
    for subtype, r in report["subtypes"].items():
        ratio = r["memorisation"]["min_ratio"]
        lines.append(f"{subtype:22} {r['kid']:9.4f} {r['kid_std']:8.4f} {r['kid_real_vs_real']:10.4f} "
                     f"{r['kid_untrained_generator']:10.4g} {r['n_real']:>5}/{r['n_synthetic']:<5} "
                     f"{r['real_images']:5d} {'n/a' if r['fid'] is None else format(r['fid'], '8.2f'):>8} "
                     f"{'n/a' if ratio is None else format(ratio, '.3f'):>17}")
    return "\n".join(lines)


def compare_generators(new_dir, old_dir, data_dir, n: int = 64, seed: int = 1) -> dict:
    """Two generators on the SAME real patches (the new generator's training images and crops):
    per subtype each classifier-free distance of both, the floor and the ceiling, and whether the
    new one halves the old one's distance (the goal) and shows no up-sampling peak."""
    new, new_card = load_model_folder(new_dir, kind=GENERATOR)
    old, old_card = load_model_folder(old_dir, kind=GENERATOR)
    config = GanConfig.from_dict(new_card["config"])
    keras.utils.set_random_seed(seed)
    untrained = build_generator(config)
    images, _ = training_images(data_dir, config)
    normalizer = StainNormalizer.from_dict(new_card.get("stain_normalization"))
    pool, labels, sources = real_patches(images, config, seed=config.seed, normalizer=normalizer)
    result = {"new": new_card["name"], "old": old_card["name"], "images_per_set": n,
              "real_set": f"patches of {new_card['name']}'s training images", "subtypes": {}}
    for subtype in [s for s in config.subtypes if s in old_card["subtypes"]]:
        in_pool = np.flatnonzero(labels == SUBTYPES.index(subtype))
        real, real_again = _real_sets([sources[i] for i in in_pool], n, seed)
        real, real_again = pool[in_pool][real], pool[in_pool][real_again]
        fakes = {"new": generate(new, subtype, n, seed=seed), "old": generate(old, subtype, n, seed=seed)}
        if fakes["old"].shape[1:] != real.shape[1:]:  # a generator of another patch size: compare at this one
            fakes["old"] = np.stack([np.round(to_model_input(f, real.shape[1]).numpy()).astype(np.uint8)
                                     for f in fakes["old"]])
        scores = {name: classifier_free(real, real_again, fake, generate(untrained, subtype, n, seed=seed), seed)
                  for name, fake in fakes.items()}
        result["subtypes"][subtype] = {
            "distances": {metric: {"new": scores["new"][metric]["synthetic"], "old": scores["old"][metric]["synthetic"],
                                   "real_vs_real": scores["new"][metric]["real_vs_real"],
                                   "untrained_generator": scores["new"][metric]["untrained_generator"],
                                   "at_most_half_of_old": scores["new"][metric]["synthetic"]
                                   <= 0.5 * scores["old"][metric]["synthetic"]}
                          for metric in scores["new"]},
            "upsampling_peaks": {name: upsampling_peaks(real, fake, config.image_size) for name, fake in fakes.items()},
        }
    result["goal_met"] = all(d["at_most_half_of_old"] for s in result["subtypes"].values()
                             for d in s["distances"].values())
    result["new_has_upsampling_peak"] = any(p["peak"] for s in result["subtypes"].values()
                                            for p in s["upsampling_peaks"]["new"].values())
    return result


def format_comparison(result: dict) -> str:
    lines = [f"{result['new']} vs {result['old']} on the same real set ({result['real_set']}, {result['images_per_set']} "
             "per set); lower is closer to real", "",
             "| subtype | distance | new | old | real vs real | untrained | new <= old/2 |", "|---|---|---|---|---|---|---|"]
    for subtype, row in result["subtypes"].items():
        for metric, d in row["distances"].items():
            lines.append(f"| {subtype} | {metric} | {d['new']:.4f} | {d['old']:.4f} | {d['real_vs_real']:.4f} | "
                         f"{d['untrained_generator']:.4f} | {'yes' if d['at_most_half_of_old'] else 'NO'} |")
    lines += ["", f"goal met on every subtype and distance: {result['goal_met']}; up-sampling peak in the new "
              f"generator's spectrum: {result['new_has_upsampling_peak']}"]
    return "\n".join(lines)
