"""What a prediction is and the rules that turn probabilities into calls, without TensorFlow.

`Prediction` (one image), `case_decision` (THE case-level rule) and `figure`: core.model.predict's
Predictor makes them, and the evaluation (core.evaluation.metrics) scores them, also in a training
process that runs under Keras' JAX backend where TensorFlow may not be installed.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from core.data.labels import CLASSES, SUBTYPES, SUBTYPES_BY_CLASS, pretty

DEFAULT_REFER_THRESHOLD = 0.7
DEMO_REASON = "demo model: not validated"


IMAGE_THRESHOLD = 0.5  # an image (or a slide's tile, core.slide.call) is malignant when p(malignant) reaches it


def image_calls(p_class) -> np.ndarray:
    """THE image-level stage-1 call of p(class) rows (N, 2, CLASSES order): malignant when p(malignant)
    reaches IMAGE_THRESHOLD, as case_decision and the threshold figures decide (an argmax called an exact 0.5
    benign, so one image read benign as an image and malignant as a case)."""
    p_malignant = np.asarray(p_class, float).reshape(-1, len(CLASSES))[:, CLASSES.index("malignant")]
    return np.where(p_malignant >= IMAGE_THRESHOLD, "malignant", "benign")


@dataclasses.dataclass
class Prediction:
    """One image's result. `confidence` = p(label) * p(subtype | label)."""

    stage1: dict[str, float]
    label: str
    stage2: dict[str, float]  # subtypes of `label`, from the head stage 1 chose
    other_stage2: dict[str, float]  # subtypes of the other class, for context
    subtype: str
    confidence: float
    refer: bool
    refer_reasons: list[str]
    tta: bool = False
    # How much the ensemble members or the 8 test-time views disagree (see `uncertainty_of`); None
    # for a single model without test-time augmentation.
    uncertainty: dict | None = None
    # Per stage: {"stage1": {"refer", "reasons", "threshold"}, "subtype": {...}, "thresholds_source"}
    # (core.model.predict.Predictor._prediction); `refer` is either stage's flag.
    referral: dict | None = None

    @property
    def refer_stage1(self) -> bool:
        return bool(self.referral["stage1"]["refer"]) if self.referral else self.refer

    @property
    def refer_subtype(self) -> bool:
        return bool(self.referral["subtype"]["refer"]) if self.referral else self.refer

    @property
    def p_label(self) -> float:
        return self.stage1[self.label]

    @property
    def p_subtype(self) -> float:
        return self.stage2[self.subtype]

    def shown(self, value: float, digits: int, stage: str = "stage1") -> str:
        """A probability of this stage as every output prints it (decided): on the side of the thresholds
        it was judged against, the image rule's 0.5 (stage 1) and the stage's referral threshold."""
        block = (self.referral or {}).get(stage) or {}
        return decided(value, digits, ([IMAGE_THRESHOLD] if stage == "stage1" else []) +
                       ([block["threshold"]] if "threshold" in block else []))

    def subtype_probabilities(self) -> dict[str, float]:
        """Joint p(subtype) = p(class) * p(subtype | class) over all 8 subtypes (sums to 1)."""
        within = {**self.stage2, **self.other_stage2}
        return {s: self.stage1[c] * within[s] for c in CLASSES for s in SUBTYPES_BY_CLASS[c]}

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "p_label": self.p_label, "p_subtype": self.p_subtype,
                "refer_stage1": self.refer_stage1, "refer_subtype": self.refer_subtype}

    def summary(self, subtype_reliable: bool = True) -> str:
        """One line for the CLI; an unreliable subtype head (core.evaluation.subtype_trust.subtype_reliability)
        prints its subtype as such rather than as a finding. Each stage says why it is referred, or the
        threshold it passed (as the page, CSV and PDF do)."""
        flags = []
        for stage, name, value in (("stage1", "stage 1", self.p_label), ("subtype", "subtype", self.p_subtype)):
            block = (self.referral or {}).get(stage)
            if block is None:  # a Prediction made without per-stage referral: its reasons, once
                flags.append(f"REFER {name}" if self.refer else f"{name} not referred")
            elif block["refer"]:
                flags.append(f"REFER {name}: {'; '.join(block['reasons'])}")
            else:
                flags.append(f"{name} not referred ({at_least(value, block['threshold'])})")
        flag = " / ".join(flags)
        if self.refer and not self.referral:
            flag += ": " + "; ".join(self.refer_reasons)
        subtype = f"{pretty(self.subtype)} ({self.shown(self.p_subtype, 2, 'subtype')})"
        # The joint p(class) x p(subtype | class) named as what it is: "confidence 0.33" beside a 0.94 call read
        # as doubt about the call (the page's table moved it aside for that); of an unreliable subtype, left out.
        joint = f" | p(class and subtype) {self.confidence:.2f}"
        if not subtype_reliable:
            subtype, joint = f"subtype not reliable for this model (most probable: {subtype})", ""
        return f"{self.label} ({self.shown(self.p_label, 2)}) | {subtype}{joint} | {flag}"


@dataclasses.dataclass
class CaseDecision:
    """One case's call from several images (see `case_decision`)."""

    label: str
    subtype: str
    p_class: dict[str, float]  # mean p(class) over the images
    p_subtype: dict[str, float]  # mean p(subtype | label) over the images, subtypes of `label`

    @property
    def confidence(self) -> float:
        return self.p_class[self.label] * self.p_subtype[self.subtype]


