"""Probabilities that mean what they say: temperature scaling per head, and how to measure it.

Temperature scaling (Guo et al., 2017) divides a head's logits by one number T fitted on the
validation split, so an over-confident head (T > 1) is softened and the arg-max, hence the
accuracy, never changes. The heads output softmax probabilities, and softmax(log p / T) is
exactly softmax(logits / T), so it works on saved probabilities. Written here (20 lines of
NumPy/SciPy) rather than with netcal, whose install pulls in PyTorch and Pyro, or scikit-learn,
whose CalibratedClassifierCV wraps scikit-learn estimators, not a Keras model's outputs.

ECE is the top-label expected calibration error over 15 equal-width confidence bins; Brier is the
mean squared distance between the probability vector and the one-hot truth.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar

ECE_BINS = 15
TEMPERATURE_RANGE = (0.05, 20.0)


def apply_temperature(probabilities, temperature: float) -> np.ndarray:
    """softmax(log(p) / T) row-wise; T = 1 returns the input (renormalised)."""
    logits = np.log(np.clip(np.asarray(probabilities, np.float64), 1e-12, 1.0)) / float(temperature)
    logits -= logits.max(axis=-1, keepdims=True)
    exp = np.exp(logits)
    return (exp / exp.sum(axis=-1, keepdims=True)).astype(np.float32)


def fit_temperature(probabilities, targets) -> float:
    """The T that minimises the negative log-likelihood of the integer targets (bounded search)."""
    probabilities, targets = np.asarray(probabilities, np.float64), np.asarray(targets, np.int64)
    if len(targets) == 0:
        return 1.0

    def nll(log_t):
        scaled = apply_temperature(probabilities, np.exp(log_t))
        return -np.mean(np.log(np.clip(scaled[np.arange(len(targets)), targets], 1e-12, 1.0)))

    low, high = np.log(TEMPERATURE_RANGE)
    return float(np.exp(minimize_scalar(nll, bounds=(low, high), method="bounded").x))


def reliability(probabilities, targets, bins: int = ECE_BINS) -> dict:
    """Top-label reliability: per confidence bin its mean confidence, accuracy and count; and the ECE."""
    probabilities, targets = np.asarray(probabilities), np.asarray(targets)
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == targets
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    table = {"confidence": [], "accuracy": [], "count": [], "edges": edges.round(4).tolist()}
    ece = 0.0
    for b in range(bins):
        members = which == b
        count = int(members.sum())
        table["count"].append(count)
        table["confidence"].append(float(confidence[members].mean()) if count else None)
        table["accuracy"].append(float(correct[members].mean()) if count else None)
        if count:
            ece += count / len(targets) * abs(confidence[members].mean() - correct[members].mean())
    return {"ece": float(ece), "bins": table}


def brier(probabilities, targets) -> float:
    """The multi-class Brier score: squared errors summed over the classes, averaged over the images (0 to 2;
    for two classes twice the binary (p - y)^2 form; core.app.glossary.BRIER says so where it is shown)."""
    probabilities, targets = np.asarray(probabilities), np.asarray(targets)
    onehot = np.eye(probabilities.shape[1])[targets]
    return float(np.mean(np.sum((probabilities - onehot) ** 2, axis=1)))
