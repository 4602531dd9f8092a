"""Real tissue for the GAN: whole fields at one physical scale, held-out fields, random patches.

Every field is resampled once to the GAN's microns per pixel (core.data.scale.to_scale restores a
squashed 224x224 copy's aspect), so a nucleus is the same number of pixels in every image and a
patch is a fixed area of tissue. At 1.5625 um/px (core.gan.model.GAN_MPP) a 200X field is 224 x 147
px, a 100X field 448 x 294 and a 400X field 112 x 74; a 40X field (2.5 um/px) would have to be
enlarged, i.e. blurred, so it is left out and counted. Patches are random crops drawn afresh at
every step (a field yields hundreds of different ones), subtypes drawn uniformly so minority
subtypes train as often as the rest, and within a subtype fields drawn by their area.

A share of each subtype's training images (`holdout`) never reaches the GAN: those are the real
patches of the two-sample test (core.gan.two_sample), from the training patients, at the same scale.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np

from core.data.labels import SUBTYPES
from core.data.scale import image_scale, to_scale
from core.errors import UserInputError

log = logging.getLogger(__name__)
ENLARGE_TOLERANCE = 1.02  # a field at most 2 % coarser than the target is taken as at the target


@dataclasses.dataclass
class Fields:
    """Fields at one scale: uint8 images, their subtype indices (into SUBTYPES) and source paths."""

    images: list[np.ndarray]
    labels: np.ndarray
    paths: list[str]
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)  # path -> why it is not used

    def subset(self, keep) -> "Fields":
        keep = list(keep)
        return Fields([self.images[i] for i in keep], self.labels[keep], [self.paths[i] for i in keep], self.skipped)

    def count(self, subtype: str) -> int:
        return int((self.labels == SUBTYPES.index(subtype)).sum())


def load_fields(images, mpp: float, min_side: int, normalizer=None) -> Fields:
    """The images (a selection DataFrame: path, subtype, magnification) as fields at `mpp`.

    Skipped, with the reason: unreadable files, images without a known magnification, images
    coarser than `mpp` (they would be enlarged) and fields smaller than `min_side` at `mpp`.
    """
    from core.data.images import ImageError, load_image

    kept, labels, paths, skipped = [], [], [], {}
    for row in images.itertuples(index=False):
        try:
            rgb = load_image(row.path, check_histology=False).rgb  # known dataset images: skip the check
        except ImageError as error:
            skipped[row.path] = f"unreadable: {error}"
            continue
        height, width = rgb.shape[:2]
        scale = image_scale(Path(row.path).name, width, height, getattr(row, "magnification", None))
        if scale is None:
            skipped[row.path] = "no magnification, so no physical scale"
            continue
        if max(scale.x, scale.y) > mpp * ENLARGE_TOLERANCE:
            skipped[row.path] = f"coarser ({max(scale.x, scale.y):.2f} um/px) than {mpp} um/px: it would be enlarged"
            continue
        if normalizer is not None:
            rgb = normalizer(rgb)[0]
        field = to_scale(rgb, scale, mpp)
        if min(field.shape[:2]) < min_side:
            skipped[row.path] = f"{field.shape[1]}x{field.shape[0]} px at {mpp} um/px, smaller than a {min_side}-px patch"
            continue
        kept.append(field)
        labels.append(SUBTYPES.index(row.subtype))
        paths.append(row.path)
    if skipped:  # the file name only: a server path in the log says where the data lives, to anyone reading it
        first, why = next(iter(skipped.items()))
        log.warning("%d of %d images not used at %s um/px (first: %s, %s)", len(skipped), len(images), mpp,
                    Path(first).name, why)
        log.debug("images not used at %s um/px: %s", mpp, skipped)
    return Fields(kept, np.array(labels, np.int32), paths, skipped)


def holdout_split(fields: Fields, fraction: float, seed: int) -> tuple[Fields, Fields]:
    """(fields to train on, held-out fields): per subtype round(fraction x n) images, at least one
    for a subtype with two or more, chosen by a seeded draw; nothing held out when fraction is 0."""
    train, held = [], []
    for index in np.unique(fields.labels):
        members = np.flatnonzero(fields.labels == index)
        members = members[np.random.default_rng([seed, int(index)]).permutation(len(members))]
        count = 0 if fraction <= 0 or len(members) < 2 else max(1, round(fraction * len(members)))
        held += members[:count].tolist()
        train += members[count:].tolist()
    return fields.subset(sorted(train)), fields.subset(sorted(held))


def random_crop(field: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    top = rng.integers(0, field.shape[0] - size + 1)
    left = rng.integers(0, field.shape[1] - size + 1)
    return field[top:top + size, left:left + size]


class PatchSampler:
    """Random square patches of fields: balanced batches for training, sets per subtype for tests."""

    def __init__(self, fields: Fields, size: int, subtypes=SUBTYPES):
        self.fields, self.size = fields, size
        self.pools = {}
        for subtype in subtypes:
            members = np.flatnonzero(fields.labels == SUBTYPES.index(subtype))
            if len(members):
                area = np.array([(fields.images[i].shape[0] - size + 1) * (fields.images[i].shape[1] - size + 1)
                                 for i in members], np.float64)
                self.pools[subtype] = (members, area / area.sum())
        if not self.pools:
            raise UserInputError(f"No field of the subtypes {list(subtypes)} is large enough for {size}-px patches")

    @property
    def subtypes(self) -> list[str]:
        return list(self.pools)

    def _crops(self, subtype: str, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        members, weights = self.pools[subtype]
        chosen = rng.choice(members, n, p=weights)
        return np.stack([random_crop(self.fields.images[i], self.size, rng) for i in chosen]), chosen

    def batch(self, rng: np.random.Generator, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 patches [B, S, S, 3], subtype indices [B, 1]), subtypes drawn uniformly."""
        names = rng.choice(self.subtypes, batch_size)
        patches = np.stack([self._crops(name, 1, rng)[0][0] for name in names])
        return patches, np.array([[SUBTYPES.index(n)] for n in names], np.int32)

    def patches(self, subtype: str, n: int, seed: int) -> tuple[np.ndarray, list[str]]:
        """n patches of one subtype (seeded) and the source path of each."""
        crops, chosen = self._crops(subtype, n, np.random.default_rng(seed))
        return crops, [self.fields.paths[i] for i in chosen]
