"""core.data: BreakHis images, from files and folders to labelled, split, balanced tf.data batches.

labels (the one label and input-size definition), breakhis (names and folder indexing), download
(Kaggle), splits (patient-wise splits, k-fold), selection (which images a run uses), balance and
synthetic (class imbalance, GAN image folders), images (safe decoding of uploads), histology (the
H&E out-of-distribution check), stain (the stain model), preprocess (the one resize), augment and
pipeline (training input).

Thin on purpose: import the module you need, e.g. `from core.data.selection import select_images`.
Importing the package loads nothing else, so a light module (the progress stream, the jobs
code) never pulls in TensorFlow.
"""
