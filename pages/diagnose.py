"""Diagnose: upload images or pick samples; stage 1, stage 2, heat maps, case table, downloads."""

import pandas as pd
import streamlit as st

from core.app import pdf_report, records, registry, report, service, session, slides
from core.data.histology import NOT_ANALYSED
from core.data.labels import pretty
from core.errors import UserInputError
from core.model.cam import METHODS
from core.model.decisions import referral_rule, threshold_text
from core.model.heatmap import COLOUR_SCALE, colour_bar, overlay
from core.model.predict import DEFAULT_REFER_THRESHOLD, figure
from core.slide.export import heatmap_rgb

session.require_router()
session.require("diagnose")

METHOD_NAMES = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "scorecam": "Score-CAM"}
# Methods that draw each image's maps anew (Grad-CAM comes with the diagnosis pass) -> their time per image, as
# measured on a 2-core CPU server with the bundled model: Score-CAM 0.7-2.2 s, Grad-CAM++ 0.2-0.8 s, the first more.
SLOW_METHODS = {"scorecam": "a few seconds per image", "gradcam++": "up to about a second per image"}
PROBABILITY = st.column_config.ProgressColumn("probability", min_value=0.0, max_value=1.0, format="%.3f")
# The settings' widgets and their first values. Streamlit drops the state of a widget its page did not draw (a
# visit to another page): each is kept in a plain session key too, as session.keep_choices keeps the samples.
DEFAULTS = {"method": METHODS[0], "opacity": 0.45, "own_threshold": False, "threshold": DEFAULT_REFER_THRESHOLD,
            "tta": False, "magnification": registry.NOT_STATED, "report_patient": "", "report_specimen": "",
            "report_reviewer": ""}
KEPT, SHOWN_RULE = "_diagnose_settings", "_diagnose_referral_rule"


def remembered(widget, key: str, *args, **kwargs):
    """`widget(*args, key=key)` given back the value the user left it at on an earlier visit (else DEFAULTS'),
    its value then kept for the next visit."""
    kept = st.session_state.setdefault(KEPT, {})
    if key not in st.session_state:
        st.session_state[key] = kept.get(key, DEFAULTS[key])
    value = widget(*args, key=key, **kwargs)
    kept[key] = st.session_state[key]
    return value


@st.cache_data(show_spinner=False, max_entries=8)
def training_samples(samples: dict, folder: str, stamp: float) -> tuple[list[str], str | None]:
    """registry.training_samples, read once per model folder as it stands (its run's list of training images)."""
    return registry.training_samples(samples, folder)


st.title("Diagnose")
predictor = session.require_predictor()
model = registry.describe_model(predictor.card)
model["calibrated"] = records.calibrated(predictor)  # an ensemble's are its members' (its card has no temperatures)
normalizer = predictor.normalizer  # fitted at training (core.data.stain); "none" for most models
if model["limited"] and not predictor.is_demo:
    st.warning(f"LIMITED DATA model: {model['evidence']}. Measured: {model['measured'] or 'not evaluated'}. "
               "Every call needs a pathologist's review.", icon=":material/warning:")
if predictor.is_demo:
    st.error("DEMO model: it demonstrates the app and has no valid accuracy. Its output is not a "
             "diagnosis.", icon=":material/warning:")

inputs, settings = st.columns([3, 2], gap="large")
with inputs:
    uploader_was_shown = "uploads" in st.session_state
    uploads = st.file_uploader("Microscopy images (PNG, JPG or TIFF)", accept_multiple_files=True,
                               key="uploads", help="Kept in memory only; never saved on the server.")
    uploaded, earlier = session.uploads_across_pages(uploader_was_shown,
                                                       [(f.name, f.getvalue()) for f in uploads or []])
    if earlier:
        note, forget = st.columns([4, 1], vertical_alignment="center")
        note.caption(f"Still here from before you visited another page (in memory only): "
                     f"{', '.join(session.plain(name) for name, _ in earlier)}")
        if forget.button("Forget them", key="forget_uploads"):
            session.forget_earlier_uploads()
            st.rerun()
    samples = registry.sample_items()
    session.restore_choices("samples", list(samples))  # after another page, or a run the model stopped
    learnt, learnt_note = training_samples(samples, session.active_model(), registry.stamp(session.active_model()))
    chosen = st.multiselect("...or bundled BreakHis samples", list(samples), key="samples", help=learnt_note,
                            format_func=lambda name: f"{name} · training image" if name in learnt else name)
    session.keep_choices("samples")
    if learnt_note:
        st.caption(learnt_note)
