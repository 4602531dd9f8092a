"""One way to load a model for prediction: `load_predictor(folder)`, whatever kind the folder holds.

Like timm's model registry: one factory per kind of model folder (the card's `kind`,
core.model.folders), looked up here, so callers (the app, the CLI, evaluation, calibration, the
benchmarks) never ask which kind they have. A GAN generator is not a predictor: it is refused
with a message.
"""

from __future__ import annotations

import os

from core.errors import ModelFolderError
from core.model.ensemble import EnsemblePredictor
from core.model.folders import CLASSIFIER, ENSEMBLE, KIND_NAMES, card_kind, read_card
from core.model.predict import Predictor
from core.paths import DEFAULT_MODEL_DIR

# card kind -> factory(folder, **options) -> Predictor
PREDICTORS = {CLASSIFIER: Predictor.from_folder, ENSEMBLE: EnsemblePredictor.from_folder}


def load_predictor(folder: str | os.PathLike = DEFAULT_MODEL_DIR, **options) -> Predictor:
    """The Predictor of a classifier or ensemble folder, verified (ModelFolderError with a clear
    message otherwise). options: batch_size, and calibrated=False for raw softmax outputs."""
    kind = card_kind(read_card(folder))
    if kind not in PREDICTORS:
        raise ModelFolderError(f"{folder} holds a {KIND_NAMES.get(kind, kind)}, which cannot classify images")
    return PREDICTORS[kind](folder, **options)
