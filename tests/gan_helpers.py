"""For GAN tests about a run's bookkeeping (cadence, resume, cards, folders) over a few steps: each run's
TensorFlow step is then mostly tracing (a 2-step run: ~10 s compiled, 3-4 s eager, measured). Such tests run
the step eagerly; the compiled step is what the learning tests of tests/test_gan_learning.py train and
measure, under TensorFlow and JAX."""

from __future__ import annotations

import json

import pytest

# Synthetic fields are 96x64 "fields" (core/testing/synthetic.py): at 4 um/px the 200X and 400X ones
# are 88x58 and 44x29 px (40X and 100X would be enlarged and are left out, as the real 40X are).
TINY = dict(image_size=16, width=32, d_width=8, latent_dim=8, batch_size=16, mpp=4.0, holdout=0.0,
            sample_every=1000, checkpoint_every=1000, log_every=1)
PAIR = ("adenosis", "ductal_carcinoma")  # benign pink vs malignant purple in the synthetic set


def events(run_dir) -> list[dict]:
    """A GAN run's progress.jsonl, one dict per line."""
    return [json.loads(line) for line in (run_dir / "progress.jsonl").read_text().splitlines()]


def compile_gan_eagerly(patch: pytest.MonkeyPatch) -> None:
    """Every TextureGAN compiled while `patch` is active runs its train_step eagerly."""
    from core.gan.adversarial import TextureGAN

    compile_gan = TextureGAN.compile

    def compile_eagerly(self, *args, **kwargs):
        compile_gan(self, *args, **kwargs)
        self.run_eagerly = True

    patch.setattr(TextureGAN, "compile", compile_eagerly)