with settings:
    method = remembered(st.selectbox, "method", "Heat-map method", METHODS,
                        format_func=lambda m: METHOD_NAMES.get(m, m))
    slow_note = st.empty()  # how long the chosen method takes, said once the images are known
    opacity = remembered(st.slider, "opacity", "Heat-map opacity", 0.0, 1.0, step=0.05)
    threshold = None
    if remembered(st.toggle, "own_threshold", "Use my own referral threshold for both stages"):
        threshold = remembered(st.slider, "threshold", "Refer a stage below this probability", 0.5, 0.99, step=0.01)
    stage1_t, subtype_t, source = predictor.stage_thresholds(threshold)  # the ones in use, the user's included
    rule = referral_rule(stage1_t, subtype_t, source)
    st.caption(rule)
    declared = predictor.tta_fixed()  # the card's views hold the 8 symmetries: always on, and shown so
    tta_text, tta_help = report.tta_label(predictor)
    if declared:
        tta = st.toggle(tta_text, value=True, disabled=True, key="tta_declared", help=tta_help)
    else:
        tta = remembered(st.toggle, "tta", tta_text, help=tta_help)
    magnification = remembered(st.selectbox, "magnification", "Magnification of images whose names do not state it",
                               registry.magnification_options())
shown_rule = st.session_state.get(SHOWN_RULE)
if shown_rule is not None and shown_rule != rule:  # another model, or the user's own threshold switched on or off
    st.info(f"The referral rule in force has changed. Now: {rule} Before: {shown_rule}", icon=":material/rule:")
st.session_state[SHOWN_RULE] = rule

items, repeats = service.distinct_items(uploaded + [(samples[s].name, samples[s].read_bytes()) for s in chosen])
if repeats:
    st.info("Given more than once, analysed once: " + ", ".join(
        session.plain(name) + ("" if name == first else f" (as {session.plain(first)})")
        for name, first in dict.fromkeys(repeats)) + ".",
        icon=":material/content_copy:")
if not items:
    st.info("Upload one or more images, or pick a bundled sample, to get a diagnosis." if samples else
            "Upload one or more images to get a diagnosis (the bundled samples, assets/samples, are missing here).")
    st.stop()

with st.spinner("Classifying..."):
    results = session.diagnose_in_session(predictor, items, tta=tta, refer_threshold=threshold,
                                            magnification=magnification)
for failed in (r for r in results if r.error):
    st.error(session.plain(failed.error), icon=":material/block:")  # it quotes the file name
# Uploads much larger than the field the model was trained on are analysed as tiles at its scale
# (core.slide), not squashed into one input; they leave the per-image table, cases and report.
stated = None if magnification == registry.NOT_STATED else magnification
reasons = [slides.tile_reason(predictor.card, r, stated) for r in results]
for refused, reason in zip(results, reasons):
    if refused.not_histology and not reason:
        st.warning(f"{session.plain(refused.name)}: {NOT_ANALYSED} ({refused.not_histology}). No call and no heat map; "
                   "it does not count in its case.", icon=":material/block:")
tiled = [(r, reason, data) for r, reason, (_, data) in zip(results, reasons, items) if reason]
results = [r for r, reason in zip(results, reasons) if not reason]
analysed = [r for r in results if r.ok]
if method in SLOW_METHODS and analysed:
    slow_note.caption(f"{METHOD_NAMES[method]} draws each image's heat maps anew: {SLOW_METHODS[method]} on this "
                      f"server, for {len(analysed)} image(s) here. Grad-CAM comes with the diagnosis, at no wait.")
audit_ids = session.audit_diagnosis(predictor, results, items, records.diagnosis_settings(
    predictor, tta, threshold, magnification))  # one audit row per shown result


def tiled_analysis(result, data: bytes) -> tuple:
    """(core.slide result or its error, the audit id of its slide row): this session's analysis of an
    upload analysed as tiles, made once (the upload stays in its memory)."""
    key = ("_tiled", session.model_identity(predictor), result.digest, stated)
    if key not in st.session_state:
        with st.spinner(f"Analysing the tiles of {session.plain(result.name)}..."):
            try:
                st.session_state[key] = slides.analyse_upload(predictor, result.name, data, stated)
            except UserInputError as problem:
                st.session_state[key] = str(problem)
    tiles = st.session_state[key]
    if isinstance(tiles, str):
        return tiles, None
    # Settings that made the call only (as on the Slide page): the opacity is how it is drawn, and in
    # the key of the one row per run, every move of its slider appended another row.
    return tiles, session.audit_slide(predictor, result.name, result.sha256, {"tiled_upload": True, **tiles.call},
                                      {"magnification": stated})


tiled = [(r, reason, *tiled_analysis(r, data)) for r, reason, data in tiled]
elsewhere = report.elsewhere_rows([(r, tiles if isinstance(tiles, str) else tiles.call, audit_id)
                                   for r, _, tiles, audit_id in tiled], repeats)
