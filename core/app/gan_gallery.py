"""What the GAN gallery shows: a generator's summary, real patches to compare with, sample zips,
latent interpolations, and its quality report (KID, classifier-free distances, closest pairs).

Every function takes plain values (a card, a folder, arrays), so the page only caches and lays out.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from core.app.run_files import read_json_file
from core.data.breakhis import index_folder, synthetic_name
from core.data.labels import pretty
from core.paths import SAMPLES_DIR

QUALITY_FILE = "quality.json"
FEW_REAL_IMAGES = 100  # below this, a generator demonstrates the pipeline, it is not useful


def summary(card: dict) -> tuple[str, list[str]]:
    """The generator in one sentence, and the warnings that go with it."""
    training = card.get("training", {})
    real_images = sum(training.get("images_by_subtype", {}).values())
    text = (f"**{card['name']}**: {card['image_size']} px patches, {training.get('steps', '?')} training steps on "
            f"{real_images} real images from `{training.get('data_source', '?')}` "
            f"(split: {training.get('split', '?')}).")
    warnings = []
    if real_images < FEW_REAL_IMAGES:
        warnings.append("Trained on very few real images: a demonstration of the pipeline, not a useful generator.")
    if card.get("limitations"):  # what whoever bundled it measured and says of it
        warnings.append(card["limitations"])
    return text, warnings


def real_patches_of(subtype: str, config: dict, n: int, samples_dir=SAMPLES_DIR) -> np.ndarray | None:
    """Real patches of the bundled samples, cropped and resized like the generator's training data."""
    from core.gan.model import GanConfig
    from core.gan.train import real_patches

    if not Path(samples_dir).is_dir():
        return None
    images = index_folder(samples_dir).images
    images = images[images["subtype"] == subtype]
    if images.empty:
        return None
    settings = GanConfig.from_dict({**config, "subtypes": [subtype], "patches_per_image": -(-n // len(images))})
    patches, _, _ = real_patches(images, settings, seed=0)
    return patches[np.random.default_rng(0).permutation(len(patches))[:n]]


def interpolation_noise(latent_dim: int, seeds: tuple[int, int], steps: int) -> np.ndarray:
    """Straight line between two seeds' noise vectors: smooth change = no lookup table of copies."""
    from core.gan.sampling import noise_for

    start, end = (noise_for(s, 1, latent_dim)[0] for s in seeds)
    weights = np.linspace(0.0, 1.0, steps, dtype=np.float32)[:, None]
    return (1 - weights) * start + weights * end


def sample_zip(batches: dict[str, np.ndarray], name: str, seed: int) -> bytes:
    """The shown images as PNGs named as synthetic (core.data.breakhis.synthetic_name), zipped."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for subtype, images in batches.items():
            for i, image in enumerate(images):
                png = io.BytesIO()
                Image.fromarray(image).save(png, format="PNG")
                archive.writestr(synthetic_name(subtype, name, seed, i), png.getvalue())
    return buffer.getvalue()


def quality_report(folder) -> tuple[dict | None, str | None]:
    """The generator's quality report (core.gan.quality) as the page's tables, or None and why:
    (None, None) when it was never measured, (None, a sentence) when the file is damaged."""
    from core.gan.quality import QUALITY_DIR

    path = Path(folder) / QUALITY_DIR / QUALITY_FILE
    quality, problem = read_json_file(path)
    if quality is None:
        return None, problem
    try:
        return {"caption": f"Features: {quality['features']} (dimension {quality['feature_dim']}). "
                           f"Real set: {quality['real_set']}.",
                "kid": kid_table(quality), "classifier_free": classifier_free_table(quality),
                "peaks": upsampling_peaks(quality), "pairs": closest_pairs(quality, folder)}, None
    except (KeyError, TypeError, AttributeError, ValueError) as error:  # valid JSON, not a report we can read
        return None, f"{path} is not a readable quality report ({type(error).__name__}: {error})"


def kid_table(quality: dict) -> pd.DataFrame:
    return pd.DataFrame([{"subtype": pretty(s), "KID": r["kid"], "KID std": r["kid_std"],
                          "real vs real": r["kid_real_vs_real"], "untrained generator": r["kid_untrained_generator"],
                          "real patches": r["n_real"], "synthetic images": r["n_synthetic"],
                          "real source images": r["real_images"],
                          "FID": "n/a (too few images)" if r["fid"] is None else f"{r['fid']:.2f}",
                          "closest / real-real distance": r["memorisation"]["min_ratio"]}
                         for s, r in quality["subtypes"].items()])


def classifier_free_table(quality: dict) -> pd.DataFrame:
    return pd.DataFrame([{"subtype": pretty(s), "distance": name.replace("_", " "), "synthetic": d["synthetic"],
                          "real vs real (floor)": d["real_vs_real"],
                          "untrained generator (ceiling)": d["untrained_generator"]}
                         for s, r in quality["subtypes"].items()
                         for name, d in (r.get("classifier_free") or {}).items()])


def upsampling_peaks(quality: dict) -> str:
    peaks = [f"{pretty(s)} at {f} cycles/px" for s, r in quality["subtypes"].items()
             for f, p in (r.get("upsampling_peaks") or {}).items() if p["peak"]]
    return "Up-sampling checkerboard peaks in the spectrum: " + (", ".join(peaks) if peaks else "none found.")


def closest_pairs(quality: dict, folder) -> dict[str, list[tuple[list[str], str]]]:
    """subtype -> [([synthetic image, nearest real image], caption)] for the pairs whose images exist."""
    from core.gan.quality import QUALITY_DIR

    scale = {s: r["memorisation"]["real_to_real_median"] for s, r in quality["subtypes"].items()}
    shown = {}
    for subtype, pairs in quality.get("pairs", {}).items():
        shown[subtype] = []
        for pair in pairs:
            images = [Path(folder) / QUALITY_DIR / pair[k] for k in ("synthetic", "real")]
            if all(p.is_file() for p in images):
                ratio = pair["distance"] / scale[subtype] if scale.get(subtype) else float("nan")
                shown[subtype].append(([str(p) for p in images],
                                       f"{pretty(subtype)}: distance {pair['distance']:.3g} ({ratio:.2f} x real-real)"))
    return shown
