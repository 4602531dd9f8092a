"""core.data: BreakHis images, from files and folders to labelled, split, balanced tf.data batches.

labels (the one label and input-size definition), breakhis (names and folder indexing), download
(Kaggle), splits (patient-wise splits, k-fold), selection (which images a run uses), balance and
synthetic (class imbalance, GAN image folders), images (safe decoding of uploads), histology (the
H&E out-of-distribution check), stain (the stain model), preprocess (the one resize), augment and
pipeline (training input).
"""

from core.data.balance import STRATEGIES, apply_strategy, balance_preview, class_weights
from core.data.breakhis import IndexResult, index_folder, load_manifest, parse_name, subtype_counts, summarize
from core.data.images import ImageError, LoadedImage, load_image
from core.data.labels import CLASSES, FLAT, HIERARCHICAL, INPUT_SIZE, MAGNIFICATIONS, SUBTYPES, SUBTYPES_BY_CLASS
from core.data.pipeline import make_dataset, targets_and_weights
from core.data.preprocess import batch_for_model, to_model_input
from core.data.selection import Selection, SplitSpec, select_images, select_magnification
from core.data.splits import IMAGE, PATIENT, make_split, patient_kfold

__all__ = [
    "CLASSES", "FLAT", "HIERARCHICAL", "IMAGE", "INPUT_SIZE", "MAGNIFICATIONS", "PATIENT", "STRATEGIES", "SUBTYPES",
    "SUBTYPES_BY_CLASS", "ImageError", "IndexResult", "LoadedImage", "Selection", "SplitSpec", "apply_strategy",
    "balance_preview", "batch_for_model", "class_weights", "index_folder", "load_image", "load_manifest",
    "make_dataset", "make_split", "parse_name", "patient_kfold", "select_images", "select_magnification",
    "subtype_counts", "summarize", "targets_and_weights", "to_model_input",
]
