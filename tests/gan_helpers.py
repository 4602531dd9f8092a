"""For GAN tests about a run's bookkeeping (cadence, resume, cards, folders) over a few steps: each run's
TensorFlow step is then mostly tracing (a 2-step run: ~10 s compiled, 3-4 s eager, measured). Such tests run
the step eagerly; the compiled step is what the learning tests of tests/test_gan.py train and measure, under
TensorFlow and JAX."""

from __future__ import annotations

import pytest


def compile_gan_eagerly(patch: pytest.MonkeyPatch) -> None:
    """Every TextureGAN compiled while `patch` is active runs its train_step eagerly."""
    from core.gan.adversarial import TextureGAN

    compile_gan = TextureGAN.compile

    def compile_eagerly(self, *args, **kwargs):
        compile_gan(self, *args, **kwargs)
        self.run_eagerly = True

    patch.setattr(TextureGAN, "compile", compile_eagerly)
