"""core.gan: a class-conditional GAN that synthesises patches of minority subtypes for training.

model (settings and the two networks), train (patches, the hinge-loss step, the training loop),
sampling (images, grids and SYN_ folders with provenance), quality (KID/FID, memorisation),
ablation (the classifier with and without GAN fill on the same split).

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
