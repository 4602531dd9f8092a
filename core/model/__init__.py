"""core.model: the classifier and everything that runs it.

backbones (the registry: one entry per backbone), classifier (the multi-scale hierarchical model),
folders (model.keras + card.json, one format for classifiers and generators), archive (a folder as
one zip: export-model / import-model), predict (Predictor, the case-level rule), views (test-time
views and their uncertainty), calibration (temperature scaling, ECE, Brier), ensemble (a Predictor
made of member classifiers), loading (load_predictor: the one factory, keyed by the card's kind),
cam (Grad-CAM / Grad-CAM++ / Score-CAM per stage), heatmap (the maps resized onto the image,
coloured and blended: NumPy and Pillow only).

Thin on purpose: import the module you need, e.g. `from core.model.loading import load_predictor`.
Importing the package loads nothing else, so a light module (the progress stream, the jobs
code) never pulls in TensorFlow.
"""
