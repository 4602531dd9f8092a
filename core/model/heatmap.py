"""Heat maps drawn for people: a low-resolution CAM resized onto the image, the Turbo colour map,
its scale bar and the blend over the image.

Apart from core.model.cam, which computes the maps with TensorFlow: NumPy and Pillow only, so the
pages, the PDF report and the slide export draw every heat map with one colour scale without
loading a model.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

# A map whose outermost ring of cells is on average this many times brighter than the cells inside
# is the convolutions' response to their zero padding, not tissue: measured on the bundled model
# over 94 real images, 14 stage-2 maps (3 stage-1) drew such a frame, some with nothing inside.
BORDER_RATIO = 2.0


def _without_border_frame(cam: np.ndarray) -> tuple[np.ndarray, str]:
    """Replace a padding frame (see BORDER_RATIO) by the ring just inside it, and say so."""
    if min(cam.shape) < 4:
        return cam, ""
    ring = np.ones(cam.shape, bool)
    ring[1:-1, 1:-1] = False
    inside = float(cam[~ring].mean())
    if float(cam[ring].mean()) <= BORDER_RATIO * max(inside, 0.0) or cam[ring].max() <= 0:
        return cam, ""
    share = float(cam[ring].sum() / max(cam.sum(), 1e-12))
    cleaned = cam.copy()
    cleaned[0], cleaned[-1] = cleaned[1], cleaned[-2]
    cleaned[:, 0], cleaned[:, -1] = cleaned[:, 1], cleaned[:, -2]
    return cleaned, (f"a bright frame along the image border ({share:.0%} of the map) was left out: it is the "
                     "network's response to the padding at the edges, not tissue")


def _bilinear_weights(out: int, size: int) -> np.ndarray:
    """(out, size) weights of Pillow's bilinear filter along one axis: a triangle of half-width
    max(1, size / out) around each output pixel's centre (half-pixel centres), normalised over
    the pixels inside the image (which clamps at the edges). Enlarging, this is plain bilinear
    interpolation, as tf.image.resize; shrinking, it averages as Pillow does (no aliasing)."""
    scale = size / out
    support = max(1.0, scale)
    centres = (np.arange(out) + 0.5) * scale
    weights = np.clip(1.0 - np.abs(np.arange(size)[None, :] + 0.5 - centres[:, None]) / support, 0.0, None)
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def resize_maps(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Small maps (..., h, w) -> (..., H, W) float32 with Pillow's bilinear filter, all at once.

    Written here rather than called from Pillow or TensorFlow: for a few cells resized to a few
    dozen (a field's crop maps stitched into one, core.model.cam) this is two tiny products, which
    take every map of a batch in one call in microseconds, where an eager tf.image.resize per crop
    cost a millisecond. einsum, not matmul: matmul hands the product to OpenBLAS, whose threads
    then spin beside TensorFlow's and slowed the next model pass by a third (bench/diagnose.py).
    Equal to Pillow's and to tf.image.resize's bilinear enlargement within 1e-5
    (tests/test_heatmap_resize.py). Maps at the size shown are Pillow's (to_heatmap)."""
    maps = np.asarray(maps, np.float32)
    rows, columns = _bilinear_weights(int(size[0]), maps.shape[-2]), _bilinear_weights(int(size[1]), maps.shape[-1])
    return np.einsum("...hw,Ww->...hW", np.einsum("Hh,...hw->...Hw", rows, maps), columns)


def to_heatmap(cam, size: tuple[int, int]) -> tuple[np.ndarray, str]:
    """Low-resolution CAM (h, w) -> (float32 (H, W) in [0, 1], note) at size = (H, W).

    A padding frame along the border is left out and noted (`_without_border_frame`). Scaled to
    [0, 1] before the bilinear resize (which keeps values in that range), so the arithmetic is on
    h x w values, not H x W. The resize is Pillow's bilinear filter on a float image (resize_maps'
    filter, in C for the full-size map): the same values as tf.image.resize (half-pixel centres;
    within 1e-6) in half the time."""
    cam = np.asarray(cam, np.float32)
    cam, border = _without_border_frame(cam) if np.isfinite(cam).all() else (cam, "")
    low, high = float(cam.min()), float(cam.max())
    if not np.isfinite(high) or not np.isfinite(low) or high - low < 1e-12:
        empty = "empty map: no region raises this score"
        return np.zeros(size, np.float32), f"{empty} ({border})" if border else empty
    scaled = Image.fromarray(np.ascontiguousarray((cam - low) / (high - low), np.float32))  # mode "F"
    return np.asarray(scaled.resize((int(size[1]), int(size[0])), Image.Resampling.BILINEAR), np.float32), border


def _turbo_lut() -> np.ndarray:
    """256-entry Turbo colormap (perceptual rainbow) from its polynomial fit (Ruofei Du / Google)."""
    x = np.linspace(0.0, 1.0, 256)
    powers = np.stack([x ** k for k in range(6)], axis=1)
    coefficients = np.array([
        [0.13572138, 0.09140261, 0.10667330],
        [4.61539260, 2.19418839, 12.64194608],
        [-42.66032258, 4.84296658, -60.58204836],
        [132.13108234, -14.18503333, 110.36276771],
        [-152.94239396, 4.27729857, -89.90310912],
        [59.28637943, 2.82956604, 27.34824973],
    ])
    return np.round(np.clip(powers @ coefficients, 0.0, 1.0) * 255).astype(np.uint8)


TURBO = _turbo_lut()


def colorize(heatmap: np.ndarray) -> np.ndarray:
    """(H, W) values in [0, 1] -> uint8 RGB through the Turbo colormap."""
    indices = (np.clip(np.nan_to_num(heatmap), 0.0, 1.0) * 255 + 0.5).astype(np.uint8)  # rounded
    return TURBO[indices]


# The legends of the two kinds of map drawn in one colour scale (Turbo, `colour_bar`): every page and PDF
# prints one of these under its map, never its own wording.
COLOUR_SCALE = ("Heat-map colour scale: dark blue = the lowest, dark red = the highest value of each map "
                "(each map is scaled to its own range; the colours rank regions within one map, they are "
                "not probabilities)")
P_MALIGNANT_SCALE = ("Colour scale: p(malignant) of each analysed tile, from dark blue = 0 to dark red = 1 (an "
                     "absolute probability, the same scale on every slide; uncoloured areas were not analysed)")


def colour_bar(width: int = 512, height: int = 14) -> np.ndarray:
    """The Turbo colour scale from 0 (left) to 1 (right) as an RGB strip, shown with every heat map."""
    return np.repeat(colorize(np.linspace(0.0, 1.0, width, dtype=np.float32))[None], height, axis=0)


def overlay(rgb: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """Blend the colourised heatmap over the image (heatmap resized to the image if needed)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be between 0 and 1, not {alpha}")
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"overlay needs an RGB image (H, W, 3), got shape {rgb.shape}")
    if heatmap.shape != rgb.shape[:2]:
        heatmap, _ = to_heatmap(heatmap, rgb.shape[:2])
    # PIL's blend works in uint8 in C: half the time of the same sum in NumPy floats (the page draws
    # two overlays per image on every rerun), within 1 grey level of it.
    return np.asarray(Image.blend(Image.fromarray(np.ascontiguousarray(rgb, np.uint8)),
                                  Image.fromarray(colorize(heatmap)), float(alpha)))
