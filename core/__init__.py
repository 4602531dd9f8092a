"""Hierarchical BreakHis histopathology classifier: data, model, training, evaluation, prediction.

Every part of the project (CLI, Streamlit app, GAN, retraining job) imports from here, so labels,
preprocessing and input size have exactly one definition (see `core.labels`).
"""
