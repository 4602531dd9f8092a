"""Plain words for the technical terms the pages show, and the terms themselves, defined, for their tooltips.

A pathologist reads the plain label first; an ML engineer still finds the precise term (in the label's
brackets or the tooltip). Text only: no logic, no Streamlit; the tables and captions that carry the figures,
with their split protocol and data size, are core.app.performance's and core.app.comparison's.
"""

from __future__ import annotations

MACRO_F1 = ("macro F1: the F1 score (the balance of sensitivity and precision) of each class or subtype, averaged "
            "with every one counting equally however rare it is; 0 to 1, higher is better.")
ROC_AUC = ("ROC AUC: how well the probabilities rank the cases (the chance that a random positive scores above a "
           "random negative); 0.5 is chance, 1 perfect. Macro: averaged over the classes, one against the rest.")
BALANCED_ACCURACY = "balanced accuracy: the mean of each class's share called right, so a rare class counts as much."
ECE = ("ECE (expected calibration error): how far the stated probabilities are from how often the calls are right "
       "(0: calls made at 0.8 are right 80% of the time); lower is better.")
BRIER = ("Brier score: the mean squared difference between the probabilities and what was true, summed over the "
         "classes (0 is perfect, 2 the worst; a constant 50/50 guess scores 0.5 on stage 1, i.e. twice the "
         "single-probability Brier score some papers report); lower is better. It counts both the calls and their "
         "calibration.")
OUT_OF_FOLD = ("pooled out-of-fold: in a k-fold cross-validation every patient is held out once; each image is "
               "scored by the fold model that never saw its patient, and the folds' scores are put together, so every "
               "patient counts as a test patient exactly once.")
P_SUBTYPE = ("p(class): the model's calibrated probability for its benign/malignant call; p(subtype | class): its "
             "probability for the subtype, given that class.")
CASE_ROWS = ("patient-and-tumour-type groups (case x tumour-type rows): a patient-level figure counts each patient "
             "once per tumour type their images carry (a patient with two tumour types counts in each, as two rows).")
TEMPERATURE = ("temperature scaling: each stage's probabilities are softened or sharpened by one number (the "
               "temperature) fitted on held-out predictions; it changes no call, only how sure each call says it is.")

# A phrase the pages' captions may carry -> its definition (explain: the tooltip of a caption that carries it).
TERMS = {"out-of-fold": OUT_OF_FOLD, "case x tumour": CASE_ROWS, "tumour-type groups": CASE_ROWS, "macro-F1": MACRO_F1, "macro F1": MACRO_F1,
         "ROC AUC": ROC_AUC, "ECE": ECE, "Brier": BRIER, "p(subtype | class)": P_SUBTYPE, "temperature": TEMPERATURE}

# A table column the pages show -> (plain label with the technical term in brackets, tooltip).
COLUMNS = {
    "macro F1": ("F1, classes weighted equally (macro F1)", MACRO_F1),
    "macro ROC AUC": ("ranking quality (macro ROC AUC)", ROC_AUC),
    "balanced accuracy": ("balanced accuracy", BALANCED_ACCURACY),
    "ECE before": ("calibration error before (ECE)", ECE),
    "ECE after": ("calibration error after (ECE)", ECE),
    "Brier before": ("probability error before (Brier)", BRIER),
    "Brier after": ("probability error after (Brier)", BRIER),
    "stage-1 ECE": ("stage-1 calibration error (ECE)", ECE),
    "stage-1 Brier": ("stage-1 probability error (Brier)", BRIER),
    "temperature": ("temperature", TEMPERATURE),
    "metric": ("metric", " ".join((MACRO_F1, ROC_AUC, BALANCED_ACCURACY))),
    "split": ("split", "out-of-fold: " + OUT_OF_FOLD),
    "protocol": ("protocol", OUT_OF_FOLD),
    "computed on": ("computed on", "The images or patients each interval was computed on. " + CASE_ROWS),
    # the GAN gallery's checks (core.gan.gallery.check_rows; distances over the real-vs-real floor, goal <= 2)
    "two-sample accuracy": ("told apart from real (two-sample accuracy)",
                            "A small CNN trained on half the patches tells synthetic from real on the other half: "
                            "0.5 means it cannot tell them apart (the goal is at most 0.75 per class, 0.85 per "
                            "subtype)."),
    "two-sample goal met": ("two-sample goal met",
                            "The two-sample test alone, in every row: its accuracy is at most the row's goal."),
    "all checks met": ("all checks met",
                       "Every goal of the set: for a subtype its two-sample test, nuclei count and distances; for a "
                       "class its two-sample test and every one of its subtypes' checks."),
    "critic's split": ("how the test's halves were split",
                       "By source image: the critic is scored on real images it never trained on. By patch (one real "
                       "image left): it trains and is scored on patches of the same field, so the row says little."),
    "real images scored (held out)": ("real images used (held out)",
                                      "The real images the two-sample test's patches came from; in brackets, the "
                                      "images held out from the generator's training for the checks."),
    "nuclei / patch (real)": ("nuclei per patch, synthetic (real)",
                              "Nuclei counted per synthetic patch, the real patches' count in brackets."),
    "hed sliced wasserstein / floor": ("stain colour difference (x floor)",
                                       "Sliced Wasserstein distance between the two sets' H&E stain densities, per "
                                       "pixel, divided by the distance between two real sets (the floor); goal <= 2."),
    "power spectrum / floor": ("sharpness and fine detail difference (x floor)",
                               "Difference of the log radially averaged power spectra (too little fine detail, blur "
                               "or periodic artefacts), divided by the real-vs-real floor; goal <= 2."),
    "lbp / floor": ("micro-texture difference (x floor)",
                    "Jensen-Shannon distance between the sets' local binary pattern (LBP) histograms, divided by the "
                    "real-vs-real floor; goal <= 2."),
}


def column_label(column: str) -> str:
    """The plain label of a table column (its own name where it needs none)."""
    return COLUMNS.get(column, (column, None))[0]


def column_help(column: str) -> str | None:
    """The tooltip of a table column: the technical term, defined (None where it needs none)."""
    return COLUMNS.get(column, (column, None))[1]


def explain(*texts: str) -> str | None:
    """The definitions of the technical terms the texts use, each once, for their tooltip; None if they use none."""
    found = dict.fromkeys(definition for term, definition in TERMS.items() if any(term in text for text in texts))
    return " ".join(found) or None
