"""Compare models: trained runs side by side, only on the same split protocol and test cases."""

import streamlit as st

from core.app import comparison, glossary, registry, session

session.require_router()
session.require("compare")



def table(frame) -> None:
    """A side-by-side table whose technical columns and entries (pooled out-of-fold, macro F1) are defined in the
    tooltips of their headers."""
    st.dataframe(frame, hide_index=True, column_config={
        column: st.column_config.Column(glossary.column_label(column), help=glossary.column_help(column) if
                                        column in glossary.COLUMNS else glossary.explain(column))
        for column in frame.columns if column in glossary.COLUMNS or glossary.explain(column)})


st.title("Compare models")
folders = registry.available_models()
labels = {folder: f"{registry.short_location(folder)}" for folder in folders}
chosen = st.multiselect("Models to compare", folders, format_func=labels.get, key="compare_models",
                        default=folders[:2])
if len(chosen) < 2:
    st.info("Pick two or more models. Runs are compared only on the same held-out images.")
    st.stop()

runs = []
for folder in chosen:
    try:
        runs.append(comparison.load_run(folder))
    except Exception as problem:  # a broken folder is named, the others are still compared
        st.error(f"{labels[folder]} cannot be read: {problem}")
        continue
    for problem in runs[-1].problems:
        st.warning(problem)
runs = comparison.distinct_names(runs)
demo = [run.name for run in runs if run.demo]
if demo:
    st.warning(f"DEMO model{'s' if len(demo) > 1 else ''} {', '.join(demo)}: a DEMO model exists to show how the "
               "app works and has NO valid accuracy (not trained and evaluated on enough real data), so, as on the "
               f"Model performance page, {'their' if len(demo) > 1 else 'its'} figures are not shown.",
               icon=":material/warning:")
unusable = {run.name: comparison.weights_problem(run) for run in runs}
for name, problem in unusable.items():
    if problem:
        st.error(f"{name} cannot be made active: {problem}. Diagnose's loader refuses such a model, so it is not "
                 "offered here; its figures below are those of the model its card describes.",
                 icon=":material/gpp_bad:")
groups = comparison.comparable_groups(runs)
unevaluated = groups.pop(None, [])
if unevaluated:
    st.warning("Not evaluated, so not compared: " + ", ".join(run.name for run in unevaluated))
same_folds = comparison.cross_validation_groups(runs)
if len(groups) > 1:
    st.warning("These models were evaluated on different test images (another split, seed or data set), so "
               "their numbers are not comparable: each group below is shown on its own."
               + (" Those cross-validated on the same folds are compared on them, in the last groups."
                  if same_folds else ""), icon=":material/warning:")

for index, ((protocol, _), members) in enumerate(groups.items()):
    title = comparison.group_title(index, protocol, members)
    st.subheader(title, help=glossary.explain(title))
    try:
        table(comparison.metrics_side_by_side(members))
    except (KeyError, TypeError, AttributeError, ValueError, IndexError) as problem:  # a block edited by hand
        st.warning(f"The metrics of {', '.join(run.name for run in members)} hold a block of an unexpected shape "
                   f"({type(problem).__name__}: {problem}): their table is left out.")
    differences = comparison.config_differences(members)
    if len(members) > 1:
        st.markdown("**Where their settings differ**")
        if len(differences):
            st.dataframe(differences.astype(str), hide_index=True)
        else:
            st.caption("Same settings.")
    long = comparison.curves(members)
    if len(long):
        st.plotly_chart(comparison.curves_figure(long), key=f"compare_curves_{index}")
    columns = st.columns(len(members))
    for column, run in zip(columns, members):
        column.caption(run.badge, help=glossary.explain(run.badge))
        if session.active_model() == str(run.folder):
            column.success(f"{run.name} is active")
        elif unusable[run.name]:
            column.caption(f"{run.name} cannot be made active (its model file fails the check above)")
        else:
            column.button(f"Make {run.name} active", key=f"activate_{index}_{run.name}",
                          on_click=session.set_active_model, args=(run.folder,))

for index, members in enumerate(same_folds):
    st.subheader(comparison.cross_validation_title(index, members))
    caption = comparison.cross_validation_data(members)
    st.caption(caption, help=glossary.explain(caption))
    try:
        table(comparison.cross_validation_side_by_side(members))
    except (KeyError, TypeError, AttributeError, ValueError, IndexError) as problem:  # a cv.json edited by hand
        st.warning(f"The cross-validations of {', '.join(run.name for run in members)} hold a block of an unexpected "
                   f"shape ({type(problem).__name__}: {problem}): their table is left out.")
