"""core.gan: a class-conditional GAN that synthesises patches of minority subtypes for training.

model (settings and the two networks), train (patches, the hinge-loss step, the training loop),
sampling (images, grids and SYN_ folders with provenance), quality (KID/FID, memorisation),
ablation (the classifier with and without GAN fill on the same split).
"""

from core.gan.ablation import run_ablation
from core.gan.model import GanConfig, build_discriminator, build_generator
from core.gan.quality import evaluate_generator, load_features
from core.gan.sampling import generate, write_samples
from core.gan.train import train_gan

__all__ = ["GanConfig", "build_discriminator", "build_generator", "evaluate_generator", "generate", "load_features",
           "run_ablation", "train_gan", "write_samples"]
