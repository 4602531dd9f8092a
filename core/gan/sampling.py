"""Sampling a generator: patches and field-size canvases per subtype, grids, and SYN_ folders.

A generator folder (core.model.folders, kind "gan_generator") is loaded as a `Generator`, which
knows its scale from its card: a texture generator (card "mpp") draws any size from a noise map,
one cell per UPSCALE pixels, so a whole BreakHis field for GAN fill is one canvas, not a mosaic.
Generators bundled before it (vector noise, fixed 128-px squashed fields, no "mpp") still load and
are brought to the same scale (`Generator.patches`), so the two can be compared on equal terms.

Synthetic images are written under SYN_ names that the BreakHis indexer never takes for real
images (core.data.breakhis.synthetic_name), next to a provenance.json that says which generator
made them and which real images it learned from (core.data.synthetic), so classifier training
can refuse a generator that saw its val/test images.
"""

from __future__ import annotations

import math
from pathlib import Path

import keras
import numpy as np
from PIL import Image

import core.gan.layers  # noqa: F401 - registers the generator's layers before any load
from core.data.breakhis import synthetic_name
from core.data.labels import SUBTYPES
from core.data.scale import BREAKHIS_FIELD, Scale, magnification_mpp, scaled_size
from core.data.synthetic import provenance_of, record_provenance
from core.errors import ModelFolderError, UserInputError
from core.gan.model import UPSCALE, GanConfig
from core.model.folders import GENERATOR, load_model_folder

FIELD_MAGNIFICATION = "200X"  # field-size canvases are 200X fields, the real set's commonest


