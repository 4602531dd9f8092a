"""GAN gallery: synthetic patches per subtype next to real ones, interpolation, KID and memorisation."""

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image

from core.app import registry, session
from core.data.breakhis import index_folder, synthetic_name
from core.data.labels import pretty
from core.errors import ModelFolderError
from core.gan.model import GanConfig
from core.gan.quality import QUALITY_DIR
from core.gan.sampling import generate, grid, noise_for
from core.gan.train import real_patches
from core.model.folders import GENERATOR, load_model_folder
from core.paths import SAMPLES_DIR

session.require_router()


@st.cache_resource(show_spinner="Loading the generator...", max_entries=2)
def load(folder: str, stamp: float):
    return load_model_folder(folder, kind=GENERATOR)


@st.cache_data(show_spinner=False, max_entries=64)
def synthetic(folder: str, stamp: float, subtype: str, n: int, seed: int) -> np.ndarray:
    return generate(load(folder, stamp)[0], subtype, n, seed)


@st.cache_data(show_spinner=False, max_entries=16)
def interpolation(folder: str, stamp: float, subtype: str, seeds: tuple[int, int], steps: int) -> np.ndarray:
    """Straight line between two seeds' noise vectors: smooth change = no lookup table of copies."""
    generator, card = load(folder, stamp)
    start, end = (noise_for(s, 1, card["latent_dim"])[0] for s in seeds)
    weights = np.linspace(0.0, 1.0, steps, dtype=np.float32)[:, None]
    return generate(generator, subtype, steps, noise=(1 - weights) * start + weights * end)


