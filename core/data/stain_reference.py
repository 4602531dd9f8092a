"""The stain reference a run fits to its own training split, for the classifier and the GAN alike.

Apart from core.data.stain because it reads images (core.data.images, whose histology check uses
the stain module), and apart from the tf.data pipeline because the GAN and the fields pipeline
fit it on machines without TensorFlow.
"""

from __future__ import annotations

from core.data.images import load_image
from core.data.stain import StainNormalizer, get_normalizer


def fit_normalizer(method: str, images, seed: int = 0, most: int = 64) -> StainNormalizer:
    """A stain normaliser fitted to (a seeded sample of) these images, e.g. a run's training split:
    the default reference, which brings every image to the training data's stain appearance."""
    if method == "none":
        return get_normalizer("none")
    real = images[~images["synthetic"].astype(bool)] if "synthetic" in images else images
    chosen = real.sample(most, random_state=seed) if len(real) > most else real
    pictures = [load_image(path, check_histology=False).rgb for path in chosen["path"]]
    return get_normalizer(method).fit(pictures, f"the training split: {len(pictures)} images")
