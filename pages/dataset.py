"""Dataset: class balance of BreakHis (or a scanned folder), before and after each balancing strategy."""

from pathlib import Path

import streamlit as st

from core.app import dataset_views, registry, retrain, session
from core.data.breakhis import index_folder, load_manifest, summarize
from core.data.labels import SUBTYPES, pretty
from core.data.splits import PATIENT, make_split
from core.errors import DatasetError, ModelFolderError
from core.model.folders import CLASSIFIER, ENSEMBLE, card_kind
from core.paths import MANIFEST, SAMPLES_DIR

session.require_router()
session.require("dataset")

FULL_SET, FOLDER = "Full BreakHis manifest (bundled)", "Scan a dataset folder"


def pipeline_help(pipeline: str) -> str:
    """The Retrain form's choice is the heading; the command line's name for it is for whoever trains there."""
    return f"The Pipeline choice of the Retrain page's form; on the command line: `--pipeline {pipeline}`."


@st.cache_data(show_spinner="Reading the manifest...")
def manifest_images(manifest: str):
    return load_manifest(manifest)


@st.cache_data(show_spinner="Scanning the folder...", max_entries=4)
def folder_images(folder: str):
    result = index_folder(folder)
    unreadable = ["the folder itself" if name == "." else name for name in result.unreadable]
    return result.images, result.summary(), len(result.skipped), unreadable, dataset_views.scan_warnings(result)


@st.cache_data(show_spinner="Applying the balancing strategies...", max_entries=8)
def balanced(images, synthetic_dir: str | None):
    split = make_split(images, protocol=PATIENT, seed=0)
    train = split[split["split"] == "train"]
    return train, dataset_views.balanced_versions(train, synthetic_dir)


st.title("Dataset")
source = st.radio("Source", [FULL_SET, FOLDER], horizontal=True, key="dataset_source")
if source == FULL_SET:
    try:
        images = manifest_images(str(MANIFEST))
    except DatasetError as problem:  # A damaged manifest: said, and a folder can still be scanned.
        st.error(f"The bundled manifest cannot be used: {problem}")
        st.stop()
    st.caption(f"All {len(images):,} BreakHis v1 images, listed by the bundled manifest "
               "(assets/breakhis_manifest.csv).")
    folder, samples_problem = None, None
    try:
        thumbnail_source = folder_images(str(SAMPLES_DIR))[0]
    except DatasetError as problem:  # assets/samples missing: the manifest's figures need no image file
        thumbnail_source = None
        samples_problem = (f"The bundled samples cannot be read ({problem}), so no thumbnails are shown; the "
                           "figures above come from the manifest and are complete.")
else:
    folder = st.text_input("Dataset folder on the server", key="dataset_folder",
                           placeholder="a folder of BreakHis images").strip()
    if not folder:
        st.info("Name a folder that holds BreakHis images (any layout; labels come from file names), inside the "
                "data folders this app may scan.")
        st.stop()
    problem = dataset_views.scan_problem(folder, admin=(session.current_user() or {}).get("role") == "admin")
    if problem:
        st.error(problem)
        st.stop()
    images, scan_summary, skipped, unreadable, mistakes = folder_images(folder)
    with st.expander("Scan report"):
        st.text(scan_summary)
    for mistake in mistakes:
        st.warning(mistake, icon=":material/label_off:")
    if unreadable:  # not "no images": the server may not read them
        st.warning(f"{len(unreadable)} folder(s) could not be read, so their images are not counted: "
                   + ", ".join(unreadable[:5]) + (", ..." if len(unreadable) > 5 else ""))
    if images.empty:
        st.warning("No BreakHis-named images found in the folders that could be read." if unreadable
                   else "No BreakHis-named images found in that folder.")
        st.stop()
    st.caption(dataset_views.folder_caption(images, folder, skipped))
    thumbnail_source = images



