"""GAN gallery: what the measured checks say, then real and synthetic tissue at the same scale."""

import numpy as np
import pandas as pd
import streamlit as st

from core.app import glossary, registry, session
from core.data.breakhis import synthetic_name
from core.data.labels import pretty
from core.errors import ModelFolderError
from core.gan import gallery
from core.gan.sampling import Generator, grid

session.require_router()
session.require("gallery")


@st.cache_resource(show_spinner="Loading the generator...", max_entries=2)
def load(folder: str, stamp: float) -> Generator:
    return Generator.load(folder)


@st.cache_data(show_spinner=False, max_entries=64)
def synthetic(folder: str, stamp: float, subtype: str, n: int, seed: int) -> np.ndarray:
    return gallery.synthetic_patches(load(folder, stamp), subtype, n, seed)


@st.cache_data(show_spinner=False, max_entries=16)
def field(folder: str, stamp: float, subtype: str, seed: int) -> np.ndarray:
    return load(folder, stamp).fields(subtype, 1, seed)[0]


@st.cache_data(show_spinner="Cropping real patches...", max_entries=16)
def real(folder: str, stamp: float, subtype: str, n: int) -> np.ndarray | None:
    return gallery.real_patches(load(folder, stamp), subtype, n)


def measured(load, folder: str, what: str, command: str) -> dict | None:
    """A report of the generator (core.gan.gallery); a damaged one is said and treated as missing."""
    try:
        return load(folder)
    except (OSError, ValueError) as problem:
        st.error(f"{what} cannot be read ({problem}); run `{command}` again.")
        return None


st.title("GAN gallery")
st.caption("Synthetic histology from a class-conditional GAN. It may only ever enter TRAINING (the 'synthetic' "
           "balancing strategy), never validation, test or diagnosis.")
folders = registry.generator_folders()
if not folders:
    st.info("No GAN generator found in models/ or runs/. Train one with "
            "`python -m core gan train --data DIR --out runs/gan-NAME`.")
    st.stop()
folder = st.selectbox("Generator", folders, key="gan_model", format_func=registry.short_location)
try:
    stamp = registry.stamp(folder)
    generator = load(folder, stamp)
except ModelFolderError as problem:
    st.error(f"This generator folder cannot be used: {problem}")
    st.stop()
card = generator.card
training = card.get("training", {})
by_subtype = training.get("images_by_subtype", {})
st.markdown(f"**{card['name']}**: {training.get('steps', '?')} training steps on {sum(by_subtype.values())} real "
            f"images from `{training.get('data_source', '?')}` (split: {training.get('split', '?')})"
            f"{gallery.training_time(training)}.")

st.header("What the measurements say")
quality = measured(gallery.load_quality, folder, "The quality report of this generator", "gan evaluate")
if quality is None:
    st.info(f"Not measured yet: the pictures below are unjudged. Run `python -m core gan evaluate --model {folder} "
            "--data DIR`.")
else:
    met, text = gallery.verdict(quality)
    (st.success if met else st.warning)(("Meets the goals. " if met else "Does NOT meet the goals: synthetic tissue "
                                         "is told apart from real. ") + text)
    checks = pd.DataFrame(gallery.check_rows(quality))
    st.dataframe(checks, hide_index=True, column_config={  # plain headers; each measure defined in its tooltip
        column: st.column_config.Column(glossary.column_label(column), help=glossary.column_help(column))
        for column in checks.columns if column in glossary.COLUMNS})
    st.caption(gallery.checks_caption(quality))

ablation = measured(gallery.load_ablation, folder, "This generator's GAN-fill ablation", "gan ablation")
if ablation is None:
    st.info(gallery.no_ablation_text(card, folder))
else:
    helped, text = gallery.ablation_sentence(ablation)
    (st.success if helped else st.warning)(text)
    if terms := glossary.explain(text):
        st.caption(terms)

if card.get("limitations"):  # what whoever bundled it measured and says of it, in their (technical) words
    with st.expander("Limits stated by whoever trained this generator (technical)", icon=":material/warning:"):
        st.warning(card["limitations"])

controls = st.columns([3, 1, 1])
subtypes = controls[0].multiselect("Subtypes", card["subtypes"], default=card["subtypes"][:4], key="gan_subtypes",
                                   format_func=pretty)
seed = int(controls[1].number_input("Seed", 0, 10**6, 0, key="gan_seed"))
n = int(controls[2].slider("Patches per subtype", 2, 12, 6, key="gan_n"))
batches = {}
for subtype in subtypes:
    batches[subtype] = synthetic(folder, stamp, subtype, n, seed)
    st.subheader(f"{pretty(subtype)}  ({by_subtype.get(subtype, 0)} real training images)")
    left, right = st.columns(2)
    shown_real = real(folder, stamp, subtype, n)
    if shown_real is None:
        left.info("No bundled real sample of this subtype at this scale to compare with.")
    else:
        left.image(grid([shown_real]), caption="Real patches (bundled samples, same scale)", width="stretch")
    right.image(grid([batches[subtype]]), caption=f"Synthetic, seed {seed}", width="stretch")
    size = "field-size (a 200X field)" if generator.spatial else "at this generator's own size"
    st.image(field(folder, stamp, subtype, seed), caption=f"One synthetic {pretty(subtype).lower()} image, {size}")

if batches:
    archive = gallery.sample_zip(batches, card, seed)
    total = sum(len(b) for b in batches.values())
    st.download_button(f"Download this batch ({total} synthetic PNGs, zip)", archive,
                       file_name=f"SYNTHETIC-{card['name']}-seed{seed}.zip", mime="application/zip", key="gan_download")
    st.caption(f"Each PNG says it is synthetic in its text (Description, Comment) and its file name, e.g. "
               f"{synthetic_name(next(iter(batches)), card['name'], seed, 0)}; the zip's README.txt says so too.")
