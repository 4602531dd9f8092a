"""An ensemble of classifier folders: the k fold models of a cross-validation, or models of several
backbones (or seeds) trained on the same split.

The ensemble folder holds only a card (kind "ensemble") listing its members, relative to itself,
with the SHA-256 of each member's model file, so a swapped member is refused at load. Prediction
averages the members' CALIBRATED probabilities (each member applies its own temperatures); how
much the members disagree is the prediction's uncertainty (core.model.views.uncertainty_of);
a heat map of an ensemble is the mean of its members' maps (core.model.cam).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from core.model.folders import ENSEMBLE, check_member, read_card
from core.model.predict import Predictor
from core.model.views import mean_over_members


class EnsemblePredictor(Predictor):
    """A Predictor whose `members` are classifiers: the app, evaluation and Grad-CAM use it like one model."""

    uncertainty_source = "ensemble members"

    def __init__(self, members: list[Predictor], card: dict, folder=None, batch_size: int = 32):
        self._members = list(members)
        # No model of its own, and no temperatures: each member applies its own calibration.
        super().__init__(None, card, folder, batch_size, calibrated=False)

    @classmethod
    def from_folder(cls, folder, **options) -> "EnsemblePredictor":
        """Load an ensemble folder and every member classifier, refusing a member whose model file
        is not the one the ensemble was built from."""
        folder = Path(folder)
        card = read_card(folder, ENSEMBLE)
        members = []
        for member in card["members"]:
            predictor = Predictor.from_folder(folder / member["path"])
            check_member(folder, member, predictor.card)
            members.append(predictor)
        return cls(members, card, folder, **options)

    @property
    def members(self) -> list[Predictor]:
        return self._members

    def uses_tta(self, tta: bool = False) -> bool:
        """On request, or when any member averages its symmetries anyway (its card declares them): the
        ensemble has no views of its own, and its outputs hold that member's symmetries."""
        return any(member.uses_tta(tta) for member in self._members)

    def tta_fixed(self) -> bool:
        """Only when every member averages its symmetries anyway; otherwise the choice reaches the others."""
        return all(member.tta_fixed() for member in self._members)

    def _input_size(self, card: dict) -> int:
        return max(member.input_size for member in self._members)  # each member resizes for itself

    def _normalizer(self, card: dict):
        return self._members[0].normalizer  # each member normalises its own input; shown as the first's

    def probabilities(self, images: list[np.ndarray], tta: bool = False, tiles: bool = False,
                      magnifications=None) -> dict[str, np.ndarray]:
        """Mean of the members' calibrated head outputs, plus every member's as the views (N, members, k)."""
        if len(images) == 0:
            return {}
        return self.merge([member.probabilities(images, tta, tiles, magnifications) for member in self._members])

    def merge(self, member_outputs: list[dict]) -> dict[str, np.ndarray]:
        """The members' raw outputs -> the mean of their calibrated outputs, each member's as a view."""
        return mean_over_members([member.calibrate(o) for member, o in zip(self._members, member_outputs)])
