"""core.app: the logic behind the Streamlit pages, importable and tested without Streamlit.

registry (which models, generators and samples exist; how to describe a model), service (the
diagnosis of uploaded files), report (case table, CSV and the downloadable report), performance
(metric tables with their protocol), dataset_views (class-balance figures), jobs (one background
training process). Only session, the per-session glue, imports Streamlit: import it from pages.
"""

from core.app.registry import available_models, describe_model, generator_folders, model_badge
from core.app.service import ImageResult, diagnose_items

__all__ = ["ImageResult", "available_models", "describe_model", "diagnose_items", "generator_folders", "model_badge"]
