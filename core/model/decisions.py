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

    def subtype_probabilities(self) -> dict[str, float]:
        """Joint p(subtype) = p(class) * p(subtype | class) over all 8 subtypes (sums to 1)."""
        within = {**self.stage2, **self.other_stage2}
        return {s: self.stage1[c] * within[s] for c in CLASSES for s in SUBTYPES_BY_CLASS[c]}

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "p_label": self.p_label, "p_subtype": self.p_subtype,
                "refer_stage1": self.refer_stage1, "refer_subtype": self.refer_subtype}

    def summary(self, subtype_reliable: bool = True) -> str:
        """One line for the CLI; an unreliable subtype head (core.app.registry.subtype_reliability)
        prints its subtype as such rather than as a finding."""
        flag = ("REFER stage 1" if self.refer_stage1 else "stage 1 not referred") + " / " + \
            ("REFER subtype" if self.refer_subtype else "subtype not referred")
        if self.refer:
            flag += ": " + "; ".join(self.refer_reasons)
        subtype = f"{pretty(self.subtype)} ({self.p_subtype:.2f})"
        if not subtype_reliable:
            subtype = f"subtype not reliable for this model (most probable: {subtype})"
        return f"{self.label} ({self.p_label:.2f}) | {subtype} | confidence {self.confidence:.2f} | {flag}"


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


def below(value: float, threshold: float) -> str:
    """"0.975 < 0.976": a probability and the threshold it fell under, with the fewest decimals (2 to
    4) that keep them apart; 2 fixed decimals showed "0.98 < 0.98" for a threshold like 0.976."""
    digits = 2
    while digits < 4 and f"{value:.{digits}f}" >= f"{threshold:.{digits}f}":
        digits += 1
    return f"{value:.{digits}f} < {threshold:.{digits}f}"
