"""core.app: the logic behind the Streamlit pages, importable and tested without Streamlit.

registry (which models, generators and samples exist; how to describe a model), service (the
diagnosis of uploaded files), report (case table and CSV), pdf_report (the downloadable report),
performance (metric tables with their protocol), dataset_views (class-balance figures), jobs (one
background training process) and job_end (its end in the audit trail), cli_predict and cli_models
(the `predict` and model-folder commands of `python -m core`). Only the per-session glue imports
Streamlit: session (with signin and audit_glue, whose names it re-exports): import it from pages.

Thin on purpose: import the module you need, e.g. `from core.app.service import diagnose_items`.
Importing the package loads nothing else, so a light module (the progress stream, the jobs
code) never pulls in TensorFlow.
"""