def case_decision(members, malignant_threshold: float = 0.5) -> CaseDecision:
    """THE case-level rule (app case table and patient-level evaluation both use it).

    Mean stage-1 probability over the images -> malignant when it reaches `malignant_threshold`
    (the validated case threshold of the model card; 0.5 without one); then subtype = argmax of
    the mean p(subtype | class) within that class, i.e. the same stage 1 -> stage 2 hierarchy as
    one image. members: Predictions, or (p(class) in CLASSES order, p(subtype | its class) in
    SUBTYPES order) pairs of arrays.
    """
    members = list(members)
    if not members:
        raise ValueError("case_decision needs at least one image")
    stage1, within = [], []
    for member in members:
        if isinstance(member, Prediction):
            both = {**member.stage2, **member.other_stage2}
            stage1.append([member.stage1[c] for c in CLASSES])
            within.append([both[s] for s in SUBTYPES])
        else:
            class_p, subtype_p = member
            stage1.append(np.asarray(class_p, float).reshape(len(CLASSES)))
            within.append(np.asarray(subtype_p, float).reshape(len(SUBTYPES)))
    mean_class = dict(zip(CLASSES, map(float, np.mean(stage1, axis=0))))
    mean_within = dict(zip(SUBTYPES, map(float, np.mean(within, axis=0))))
    label = "malignant" if mean_class["malignant"] >= malignant_threshold else "benign"
    p_subtype = {s: mean_within[s] for s in SUBTYPES_BY_CLASS[label]}
    return CaseDecision(label, max(p_subtype, key=p_subtype.get), mean_class, p_subtype)


def figure(value: float) -> str:
    """A spread or threshold at 3 significant digits: spreads are often below 0.01, where a fixed
    2 decimals shows "0.00 > 0.00" and hides which of the two is larger."""
    return f"{value:.3g}"


def threshold_text(threshold: float) -> str:
    """A referral threshold as every output states it (page caption, reasons, CSV, PDF, CLI): to 4
    decimals, so a validated 0.9762 is not read as 0.98 (an image at 0.977 is not referred), trailing
    zeros dropped down to 2 (0.70). Above 1 (core.evaluation.referral.REFER_ALL) no probability reaches it."""
    if threshold > 1.0:
        return "1+ (every image referred)"
    text = f"{threshold:.4f}".rstrip("0")
    return text + "0" * max(0, 2 - len(text.split(".")[1]))


def _compared(value: float, threshold: float, holds) -> tuple[str, str]:
    """(value, threshold) as printed: the threshold as threshold_text states it, the value with the
    fewest decimals (2 to 6) that keep it apart from the threshold and still read true (holds)."""
    if threshold > 1.0:  # refer everything: no probability reaches it (threshold_text says so)
        return f"{value:.2f}", threshold_text(threshold)
    for digits in range(2, 7):
        shown = threshold_text(threshold) if digits <= 4 else f"{threshold:.{digits}f}"
        text = f"{value:.{digits}f}"
        if text != f"{threshold:.{digits}f}" and holds(float(text), float(shown)):
            return text, shown
    shown = threshold_text(threshold)  # equal (a value at its threshold passes): both as the threshold
    return f"{value:.{len(shown.split('.')[1])}f}", shown


def decided(value: float, digits: int, thresholds) -> str:
    """`value` to `digits` decimals, or as many more (up to 6) as keep it on its side of every threshold it
    was judged against: p(malignant) 0.49996 (benign) and 0.50004 (malignant) both printed 0.50, and a
    p(benign) just under its referral threshold printed as the threshold, in the page, CSV and PDF."""
    # Each threshold as judged and as printed (threshold_text: 0.97623 is printed 0.9762).
    thresholds = [(t, float(threshold_text(t))) for t in thresholds if t <= 1.0]  # REFER_ALL: nothing reaches it
    for places in range(digits, 7):
        text = f"{value:.{places}f}"
        shown = float(text)
        if all((shown >= t) == (value >= t) == (shown >= printed) and (shown not in (t, printed) or value == t)
               for t, printed in thresholds):
            return text
    return f"{value:.6f}"


def below(value: float, threshold: float) -> str:
    """"0.975 < 0.9762": a probability and the threshold it fell under. The threshold is printed as
    the caption states it (threshold_text); "0.67 < 0.98" contradicted a caption's 0.9762, and 2
    fixed decimals showed "0.98 < 0.98" for 0.975."""
    return " < ".join(_compared(value, threshold, lambda v, t: v < t))


def at_least(value: float, threshold: float) -> str:
    """"0.977 >= threshold 0.9762": a probability that passed its threshold, printed as `below` does;
    2 fixed decimals printed "0.98 >= 0.98" for 0.977 and a threshold of 0.9762."""
    return " >= threshold ".join(_compared(value, threshold, lambda v, t: v >= t))


def referral_rule(stage1: float, subtype: float, source: str) -> str:
    """Both referral thresholds and where they come from, stated once (the page caption, the PDF,
    the CLI): core.model.predict.Predictor.stage_thresholds gives them."""
    return (f"Referral: stage 1 below p(class) {threshold_text(stage1)}, subtype below p(subtype | class) "
            f"{threshold_text(subtype)} ({source}).")
