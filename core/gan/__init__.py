"""core.gan: a class-conditional texture GAN that draws H&E tissue per subtype at one physical scale.

model (settings and the two fully convolutional networks), layers (reflect padding, conditional
norm), patches (real fields at the GAN's scale, held-out fields, random patches), augment
(DiffAugment and the dihedral views), adversarial (the keras.Model and its train_step for TensorFlow
and JAX), train (fit() and its callbacks, the run folder), sampling (patches, field-size canvases, SYN_ folders with provenance), and how good it
is: two_sample (a classifier told to tell real from synthetic), nuclei (hematoxylin blob counts),
distances (stain, spectrum, texture), checks (the goals, judged on held-out real patches), quality
(`gan evaluate` / `gan compare`, KID, memorisation), ablation (the classifier with and without GAN fill).

Lazy on purpose: `from core import gan; gan.train_gan(...)` works, but each name is imported
from its module only when first used (PEP 562), so importing the package loads no TensorFlow.
"""

import importlib

_WHERE = {"run_ablation": "ablation", "GanConfig": "model", "build_discriminator": "model", "build_generator": "model",
          "evaluate_generator": "quality", "load_features": "quality", "generate": "sampling",
          "write_samples": "sampling", "train_gan": "train"}
_MODULES = ("ablation", "distances", "model", "quality", "sampling", "train")
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"core.gan.{_WHERE[name]}"), name)
    if name in _MODULES:
        return importlib.import_module(f"core.gan.{name}")
    raise AttributeError(f"module 'core.gan' has no attribute {name!r}")
