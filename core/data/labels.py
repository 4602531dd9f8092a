"""The one definition of classes, subtypes, magnifications and model input.

Everything that names a class or sizes an image imports it from here, so the CLI, the app,
the GAN and the retraining job can never disagree about label order.
"""

CLASSES = ("benign", "malignant")

SUBTYPES_BY_CLASS = {
    "benign": ("adenosis", "fibroadenoma", "phyllodes_tumor", "tubular_adenoma"),
    "malignant": ("ductal_carcinoma", "lobular_carcinoma", "mucinous_carcinoma", "papillary_carcinoma"),
}

# The flat 8-class order: benign subtypes first, then malignant, as in the BreakHis paper.
SUBTYPES = SUBTYPES_BY_CLASS["benign"] + SUBTYPES_BY_CLASS["malignant"]

CLASS_OF_SUBTYPE = {s: c for c, subtypes in SUBTYPES_BY_CLASS.items() for s in subtypes}

# Codes used in BreakHis file names: SOB_B_A-14-22549AB-40-001.png -> benign, adenosis.
CLASS_CODES = {"B": "benign", "M": "malignant"}
SUBTYPE_CODES = {
    "A": "adenosis", "F": "fibroadenoma", "PT": "phyllodes_tumor", "TA": "tubular_adenoma",
    "DC": "ductal_carcinoma", "LC": "lobular_carcinoma", "MC": "mucinous_carcinoma",
    "PC": "papillary_carcinoma",
}
CODE_OF_SUBTYPE = {v: k for k, v in SUBTYPE_CODES.items()}

MAGNIFICATIONS = ("40X", "100X", "200X", "400X")

# Model input: every image is resized (whole field of view, no crop) to this square.
# Squashing rather than cropping keeps the whole field visible and lets Grad-CAM maps be
# resized straight back onto the original image.
INPUT_SIZE = 224
# What core.data.preprocess does (written into every model card); TensorFlow-free so that a card can
# be written where only JAX is installed.
PREPROCESSING = (
    "RGB, whole image resized (bilinear, antialiased) to {size}x{size}, float32 in [0, 255]; "
    "per-backbone normalisation is a layer inside the model"
)

# Names of the model outputs. Hierarchical models have the three heads; flat models have one.
STAGE1_OUTPUT = "stage1"
STAGE2_OUTPUTS = {"benign": "benign_subtype", "malignant": "malignant_subtype"}
FLAT_OUTPUT = "subtype8"
HIERARCHICAL, FLAT = "hierarchical", "flat"
HIERARCHIES = (HIERARCHICAL, FLAT)


def output_sizes(hierarchy: str) -> dict[str, int]:
    """Name -> number of classes of each model output."""
    if hierarchy == HIERARCHICAL:
        return {STAGE1_OUTPUT: len(CLASSES), **{out: len(SUBTYPES_BY_CLASS[c]) for c, out in STAGE2_OUTPUTS.items()}}
    if hierarchy == FLAT:
        return {FLAT_OUTPUT: len(SUBTYPES)}
    raise ValueError(f"hierarchy must be {HIERARCHICAL!r} or {FLAT!r}, not {hierarchy!r}")


def pretty(name: str) -> str:
    """'phyllodes_tumor' -> 'Phyllodes tumor' for display."""
    return name.replace("_", " ").capitalize()


def subtype_index(subtype: str) -> int:
    """Index of a subtype within its own class's four subtypes (stage-2 target)."""
    return SUBTYPES_BY_CLASS[CLASS_OF_SUBTYPE[subtype]].index(subtype)


def sentence(text: str) -> str:
    """The text with its first letter in upper case and the rest as written (str.capitalize would
    also lower the rest: '5-fold CV' -> '5-fold cv')."""
    return text[:1].upper() + text[1:]


def classes_of(by_subtype: dict) -> dict:
    """{class: images} of {subtype: images}."""
    return {c: sum(int(n) for s, n in by_subtype.items() if CLASS_OF_SUBTYPE.get(s) == c) for c in CLASSES}


def untaught_classes(by_class: dict | None) -> list[str]:
    """The classes (benign, malignant) of which the weights learnt from no real image ({class: images});
    none where the counts are not recorded."""
    return [] if by_class is None else [c for c in CLASSES if not by_class.get(c)]
