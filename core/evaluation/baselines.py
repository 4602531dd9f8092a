"""Two baselines a CNN must beat, evaluated exactly like a model on the same held-out cases.

- majority: every image gets the training split's most common class and, within it, subtype.
- colour/texture: multinomial logistic regression (scikit-learn) on hand-made features of each
  field: colour histograms, H&E stain densities (core.data.stain), local binary pattern
  histograms (core.data.texture) and gradient statistics, standardised, classes weighted. If a CNN
  does not beat this, it has learnt little more than colour and texture.

Both return, per image, p(class) and p(subtype | class), the same quantities a Predictor gives,
so core.evaluation.evaluate scores them with the same code and the same case-level rule.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from core.data.images import ImageError, load_image
from core.data.labels import CLASS_OF_SUBTYPE, CLASSES, SUBTYPES, SUBTYPES_BY_CLASS
from core.data.stain import hed_concentrations
from core.data.texture import lbp_histogram

THUMBNAIL = 256  # features are computed at one scale, whatever the file's size
LBP_SETTINGS = ((8, 1.0), (16, 2.0))  # (neighbours, radius): uniform patterns, rotation invariant


def image_features(rgb: np.ndarray) -> np.ndarray:
    """Colour, stain and texture features of one uint8 RGB field (independent of its pixel size)."""
    small = Image.fromarray(rgb)
    small.thumbnail((THUMBNAIL, THUMBNAIL), Image.Resampling.BILINEAR)
    pixels = np.asarray(small, dtype=np.uint8)
    colour = np.concatenate([np.histogram(pixels[..., c], bins=8, range=(0, 256))[0] / pixels[..., c].size
                             for c in range(3)])
    stains = hed_concentrations(pixels).reshape(-1, 3)
    stain_stats = np.concatenate([stains.mean(0), stains.std(0), np.percentile(stains[:, :2], [10, 50, 90], axis=0).ravel()])
    gray = pixels.mean(axis=-1)
    texture = np.concatenate([lbp_histogram(gray, p, r) for p, r in LBP_SETTINGS])
    gy, gx = np.gradient(gray)
    magnitude = np.hypot(gx, gy)
    gradient = np.array([magnitude.mean(), magnitude.std(), np.percentile(magnitude, 90)]) / 255.0
    return np.concatenate([colour, stain_stats, texture, gradient]).astype(np.float64)


def features_of(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(features of the readable rows, their positions in `rows`)."""
    features, kept = [], []
    for position, path in enumerate(rows["path"]):
        try:
            features.append(image_features(load_image(path, check_histology=False).rgb))
            kept.append(position)
        except (ImageError, OSError):
            continue
    return np.array(features), np.array(kept, dtype=np.int64)


def _class_and_within(joint: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Joint p over the 8 subtypes (SUBTYPES order) -> (p(class) (N, 2), p(subtype | class) (N, 8))."""
    p_class = np.stack([joint[:, [SUBTYPES.index(s) for s in SUBTYPES_BY_CLASS[c]]].sum(1) for c in CLASSES], 1)
    of_class = np.array([CLASSES.index(CLASS_OF_SUBTYPE[s]) for s in SUBTYPES])
    return p_class, joint / np.maximum(p_class[:, of_class], 1e-12)


class Majority:
    """The training split's most common class and subtype, for every image."""

    name = "majority class"

    def fit(self, train: pd.DataFrame) -> "Majority":
        label = train["label"].value_counts().idxmax()
        subtype = train.loc[train["label"] == label, "subtype"].value_counts().idxmax()
        self.joint = np.array([1.0 if s == subtype else 0.0 for s in SUBTYPES])
        return self

    def predict(self, rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(p(class), p(subtype | class), positions of the rows predicted)."""
        joint = np.tile(self.joint, (len(rows), 1))
        smoothed = 0.999 * joint + 0.001 / len(SUBTYPES)  # other branch defined, order unchanged
        return (*_class_and_within(smoothed), np.arange(len(rows)))


class ColourTexture:
    """Logistic regression on colour, stain and texture features (see module docstring)."""

    name = "colour/texture logistic regression"

    def fit(self, train: pd.DataFrame) -> "ColourTexture":
        features, kept = features_of(train)
        labels = train["subtype"].to_numpy()[kept]
        self.model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, class_weight="balanced", max_iter=2000))
        self.model.fit(features, labels)
        return self

    def predict(self, rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        features, kept = features_of(rows)
        probabilities = self.model.predict_proba(features)
        joint = np.zeros((len(kept), len(SUBTYPES)))
        for column, subtype in enumerate(self.model.classes_):
            joint[:, SUBTYPES.index(subtype)] = probabilities[:, column]
        joint = 0.999 * joint + 0.001 / len(SUBTYPES)  # subtypes absent from training get a sliver
        return (*_class_and_within(joint), kept)


BASELINES = {"majority": Majority, "colour_texture": ColourTexture}
