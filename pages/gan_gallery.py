"""GAN gallery: synthetic patches per subtype next to real ones, interpolation, KID and memorisation."""

import numpy as np
import streamlit as st

from core.app import gan_gallery, registry, session
from core.data.breakhis import synthetic_name
from core.data.labels import pretty
from core.errors import ModelFolderError
from core.gan.sampling import generate, grid
from core.model.folders import GENERATOR, load_model_folder

session.require_router()
session.require("gallery")


@st.cache_resource(show_spinner="Loading the generator...", max_entries=2)
def load(folder: str, stamp: float):
    return load_model_folder(folder, kind=GENERATOR)


@st.cache_data(show_spinner=False, max_entries=64)
def synthetic(folder: str, stamp: float, subtype: str, n: int, seed: int) -> np.ndarray:
    return generate(load(folder, stamp)[0], subtype, n, seed)


@st.cache_data(show_spinner=False, max_entries=16)
def interpolation(folder: str, stamp: float, subtype: str, seeds: tuple[int, int], steps: int) -> np.ndarray:
    generator, card = load(folder, stamp)
    return generate(generator, subtype, steps, noise=gan_gallery.interpolation_noise(card["latent_dim"], seeds, steps))


@st.cache_data(show_spinner="Cropping real patches...", max_entries=16)
def real(subtype: str, config: dict, n: int) -> np.ndarray | None:
    return gan_gallery.real_patches_of(subtype, config, n)


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

by_subtype = card.get("training", {}).get("images_by_subtype", {})
text, warnings = gan_gallery.summary(card)
st.markdown(text)
for warning in warnings:
    st.warning(warning)

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
    archive = gan_gallery.sample_zip(batches, card["name"], seed)
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
report, problem = gan_gallery.quality_report(folder)
if report is None:
    if problem:
        st.warning(f"The quality report cannot be shown: {problem}")
    else:
        st.info(f"Not measured yet. Run `python -m core gan evaluate --model {folder} --data DIR`.")
    st.stop()
st.caption(report["caption"] + " Lower KID is closer to real; compare with real-vs-real (noise floor) and an "
           "untrained generator.")
st.dataframe(report["kid"], hide_index=True)
if len(report["classifier_free"]):
    st.subheader("Distances that need no classifier")
    st.caption("Per subtype, real vs synthetic patches: H&E stain densities (sliced Wasserstein), the radially "
               "averaged power spectrum (structure and periodic artefacts) and local binary patterns (texture). "
               "Each next to two real sets' distance (floor) and an untrained generator's (ceiling).")
    st.dataframe(report["classifier_free"], hide_index=True)
    st.caption(report["peaks"])
st.subheader("Closest synthetic-real pairs")
st.caption("For every synthetic image, its nearest real training patch in feature space. A distance near 0 "
           "(ratio to the typical real-to-real distance near 0) would mean a copied training patch.")
for shown in report["pairs"].values():
    for column, (images, caption) in zip(st.columns(len(shown) or 1), shown):
        column.image(images, caption=["synthetic", "nearest real"], width=96)
        column.caption(caption)
