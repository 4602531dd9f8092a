"""Several looks at one image, and how much they disagree: test-time views and ensemble members.

Test-time augmentation runs the model on the 8 dihedral views of each image (the symmetries
training augments with, core.data.augment.dihedral) in ONE batch; an ensemble runs each member.
Either way the prediction is the mean, and every view's (or member's) output is kept under
`name + VIEWS` (N, views, k) for the uncertainty: how much they disagree about p(malignant).
No other core.model module is imported here, so the Predictor, the ensemble and Grad-CAM can all
import it.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from core.data.augment import SYMMETRIES, dihedral
from core.data.labels import CLASSES

VIEWS = "@views"  # suffix of the per-view (TTA) or per-member (ensemble) outputs: (N, views, k)


def dihedral_views(images):
    """(N,S,S,3) -> (8N,S,S,3): the 8 symmetries of each image, view-major; the first N are the
    images themselves."""
    return tf.concat([dihedral(images, *symmetry) for symmetry in SYMMETRIES], axis=0)


def mean_over_views(outputs: dict) -> dict:
    """Head outputs of a dihedral_views batch {name: (8N, k)} -> the mean of the 8 views per head
    (N, k), and every view (N, 8, k) under name + VIEWS for the uncertainty."""
    views = {name: tf.reshape(p, (len(SYMMETRIES), -1, p.shape[-1])) for name, p in outputs.items()}
    return {**{name: tf.reduce_mean(v, axis=0) for name, v in views.items()},
            **{name + VIEWS: tf.transpose(v, [1, 0, 2]) for name, v in views.items()}}


def mean_over_members(outputs: list[dict]) -> dict[str, np.ndarray]:
    """The members' calibrated head outputs [{name: (N, k)}] -> their mean per head, and every
    member's under name + VIEWS (N, members, k)."""
    heads = [name for name in outputs[0] if not name.endswith(VIEWS)]
    stacked = {name: np.stack([o[name] for o in outputs], axis=1) for name in heads}
    return {**{name: v.mean(axis=1) for name, v in stacked.items()},
            **{name + VIEWS: v for name, v in stacked.items()}}


def uncertainty_of(class_views: np.ndarray, source: str) -> dict:
    """Disagreement of the views' p(class) (views, 2): the spread (standard deviation) of
    p(malignant), and the mutual information between the prediction and the view (BALD, in nats):
    entropy of the mean minus the mean entropy."""
    p = np.clip(np.asarray(class_views, np.float64), 1e-12, 1.0)
    mean = p.mean(axis=0)
    mutual = float(-(mean * np.log(mean)).sum() + (p * np.log(p)).sum(axis=1).mean())
    return {"p_malignant_spread": float(p[:, CLASSES.index("malignant")].std()),
            "mutual_information": max(mutual, 0.0), "views": int(len(p)), "source": source}


def mean_over_crops(outputs: dict, crops: int) -> dict[str, np.ndarray]:
    """Outputs of crops_per_image consecutive inputs per image {name: (N*C, k)} (and their views
    (N*C, V, k)) -> per image: the mean (N, k), and every crop x view under name + VIEWS (N, C*V, k).
    One crop: unchanged."""
    if crops == 1:
        return {name: np.asarray(p) for name, p in outputs.items()}
    merged = {}
    for name, p in sorted(outputs.items(), key=lambda item: not item[0].endswith(VIEWS)):
        p = np.asarray(p)
        if name.endswith(VIEWS):
            merged[name] = p.reshape(-1, crops * p.shape[1], p.shape[-1])
        else:
            grouped = p.reshape(-1, crops, p.shape[-1])
            merged[name] = grouped.mean(axis=1)
            merged.setdefault(name + VIEWS, grouped)
    return merged
