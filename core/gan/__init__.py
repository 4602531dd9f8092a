"""core.gan: a class-conditional GAN that synthesises patches of minority subtypes for training.

model (settings and the two networks), train (patches, the hinge-loss step, the training loop),
sampling (images, grids and SYN_ folders with provenance), quality (KID/FID, memorisation),
ablation (the classifier with and without GAN fill on the same split).

Thin on purpose: import the module you need, e.g. `from core.gan.train import train_gan`.
Importing the package loads nothing else, so a light module (the progress stream, the jobs
code) never pulls in TensorFlow.
"""
