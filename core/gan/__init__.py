"""core.gan: a class-conditional texture GAN that draws H&E tissue per subtype at one physical scale.

model (settings and the two fully convolutional networks), layers (reflect padding, conditional
norm), patches (real fields at the GAN's scale, held-out fields, random patches), augment
(DiffAugment and the dihedral views), train (the keras.Model with train_step, fit() and its
callbacks), sampling (patches, field-size canvases, SYN_ folders with provenance), and how good it
is: two_sample (a classifier told to tell real from synthetic), nuclei (hematoxylin blob counts),
distances (stain, spectrum, texture), quality (KID, memorisation and the reports of `gan evaluate`
and `gan compare`), gallery (what the gallery page shows), ablation (the classifier with and
without GAN fill on the same split).

Names are imported on first use, so `import core.gan` loads no TensorFlow.
"""

import importlib

_HOME = {"GanConfig": "model", "build_discriminator": "model", "build_generator": "model",
         "train_gan": "train", "build_gan": "train", "TextureGAN": "train",
         "Generator": "sampling", "generate": "sampling", "write_samples": "sampling",
         "evaluate_generator": "quality", "compare_generators": "quality", "load_features": "quality",
         "run_ablation": "ablation"}
__all__ = sorted(_HOME)


def __getattr__(name):
    if name not in _HOME:
        raise AttributeError(f"module 'core.gan' has no attribute {name!r}")
    return getattr(importlib.import_module(f"core.gan.{_HOME[name]}"), name)