table = report.results_table(results, registry.model_badge(predictor.card), model["subtype_reliable"], audit_ids,
                             elsewhere)
cases = report.case_calls(results, threshold, predictor.case_threshold, model["subtype_reliable"])

if len(table) > 1:  # the uploads analysed as tiles or given twice have their rows too
    st.subheader("Case table")
    st.dataframe(report.shown_table(table), hide_index=True,
                 column_config={"reasons": st.column_config.TextColumn("reasons", width="large"),
                                "confidence": st.column_config.Column("confidence", help=report.CONFIDENCE_HELP)})
    st.subheader("Case-level call")
    st.caption(report.case_rule(predictor.card, predictor.case_threshold))
    if len(cases):
        st.dataframe(cases, hide_index=True,
                     column_config={"reasons": st.column_config.TextColumn("reasons", width="large"),
                                    "confidence": st.column_config.Column("confidence", help=report.CONFIDENCE_HELP)})
    uncased = report.uncased_note(results)
    if uncased:
        st.caption(session.plain(uncased))  # it names the files


def probabilities(values: dict[str, float], column: str) -> None:
    frame = pd.DataFrame({column: [pretty(k) for k in values], "probability": list(values.values())})
    st.dataframe(frame, hide_index=True, column_config={"probability": PROBABILITY})


def heat_maps(result) -> tuple | None:
    try:
        if method not in SLOW_METHODS:
            return session.explanations(predictor, result, method)
        with st.spinner(f"Drawing the {METHOD_NAMES[method]} heat maps of {session.plain(result.name)} "
                        f"({SLOW_METHODS[method]} on this server)...", show_time=True):
            return session.explanations(predictor, result, method)
    except Exception as problem:  # Heat maps are an aid; a failure must not hide the result.
        st.warning(f"Heat maps unavailable for this image ({type(problem).__name__}: {problem}).")
        return None


def uncertainty_text(uncertainty: dict, limit: float | None) -> tuple[str, str]:
    """(caption, tooltip) of how much the views (or members) disagree: plain words first; the measures, spread
    and mutual information, in the tooltip for whoever needs them."""
    spread, views, source = uncertainty["p_malignant_spread"], uncertainty["views"], uncertainty["source"]
    measures = (f"Spread: the standard deviation of p(malignant) across the {views} {source}, "
                f"{figure(spread)}. Mutual information between the prediction and the view (BALD): "
                f"{figure(uncertainty['mutual_information'])} nats, the part of the prediction's entropy that comes "
                "from the views disagreeing.")
    if limit is None:
        return (f"Model uncertainty: its {views} {source} spread (standard deviation) {figure(spread)} in "
                "p(malignant) (no referral limit is set for it).", measures)
    high = spread > limit
    return (f"Model uncertainty is **{'high' if high else 'low'}**: its {views} {source} "
            f"{'disagree' if high else 'agree'} (spread {figure(spread)}; an image is referred above "
            f"{threshold_text(limit)}, {registry.uncertainty_rule(predictor.card)}).", measures)


def show(result, index: int) -> None:
    p = result.prediction
    with st.container(border=True):
        st.markdown(f"#### {session.plain(result.name)}")
        demo = "DEMO model · " if predictor.is_demo else ("LIMITED DATA model · " if model["limited"] else "")
        stage1, subtype = registry.stage_calls(p, model["subtype_reliable"])
        calibrated = " (calibrated probabilities)" if model["calibrated"] else ""
        st.markdown(f"{demo}**{stage1}** · {subtype} · {report.magnification_text(result)}{calibrated}")
        hint = slides.scale_hint(result.name, result.image.upright_size, stated)
        if hint:
            st.info(session.plain(hint), icon=":material/straighten:")  # it names the file
        if not model["subtype_reliable"]:
            st.caption(f"{model['subtype_note']}. Its most probable subtype, {pretty(p.subtype)} "
                       f"({p.p_subtype:.2f}), is shown below for context only.")
        if p.uncertainty:
            text, measures = uncertainty_text(p.uncertainty, predictor.uncertainty_threshold)
            st.caption(text, help=measures)
        elif len(predictor.members) == 1:
            st.caption("Uncertainty: switch on test-time augmentation to see how much the 8 views disagree.")
        for line, refer in report.referral_lines(p, result.warnings):  # per stage, with reasons and thresholds
            (st.error if refer else st.success)(line, icon=":material/flag:" if refer else ":material/check:")
        for warning in result.warnings:
            st.warning(warning, icon=":material/report:")
        picture, picture_caption = result.display, "Image"
        if normalizer.method != "none":
            st.caption(f"Stain normalisation used: {normalizer.method} to {normalizer.fitted_on or 'its reference'}; "
                       "the H&E check ran on the original image.")
            if st.toggle("Show the image after stain normalisation (what the model saw)", key=f"stain_{index}"):
                picture, note = normalizer(result.display)
                picture_caption = "After stain normalisation" + (f" ({note})" if note else "")
        columns = st.columns(3)
        # Shown at display size (core.app.service.DISPLAY_MAX_SIDE) and sent as JPEG: a PNG of each
        # full-size image and overlay cost more to encode and send than the diagnosis itself.
        columns[0].image(picture, caption=picture_caption, width="stretch", output_format="JPEG")
        maps = heat_maps(result)
        if maps:
            name = METHOD_NAMES.get(method, method)
            for column, stage, explanation in zip(columns[1:], (1, 2), maps):
                column.image(overlay(result.display, explanation.heatmap, opacity), width="stretch", output_format="JPEG",
                             caption=report.heatmap_caption(stage, name, explanation, model["subtype_reliable"]))
            scale_bar, scale_text = st.columns([1, 2], vertical_alignment="center")
            scale_bar.image(colour_bar(), caption="low -> high", width="stretch")
            scale_text.caption(COLOUR_SCALE)
        left, right = st.columns(2)
        with left:
            st.markdown("**Stage 1: benign or malignant**")
            probabilities(p.stage1, "class")
        with right:
            st.markdown(f"**Stage 2: {pretty(p.label).lower()} subtype**")
            probabilities(p.stage2, "subtype")
            if st.toggle("Show the other branch", key=f"other_{index}"):
                st.caption("Subtype probabilities of the class stage 1 did not choose (for context).")
                probabilities(p.other_stage2, "other subtype")
        if result.notes:
            st.caption("Notes: " + "; ".join(result.notes))
        session.review_form(audit_ids.get(records.audit_key(result)), f"dx_{index}")


