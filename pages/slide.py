"""Slide: a whole-slide image or large field as tiles at the model's scale; heat map, tiles, call."""

import hashlib
import logging

import streamlit as st

from core.app import registry, report, session, slides
from core.model.heatmap import COLOUR_SCALE, P_MALIGNANT_SCALE, overlay
from core.slide.call import NOT_CALLED, call_note
from core.slide.predictor import SlidePredictor, TileSettings
from core.slide.reader import SlideError, open_slide

session.require_router()
session.require("slides")
state = st.session_state

# What a slide's "levels" are, for the technical details: the page's own text says "full resolution" instead.
LEVELS = ("Level 0 is the slide's full resolution (the pixels tile coordinates count); levels 1, 2, ... are the "
          "smaller copies a slide file stores, each read faster than the one before.")


def how_read(result) -> str:
    """How many tiles were analysed and at what resolution, in words (the reader's notes say it technically)."""
    level = result.plan.level
    ordinal = {1: "2nd", 2: "3rd"}.get(level, f"{level + 1}th")
    where = ("at full resolution" if level == 0 else
             f"at the {ordinal} resolution level (a smaller copy stored in the file, still as fine as the model needs)")
    return f"{len(result.tiles)} of {len(result.plan.origins)} tiles hold tissue and were analysed, each read {where}."


st.title("Slide")
predictor = session.require_predictor()
model = registry.describe_model(predictor.card)
if predictor.is_demo:
    st.error("DEMO model: it demonstrates the app and has no valid accuracy. Its heat map is not a diagnosis.",
             icon=":material/warning:")
elif model["limited"]:
    st.warning(f"LIMITED DATA model: {model['evidence']}. Measured: {model['measured'] or 'not evaluated'}. "
               "Every call needs a pathologist's review.", icon=":material/warning:")

source, options = st.columns([3, 2], gap="large")
with source:
    found = slides.server_slides()
    if problems := slides.slide_folder_problems():  # the server's paths are for administrators
        st.warning("  \n".join(problems) if (session.current_user() or {}).get("role") == "admin" else
                   f"{len(problems)} slide folder(s) configured on this server cannot be read, so their slides "
                   "are not listed. Ask an administrator.")
    chosen = st.selectbox("Slide on the server", ["(none)", *found], key="slide_pick",
                          help="Whole slides are too large for a browser upload: they are listed from the slide "
                               "folders an administrator configured (BREAKHIS_SLIDE_DIRS).")
    upload = st.file_uploader("...or upload an image or small slide (PNG, JPEG, TIFF)", key="slide_upload",
                              type=["png", "jpg", "jpeg", "tif", "tiff", "svs"],
                              help="Kept in memory only; never saved on the server.")
with options:
    overlap = st.slider("Tile overlap", 0.0, 0.75, 0.0, 0.25, key="slide_overlap")
    min_tissue = st.slider("Least tissue in a tile to analyse it", 0.05, 1.0, 0.25, 0.05, key="slide_tissue")
    magnification = st.selectbox("Magnification, if the file does not state its resolution",
                                 registry.magnification_options(), key="slide_magnification")
    top_k = st.number_input("Most suspicious tiles to explain", 1, 24, 6, key="slide_top_k")

if upload is not None:
    item, name = upload.getvalue(), upload.name
elif chosen != "(none)":
    item, name = str(found[chosen]), chosen
else:
    st.info("Choose a slide on the server or upload an image to analyse it as tiles.")
    st.stop()

settings = TileSettings(overlap=overlap, min_tissue=min_tissue, top_k=int(top_k))
stated = None if magnification == registry.NOT_STATED else magnification
# An upload is known by its content (the audit's SHA-256): another file of the same name and length is new.
digest = hashlib.sha256(item).hexdigest() if isinstance(item, bytes) else None
identity = item if digest is None else f"upload:{digest}"
key = (session.model_identity(predictor), identity, settings, stated)

if st.button("Analyse slide", type="primary", key="slide_start"):
    state["_slide_request"] = key
kept = state.get("_slide_result")
if kept is not None and kept[0] != key:
    kept = None
if kept is None and state.get("_slide_request") == key:
    def cancel():
        state.pop("_slide_request", None)
        state["_slide_cancelled_key"] = key

    cancel_slot = st.empty()  # shown only while the tiles run
    cancel_slot.button("Cancel", key="slide_cancel", on_click=cancel,
              help="Stops after the current batch of tiles; nothing of this run is kept.")
    reading = "Reading the slide and its tissue mask..."
    bar = st.progress(0.0, text=reading if digest else "Hashing the slide file for the audit trail...")
    reader = None
    try:
        file_id = (digest, None)
        if digest is None:  # a server slide: hashed before it is read, so its audit row names what was analysed
            file_id = slides.file_identity(item)
            bar.progress(0.0, text=reading)
        reader = open_slide(item, name=name, magnification=stated)
        result = SlidePredictor(predictor, settings).predict(
            reader, progress=lambda done, total: bar.progress(done / total, text=f"{done} of {total} tissue tiles"))
    except Exception as problem:  # any failure: a message, and the request cleared so a rerun does not repeat it
        state.pop("_slide_request", None)
        bar.empty()  # no progress bar or Cancel button left under the message
        cancel_slot.empty()
        if reader is not None:
            reader.close()
        if isinstance(problem, SlideError):
            st.error(session.plain(problem), icon=":material/block:")  # it quotes the file name
        else:
            logging.getLogger(__name__).exception("slide analysis of %s failed", name)
            st.error(f"The analysis of {session.plain(name)} failed ({type(problem).__name__}: "
                     f"{session.plain(str(problem)[:300])}). Nothing of it was kept; the failure is logged on the "
                     "server. Try another slide or other settings.", icon=":material/error:")
        st.stop()
    bar.empty()
    cancel_slot.empty()
    state.pop("_slide_request", None)
    old = state.pop("_slide_result", None)
    if old is not None:
        old[1].close()
    kept = state["_slide_result"] = (key, reader, result)
    state["_slide_file"] = (key, file_id)