def to_uint8(images) -> np.ndarray:
    return np.clip(np.round((np.asarray(images, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def field_px(mpp: float, magnification: str = FIELD_MAGNIFICATION) -> tuple[int, int]:
    """(width, height) in pixels of a 700x460 BreakHis field at this magnification, drawn at mpp."""
    base = magnification_mpp(magnification)
    return scaled_size(*BREAKHIS_FIELD, Scale(base, base, magnification), mpp)


def noise_map(seed: int, n: int, width: int, height: int, channels: int) -> np.ndarray:
    """Noise for n canvases of at least width x height pixels; canvas i is the same whatever n is."""
    return np.concatenate(list(noise_chunks(seed, n, (width, height), channels, max(n, 1))))


def noise_for(seed: int, n: int, latent_dim: int) -> np.ndarray:
    """Vector noise of the generators bundled before the texture GAN; image i is the same whatever n is."""
    return np.concatenate(list(noise_chunks(seed, n, None, latent_dim, max(n, 1))))


def noise_chunks(seed: int, n: int, size: tuple[int, int] | None, channels: int, chunk: int = 64):
    """The noise of n images in chunks of at most `chunk` (noise_map's for a (width, height) canvas,
    noise_for's when size is None): the same numbers, in the same order, without holding them all
    (100,000 field-size canvases are 80 GiB of noise)."""
    shape = (channels,) if size is None else (math.ceil(size[1] / UPSCALE), math.ceil(size[0] / UPSCALE), channels)
    rng = np.random.default_rng(seed)  # one stream: consecutive draws continue it exactly
    if n == 0:
        yield np.zeros((0, *shape), np.float32)
    for start in range(0, n, chunk):
        yield rng.standard_normal((min(chunk, n - start), *shape)).astype(np.float32)


def generate(network: keras.Model, subtype: str, n: int, seed: int = 0, size: tuple[int, int] | int = 64,
             noise: np.ndarray | None = None, batch_size: int = 16) -> np.ndarray:
    """n uint8 images of a subtype, width x height = size (cropped from the whole noise cells);
    deterministic for a seed. A vector-noise generator ignores size (it has one)."""
    if subtype not in SUBTYPES:
        raise UserInputError(f"Unknown subtype {subtype!r}; choose from {list(SUBTYPES)}")
    width, height = (size, size) if isinstance(size, int) else size
    spatial = len(network.inputs[0].shape) == 4
    if noise is None:
        channels = network.inputs[0].shape[-1]
        noise = noise_map(seed, n, width, height, channels) if spatial else noise_for(seed, n, channels)
    labels = np.full((len(noise), 1), SUBTYPES.index(subtype), np.int32)
    out = [np.asarray(network([noise[i:i + batch_size], labels[i:i + batch_size]], training=False))
           for i in range(0, len(noise), batch_size)]
    if not out:
        return np.zeros((0, height, width, 3), np.uint8)
    images = to_uint8(np.concatenate(out))
    return images[:, :height, :width] if spatial else images


def check_card(folder, network: keras.Model, card: dict) -> None:
    """ModelFolderError for a generator card edited or damaged by hand (its model file may still match
    its checksum): the gallery, `gan sample` and the checks read these fields, and must not meet a
    KeyError deep inside."""
    problems = []
    if not isinstance(card.get("name"), str) or not card["name"]:
        problems.append("no name")
    subtypes = card.get("subtypes")
    if not isinstance(subtypes, list) or not subtypes or not set(subtypes) <= set(SUBTYPES):
        problems.append(f"subtypes {subtypes!r} are not a list of known subtypes")
    training = card.get("training", {})
    if not isinstance(training, dict) or not isinstance(training.get("images_by_subtype", {}), dict):
        problems.append("its training block is not a table")
    try:
        GanConfig.from_dict(card["config"])
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        problems.append(f"its config cannot be read ({type(error).__name__}: {error})")
    if len(network.inputs) != 2:
        problems.append("its network does not take noise and a subtype")
    if problems:
        raise ModelFolderError(f"The generator card in {folder} is not usable: {'; '.join(problems)}")


class Generator:
    """A generator folder: its network, card, scale, and patches or fields of a subtype."""

    def __init__(self, network: keras.Model, card: dict):
        self.network, self.card = network, card
        self.name, self.subtypes = card["name"], list(card["subtypes"])
        self.spatial = len(network.inputs[0].shape) == 4
        self.mpp = card.get("mpp")
        self.patch_px = int(card["image_size"])

    @classmethod
    def load(cls, folder) -> "Generator":
        network, card = load_model_folder(folder, kind=GENERATOR)
        check_card(folder, network, card)
        return cls(network, card)

    def _check(self, subtype: str) -> None:
        if subtype not in self.subtypes:
            raise UserInputError(f"Generator {self.name!r} was not trained on {subtype!r}; it knows {self.subtypes}")

    def fields(self, subtype: str, n: int, seed: int = 0, noise: np.ndarray | None = None) -> np.ndarray:
        """n field-size images (a 200X field at the generator's scale; a legacy generator's own size)."""
        self._check(subtype)
        return generate(self.network, subtype, n, seed, field_px(self.mpp) if self.spatial else self.patch_px, noise)

    def field_noise(self, n: int, seed: int = 0, chunk: int = 64):
        """The noise of `fields(subtype, n, seed)` in chunks of at most `chunk` images, to draw them so."""
        return noise_chunks(seed, n, field_px(self.mpp) if self.spatial else None, self.network.inputs[0].shape[-1], chunk)

    def canvas(self, subtype: str, n: int, width: int, height: int, seed: int = 0) -> np.ndarray:
        self._check(subtype)
        return generate(self.network, subtype, n, seed, (width, height))

    def legacy_field_px(self, mpp: float) -> tuple[int, int]:
        """A legacy generator's image at mpp: it drew a crop of on average the middle of its crop
        range of a (squashed) field, taken as a 200X field, the real set's commonest."""
        low, high = self.card.get("config", {}).get("crop_scale", (1.0, 1.0))
        width, height = field_px(mpp)
        fraction = (low + high) / 2.0
        return max(1, round(width * fraction)), max(1, round(height * fraction))

    def patches(self, subtype: str, n: int, size: int, mpp: float, seed: int = 0) -> np.ndarray:
        """n size x size patches at mpp microns per pixel: a texture generator at its own scale
        draws them directly; a legacy one's images are resampled to mpp and cropped at random."""
        self._check(subtype)
        if self.spatial:
            if abs(self.mpp - mpp) > 1e-6 * mpp:
                raise UserInputError(f"Generator {self.name!r} draws at {self.mpp} um/px, not {mpp}")
            return generate(self.network, subtype, n, seed, size)
        rng = np.random.default_rng(seed)
        width, height = self.legacy_field_px(mpp)
        out = []
        for image in generate(self.network, subtype, n, seed):
            field = np.asarray(Image.fromarray(image).resize((max(width, size), max(height, size)), Image.LANCZOS))
            top, left = rng.integers(0, field.shape[0] - size + 1), rng.integers(0, field.shape[1] - size + 1)
            out.append(field[top:top + size, left:left + size])
        return np.stack(out) if out else np.zeros((0, size, size, 3), np.uint8)


def grid(rows: list[np.ndarray], gap: int = 2) -> np.ndarray:
    """List of [n, H, W, 3] uint8 rows (same H and W) -> one image with a white gap."""
    n, height, width = max(len(r) for r in rows), rows[0].shape[1], rows[0].shape[2]
    canvas = np.full((len(rows) * (height + gap), n * (width + gap), 3), 255, np.uint8)
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            canvas[r * (height + gap):r * (height + gap) + height, c * (width + gap):c * (width + gap) + width] = image
    return canvas


def synthetic_statement(generator: str) -> str:
    """What every synthetic image says of itself, in words: its SYN_ file name is lost on a rename."""
    return (f"SYNTHETIC image, generated by the GAN generator '{generator}'. Not patient tissue; "
            "for training only, never for diagnosis.")


def save_synthetic_png(image: np.ndarray, target, generator: str) -> None:
    """A PNG (path or file) whose text chunks (Description, Comment) carry synthetic_statement."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key in ("Description", "Comment"):
        info.add_text(key, synthetic_statement(generator))
    Image.fromarray(image).save(target, format="PNG", pnginfo=info)


def save_sample_grid(network, subtypes, noise: np.ndarray, path: Path) -> None:
    """Same noise at every save, one row per subtype, so grids show progress over training."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid([generate(network, s, len(noise), noise=noise, size=noise.shape[1] * UPSCALE)
                          for s in subtypes])).save(path)


def write_samples(model_dir, subtype: str, n: int, out_dir, seed: int = 0, chunk: int = 64) -> list[Path]:
    """n field-size PNGs named SYN_<code>-<generator>-<seed>-<i>.png (never a BreakHis name), drawn
    and written `chunk` at a time."""
    generator = Generator.load(model_dir)
    generator._check(subtype)
    if n < 0 or seed < 0:  # a negative seed: numpy refuses it, and SYN_ names could not carry it
        raise UserInputError(f"n and seed must be >= 0, got {n} and {seed}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    record_provenance(out_dir, provenance_of(generator.card))
    paths = []
    for noise in generator.field_noise(n, seed, chunk):  # fields are large: draw and write them in chunks
        for image in generator.fields(subtype, len(noise), noise=noise):
            paths.append(out_dir / synthetic_name(subtype, generator.name, seed, len(paths)))
            save_synthetic_png(image, paths[-1], generator.name)
    return paths


def fill_folder_from_generator(model_dir, subtypes, counts, out_dir, seed: int = 0) -> dict[str, int]:
    """Write counts[subtype] (or one int for all) synthetic images per subtype for balance.synthetic_fill."""
    counts = counts if isinstance(counts, dict) else {s: int(counts) for s in subtypes}
    return {s: len(write_samples(model_dir, s, int(counts.get(s, 0)), out_dir, seed)) for s in subtypes}
