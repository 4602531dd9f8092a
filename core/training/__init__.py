"""core.training: from a folder of images to an evaluated model folder.

config (TrainConfig: the one definition of a run's options), fit (the training job), progress
(the JSON-lines stream the app follows), calibrate_run (temperatures on the validation split),
crossval, compare, tuning and ensemble_run (runs made of runs), recipes (how the bundled default
model is made). Evaluating a run is core.evaluation's job.
"""

from core.evaluation.evaluate import evaluate_run
from core.training.config import TrainConfig
from core.training.fit import Cancelled, train
from core.training.progress import ProgressWriter, latest_state, read_progress
from core.training.recipes import make_default

__all__ = ["Cancelled", "ProgressWriter", "TrainConfig", "evaluate_run", "latest_state", "make_default",
           "read_progress", "train"]