@st.cache_data(show_spinner="Cropping real patches...", max_entries=16)
def real(subtype: str, config: dict, n: int) -> np.ndarray | None:
    """Real patches of the bundled samples, cropped and resized like the generator's training data."""
    if not SAMPLES_DIR.is_dir():
        return None
    images = index_folder(SAMPLES_DIR).images
    images = images[images["subtype"] == subtype]
    if images.empty:
        return None
    settings = GanConfig.from_dict({**config, "subtypes": [subtype], "patches_per_image": -(-n // len(images))})
    patches, _, _ = real_patches(images, settings, seed=0)
    return patches[np.random.default_rng(0).permutation(len(patches))[:n]]


def sample_zip(batches: dict[str, np.ndarray], name: str, seed: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for subtype, images in batches.items():
            for i, image in enumerate(images):
                png = io.BytesIO()
                Image.fromarray(image).save(png, format="PNG")
                archive.writestr(synthetic_name(subtype, name, seed, i), png.getvalue())
    return buffer.getvalue()


st.title("GAN gallery")
st.caption("Synthetic histology patches from a class-conditional GAN. They may only ever enter "
           "TRAINING (the 'synthetic' balancing strategy), never validation, test or diagnosis.")
folders = registry.generator_folders()
if not folders:
    st.info("No GAN generator found in models/ or runs/. Train one with "
            "`python -m core gan train --data DIR --out runs/gan-NAME --subtypes adenosis phyllodes_tumor`.")
    st.stop()
folder = st.selectbox("Generator", folders, key="gan_model", format_func=registry.short_location)
try:
    stamp = registry.stamp(folder)
    generator, card = load(folder, stamp)
except ModelFolderError as problem:
    st.error(f"This generator folder cannot be used: {problem}")
    st.stop()

training = card.get("training", {})
by_subtype = training.get("images_by_subtype", {})
st.markdown(f"**{card['name']}**: {card['image_size']} px patches, {training.get('steps', '?')} training steps on "
            f"{sum(by_subtype.values())} real images from `{training.get('data_source', '?')}` "
            f"(split: {training.get('split', '?')}).")
if sum(by_subtype.values()) < 100:
    st.warning("Trained on very few real images: a demonstration of the pipeline, not a useful generator.")
if card.get("limitations"):  # what whoever bundled it measured and says of it
    st.warning(card["limitations"])

controls = st.columns([3, 1, 1])
subtypes = controls[0].multiselect("Subtypes", card["subtypes"], default=card["subtypes"][:4], key="gan_subtypes",
                                   format_func=pretty)
seed = int(controls[1].number_input("Seed", 0, 10**6, 0, key="gan_seed"))
n = int(controls[2].slider("Images per subtype", 2, 12, 6, key="gan_n"))

batches = {}
for subtype in subtypes:
    batches[subtype] = synthetic(folder, stamp, subtype, n, seed)
    st.subheader(f"{pretty(subtype)}  ({by_subtype.get(subtype, 0)} real training images)")
    left, right = st.columns(2)
    shown_real = real(subtype, card.get("config", {}), n)
    if shown_real is None:
        left.info("No bundled real sample of this subtype to compare with.")
    else:
        left.image(grid([shown_real]), caption="Real patches (bundled samples)", width="stretch")
    right.image(grid([batches[subtype]]), caption=f"Synthetic, seed {seed}", width="stretch")

if batches:
    archive = sample_zip(batches, card["name"], seed)
    total = sum(len(b) for b in batches.values())
    st.download_button(f"Download this batch ({total} PNGs, zip)", archive, file_name=f"{card['name']}-seed{seed}.zip",
                       mime="application/zip", key="gan_download")
    first = next(iter(batches))
    st.caption(f"File names mark them synthetic, e.g. {synthetic_name(first, card['name'], seed, 0)}")

st.header("Latent interpolation")
row = st.columns(4)
subtype = row[0].selectbox("Subtype", card["subtypes"], key="gan_interp_subtype", format_func=pretty)
seed_a = int(row[1].number_input("From seed", 0, 10**6, 1, key="gan_seed_a"))
seed_b = int(row[2].number_input("To seed", 0, 10**6, 2, key="gan_seed_b"))
steps = int(row[3].slider("Steps", 3, 10, 7, key="gan_steps"))
st.image(grid([interpolation(folder, stamp, subtype, (seed_a, seed_b), steps)]),
         caption=f"{pretty(subtype)}: seed {seed_a} -> seed {seed_b}", width="stretch")

st.header("Quality (KID) and memorisation")
quality_file = Path(folder) / QUALITY_DIR / "quality.json"
if not quality_file.is_file():
    st.info(f"Not measured yet. Run `python -m core gan evaluate --model {folder} --data DIR`.")
    st.stop()
quality = json.loads(quality_file.read_text())
st.caption(f"Features: {quality['features']} (dimension {quality['feature_dim']}). Real set: {quality['real_set']}. "
           "Lower KID is closer to real; compare with real-vs-real (noise floor) and an untrained generator.")
rows = [{"subtype": pretty(s), "KID": r["kid"], "KID std": r["kid_std"], "real vs real": r["kid_real_vs_real"],
         "untrained generator": r["kid_untrained_generator"], "real patches": r["n_real"],
         "synthetic images": r["n_synthetic"], "real source images": r["real_images"],
         "FID": "n/a (too few images)" if r["fid"] is None else f"{r['fid']:.2f}",
         "closest / real-real distance": r["memorisation"]["min_ratio"]}
        for s, r in quality["subtypes"].items()]
st.dataframe(pd.DataFrame(rows), hide_index=True)
free = [{"subtype": pretty(s), "distance": name.replace("_", " "), "synthetic": d["synthetic"],
         "real vs real (floor)": d["real_vs_real"], "untrained generator (ceiling)": d["untrained_generator"]}
        for s, r in quality["subtypes"].items() for name, d in (r.get("classifier_free") or {}).items()]
if free:
    st.subheader("Distances that need no classifier")
    st.caption("Per subtype, real vs synthetic patches: H&E stain densities (sliced Wasserstein), the radially "
               "averaged power spectrum (structure and periodic artefacts) and local binary patterns (texture). "
               "Each next to two real sets' distance (floor) and an untrained generator's (ceiling).")
    st.dataframe(pd.DataFrame(free), hide_index=True)
    peaks = [f"{pretty(s)} at {f} cycles/px" for s, r in quality["subtypes"].items()
             for f, p in (r.get("upsampling_peaks") or {}).items() if p["peak"]]
    st.caption("Up-sampling checkerboard peaks in the spectrum: " + (", ".join(peaks) if peaks else "none found."))
st.subheader("Closest synthetic-real pairs")
st.caption("For every synthetic image, its nearest real training patch in feature space. A distance near 0 "
           "(ratio to the typical real-to-real distance near 0) would mean a copied training patch.")
scale = {s: r["memorisation"]["real_to_real_median"] for s, r in quality["subtypes"].items()}
for subtype_name, pairs in quality.get("pairs", {}).items():
    columns = st.columns(len(pairs) or 1)
    for column, pair in zip(columns, pairs):
        images = [Path(folder) / QUALITY_DIR / pair[k] for k in ("synthetic", "real")]
        if all(p.is_file() for p in images):
            ratio = pair["distance"] / scale[subtype_name] if scale.get(subtype_name) else float("nan")
            column.image([str(p) for p in images], caption=["synthetic", "nearest real"], width=96)
            column.caption(f"{pretty(subtype_name)}: distance {pair['distance']:.3g} ({ratio:.2f} x real-real)")
