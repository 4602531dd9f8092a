"""core.gan: a class-conditional texture GAN that draws H&E tissue per subtype at one physical scale.

model (settings and the two fully convolutional networks), layers (reflect padding, conditional
norm), patches (real fields at the GAN's scale, held-out fields, random patches), augment
(DiffAugment and the dihedral views), train (the keras.Model with train_step, fit() and its
callbacks), sampling (patches, field-size canvases, SYN_ folders with provenance), and how good it
is: two_sample (a classifier told to tell real from synthetic), nuclei (hematoxylin blob counts),
distances (stain, spectrum, texture), checks (the goals, judged on held-out real patches), quality
(`gan evaluate` / `gan compare`, KID, memorisation), ablation (the classifier with and without GAN fill).

Thin on purpose: import the module you need, e.g. `from core.gan.train import train_gan`.
Importing the package loads nothing else, so a light module (the progress stream, the jobs
code) never pulls in TensorFlow.
"""