def show_tiled(result, reason: str, tiles, audit_id: int | None) -> None:
    with st.container(border=True):
        st.markdown(f"#### {session.plain(result.name)}")
        st.info(session.plain(reason) + " The Slide page shows the same analysis with every tile.",
                icon=":material/grid_view:")
        if isinstance(tiles, str):
            st.error(session.plain(tiles), icon=":material/block:")
            return
        demo = "DEMO model · " if predictor.is_demo else ("LIMITED DATA model · " if model["limited"] else "")
        st.caption(f"Audit #{audit_id}")
        headline, explained = slides.call_text(tiles.call)
        st.markdown(demo + headline.replace("Slide call", "Call over the tiles"))
        st.caption(explained)
        st.image(heatmap_rgb(tiles, opacity), caption="p(malignant) per tile over the image", width="stretch",
                 output_format="JPEG")
        for warning in result.warnings:  # the whole image's, as a field's card shows them
            st.warning(session.plain(warning), icon=":material/warning:")
        if result.notes:
            st.caption("Notes: " + session.plain("; ".join(result.notes)))


for index, result in enumerate(analysed):
    show(result, index)
for result, reason, tiles, audit_id in tiled:
    show_tiled(result, reason, tiles, audit_id)

if analysed:
    st.subheader("Downloads")
    st.caption("Built in memory; nothing is stored on the server.")
    left, right = st.columns(2)
    left.download_button("Results (CSV)", report.results_csv(table), "breakhis_results.csv",
                         "text/csv", key="download_csv")
    with right:
        ids = st.columns(3)
        details = pdf_report.ReportDetails(
            patient_id=remembered(ids[0].text_input, "report_patient", "Patient id").strip(),
            specimen_id=remembered(ids[1].text_input, "report_specimen", "Specimen id").strip(),
            reviewer=remembered(ids[2].text_input, "report_reviewer", "Reviewing pathologist").strip())
        controls = (method, opacity, details)  # what the report is drawn with
        if st.button("Prepare report", key="prepare_report"):
            with st.spinner("Drawing the report..."):
                overlays = {}
                for result in analysed:
                    maps = heat_maps(result)
                    if maps:
                        overlays[result.digest] = tuple(overlay(result.display, m.heatmap, opacity) for m in maps)
                missing = [r.name for r in analysed if r.digest not in overlays]
                if missing:
                    session.drop_report()
                    st.error("The report was not prepared: heat maps failed for "
                             + ", ".join(map(session.plain, missing)) + ".",
                             icon=":material/block:")
                else:
                    session.keep_report(controls, pdf_report.build_report(results, overlays, cases, model, details,
                                                                      audit_ids, METHOD_NAMES.get(method, method),
                                                                      elsewhere))
        pdf, stale = session.prepared_report(controls)
        if pdf is not None:
            st.download_button("Report (PDF)", pdf, "breakhis_report.pdf", "application/pdf", key="download_report")
        elif stale:
            st.caption("The heat-map method, opacity or report details changed: prepare the report again.")
