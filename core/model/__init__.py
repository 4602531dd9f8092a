"""core.model: the classifier and everything that runs it.

backbones (the registry: one entry per backbone), classifier (the multi-scale hierarchical model),
folders (model.keras + card.json, one format for classifiers and generators), predict (Predictor,
the case-level rule), cam (Grad-CAM / Grad-CAM++ / Score-CAM per stage, overlays).
"""

from core.model.backbones import BACKBONES, DEFAULT_BACKBONE, get_backbone
from core.model.cam import METHODS, Diagnosis, Explanation, explain, overlay
from core.model.classifier import build_classifier
from core.model.folders import (
                                CLASSIFIER,
                                GENERATOR,
                                ModelFolderError,
                                load_model_folder,
                                read_card,
                                save_model_folder,
                                update_card,
)
from core.model.predict import DEFAULT_REFER_THRESHOLD, Prediction, Predictor, case_decision

__all__ = [
    "BACKBONES", "CLASSIFIER", "DEFAULT_BACKBONE", "DEFAULT_REFER_THRESHOLD", "GENERATOR", "METHODS", "Diagnosis",
    "Explanation", "ModelFolderError", "Prediction", "Predictor", "build_classifier", "case_decision", "explain",
    "get_backbone", "load_model_folder", "overlay", "read_card", "save_model_folder", "update_card",
]