if kept is None:
    if state.get("_slide_cancelled_key") == key:
        st.info("Cancelled: nothing of that run was kept.")
    st.stop()

_, reader, result = kept
call = result.call
# One audit row per run shown, with the SHA-256 of the file's contents: an upload's bytes, a server slide's file
# as hashed before it was read (slides.file_identity: a very large one is identified otherwise, said in the row).
audited = {"overlap": overlap, "min_tissue": min_tissue, "top_k": int(top_k), "magnification": stated}
sha256, how = state["_slide_file"][1]
if how:
    audited["file"] = how
audit_id = session.audit_slide(predictor, name, sha256, dict(call), audited)
st.caption(f"Audit #{audit_id}")
with st.container(border=True):
    badge = "DEMO model · " if predictor.is_demo else ("LIMITED DATA model · " if model["limited"] else "")
    st.markdown(f"#### {session.plain(result.name)}")
    headline, explained = slides.call_text(call)
    st.markdown(badge + headline)
    if note := call_note(call):  # a model that makes no call is not reassured as benign
        st.info(note, icon=":material/info:" if call["label"] == NOT_CALLED else ":material/check_circle:")
    st.caption(explained)
    st.caption(how_read(result))
    with st.expander("How the file was read (technical details)"):
        st.caption(" · ".join(result.notes) + ". " + LEVELS)

opacity = st.slider("Heat-map opacity", 0.0, 1.0, 0.5, 0.05, key="slide_opacity")
event = st.plotly_chart(slides.heatmap_figure(result, opacity), on_select="rerun", selection_mode="points",
                        key="slide_map", width="stretch")
st.caption(P_MALIGNANT_SCALE)
if subtype_caption := slides.subtype_caption(result):
    st.caption(subtype_caption)

driving = slides.driving_region(result)
first = (driving.rows if driving is not None else []) + [t.index for t in result.top]
first = list(dict.fromkeys(first))
rows = first + [r for r in result.tiles.index if r not in first]
picked = [p.get("customdata") for p in (event.selection.points if event else []) if p.get("customdata") is not None]
if picked:
    state["slide_tile"] = int(picked[0][0] if isinstance(picked[0], list) else picked[0])
row = st.selectbox("Tile (the driving region's first, then the most suspicious; or click one on the map)", rows, key="slide_tile",
                   format_func=lambda r: slides.tile_label(result, r))


def explain(tile: int) -> tuple:
    """(image, diagnosis, problem) of a tile: at full resolution; where level 0 cannot be read (a damaged
    pyramid) at the level it was analysed at, with the problem; (None, None, problem) when neither reads.
    After a failed read the slide is opened anew: an OpenSlide handle keeps its first error for good."""
    global reader
    explainer, problem = SlidePredictor(predictor, settings), None
    for level0 in (True, False):
        try:
            return (*explainer.explain_tile(reader, result.plan, tile, level0=level0), problem)
        except Exception as error:  # noqa: BLE001 - a tile that cannot be explained is a message, not a crash
            if not isinstance(error, SlideError):
                logging.getLogger(__name__).exception("explaining tile %s of %s failed", tile, result.name)
            problem = problem or session.plain(error if isinstance(error, SlideError) else
                                               f"The tile could not be explained ({type(error).__name__}: {error}).")
            try:
                reopened = open_slide(item, name=name, magnification=stated)
            except Exception:  # noqa: BLE001 - the message above stands
                break
            reader.close()
            reader = reopened
            state["_slide_result"] = (key, reader, result)
    return None, None, problem


cams_key = ("_slide_tile_cams", key, row)
if state.get("_slide_tile_view", (None,))[0] != cams_key:
    with st.spinner("Explaining the tile..."):
        state["_slide_tile_view"] = (cams_key, *explain(int(result.tiles.at[row, "tile"])))
_, image, diagnosis, problem = state["_slide_tile_view"]
if problem:
    st.warning(problem + (" The tile is shown as the model saw it." if image is not None else ""),
               icon=":material/warning:")
if image is not None:
    columns = st.columns(3)
    seen = "as the model saw it" if problem else "at full resolution"
    columns[0].image(image, caption=f"Tile {seen} ({image.shape[1]}x{image.shape[0]} px)",
                     width="stretch", output_format="JPEG")
    for column, (stage, explanation) in zip(columns[1:], diagnosis.explanations.items()):
        column.image(overlay(image, explanation.heatmap, opacity), width="stretch", output_format="JPEG",
                     caption=report.map_caption(1 if stage == "stage1" else 2, "Grad-CAM", explanation.target,
                                                slides.subtype_reliable(result)))
    st.caption(COLOUR_SCALE)  # the tile's Grad-CAMs: each scaled to its own range, unlike the map above
    st.caption(diagnosis.prediction.summary(slides.subtype_reliable(result)))

st.subheader("Downloads")
st.caption("Built in memory; nothing is stored on the server. Tile coordinates are pixels of the full-resolution "
           "image; the GeoJSON imports into QuPath (File > Import objects) as 'Malignant' annotations (for a model "
           "that makes no slide call: 'Suspicious (model, not called)'), the driving region first, each naming the "
           "model and the call.", help="Coordinates are level-0 pixels, as OpenSlide and QuPath count them. " + LEVELS)
files = slides.downloads(result, opacity, model, audit_id)
for column, (label, data, filename, mime) in zip(st.columns(len(files)), files):
    column.download_button(label, data, filename, mime, key=f"slide_download_{filename}")
