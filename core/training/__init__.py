"""core.training: from a folder of images to an evaluated model folder.

config (TrainConfig: the one definition of a run's options), fit (the training job), progress
(the JSON-lines stream the app follows), calibrate_run (temperatures on the validation split),
crossval, compare, tuning and ensemble_run (runs made of runs), recipes (how the bundled default
model is made), field_fit and field_run (the field recipe, TensorFlow-free: it trains under JAX too),
additions (reviewed and GAN images added to training patients only). Evaluating a run is core.evaluation's job.

Thin on purpose: import the module you need, e.g. `from core.training.fit import train`.
Importing the package loads nothing else, so a light module (the progress stream, the jobs
code) never pulls in TensorFlow.
"""