def active_model_data() -> str | None:
    """Which data the active model learnt from, in its card's words (its evidence), so that the figures of the
    full set or a folder are not read as its training data; None without a readable classifier card."""
    folder = session.active_model()
    try:
        card = session.model_card(folder) if folder else None
    except ModelFolderError:
        return None
    if not card or card_kind(card) not in (CLASSIFIER, ENSEMBLE):
        return None
    info = registry.describe_model(card)
    return (f"The active model ({info['name']}): {info['evidence'] or 'learnt from ' + info['data']}. The figures "
            "below are of the images chosen above, not only of those it learnt from.")


if trained := active_model_data():
    st.info(trained, icon=":material/model_training:")
counts = summarize(images)
metrics = st.columns(5)
metrics[0].metric("Images", f"{counts['images']:,}")
metrics[1].metric("Cases (patients)", counts["cases"])
metrics[2].metric("Slides", counts["slides"])
per_subtype, per_class = (dataset_views.group_counts(images, column) for column in ("subtype", "label"))
metrics[3].metric("Subtype imbalance", dataset_views.imbalance_text(per_subtype, reason=False),
                  help="Largest subtype over smallest subtype; n/a when a subtype has no image.")
metrics[4].metric("Class imbalance", dataset_views.imbalance_text(per_class, reason=False),
                  help="Malignant over benign (or the reverse); n/a when a class has no image.")
if absence := dataset_views.absence_note(images):
    st.warning(absence)

source_line = dataset_views.source_line(images, folder)
views, balancing, thumbnails = st.tabs(["Class balance", "After balancing", "Thumbnails"])
with views:
    left, right = st.columns(2)
    left.plotly_chart(dataset_views.class_figure(images, source=source_line), key="class_figure")
    right.plotly_chart(dataset_views.subtype_figure(images, source=source_line), key="subtype_figure")
    left.plotly_chart(dataset_views.magnification_figure(images, source=source_line), key="magnification_figure")
    right.plotly_chart(dataset_views.case_figure(images, source=source_line), key="case_figure")

with balancing:
    synthetic = registry.synthetic_folder()
    try:
        train, versions = balanced(images, synthetic)
    except ValueError as problem:  # Too few cases to split patient-wise.
        st.warning(f"Cannot show balancing for this data: {problem}")
    else:
        st.caption(dataset_views.training_caption(train) + " What a new training run on these images would see, "
                   "not what the active model learnt from (above).")
        training = dataset_views.source_line(train, folder, what="training image")
        st.markdown(f"**Pipeline {retrain.PIPELINE_LABELS['tfdata']}**", help=pipeline_help("tfdata"))
        st.plotly_chart(dataset_views.strategy_figure(versions, training), key="strategy_figure")
        st.dataframe(dataset_views.strategy_summary(versions), hide_index=True)
        st.markdown(f"**Pipeline {retrain.PIPELINE_LABELS['fields']}**", help=pipeline_help("fields"))
        st.caption(dataset_views.fields_caption())
        fields = dataset_views.fields_versions(versions)
        st.plotly_chart(dataset_views.strategy_figure(fields, training, "What the fields pipeline's subtype loss "
                                                      "sees per epoch (draws x loss weight)"), key="fields_figure")
        st.dataframe(dataset_views.strategy_summary(fields), hide_index=True)
        if synthetic:
            st.caption(f"GAN fill uses the synthetic images in {synthetic}.")
            if missing := dataset_views.shortfall_text(versions["synthetic"]):
                st.warning(f"GAN fill falls short: {missing}, because the folder has too few GAN images of "
                           "those subtypes; they stay that much smaller than the largest.")

with thumbnails:
    if source == FULL_SET:
        st.caption("The full archive is not bundled; thumbnails come from the bundled real samples.")
    chosen = {} if thumbnail_source is None else dataset_views.thumbnails(thumbnail_source, per_subtype=4)
    if thumbnail_source is None:
        st.warning(samples_problem)
    for subtype in SUBTYPES if chosen else ():
        st.markdown(f"**{pretty(subtype)}**")
        if chosen[subtype]:
            st.image(chosen[subtype], width=160, caption=[Path(p).name for p in chosen[subtype]])
        else:
            st.caption("No image file available for this subtype.")
