"""16-bit RGB(A) PNGs: read at their full depth and scaled by the bits their values use, as 16-bit TIFFs are.

Pillow cannot write these files, so `_png16` below writes them: every row with one of the five PNG
filters (so the decoder's un-filtering is exercised at 6 and 8 bytes a pixel), optionally interlaced.
"""

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from core.data.images import load_image
from core.errors import ImageError

# Adam7 passes: (first row, first column, row step, column step).
_ADAM7 = [(0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 8, 4), (0, 2, 4, 4), (2, 0, 4, 2), (0, 1, 2, 2), (1, 0, 2, 1)]


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _filtered_rows(pixels: np.ndarray) -> bytes:
    """Rows of big-endian 16-bit samples, row y filtered with filter y % 5 (None, Sub, Up, Average, Paeth)."""
    height, width, channels = pixels.shape
    bpp = 2 * channels
    rows = pixels.astype(">u2").reshape(height, -1).view(np.uint8).astype(np.int32)
    out = []
    for y, raw in enumerate(rows):
        left = np.concatenate([np.zeros(bpp, np.int32), raw[:-bpp]])
        up = rows[y - 1] if y else np.zeros_like(raw)
        up_left = np.concatenate([np.zeros(bpp, np.int32), up[:-bpp]])
        estimate = left + up - up_left
        pa, pb, pc = np.abs(estimate - left), np.abs(estimate - up), np.abs(estimate - up_left)
        paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, up_left))
        kind = y % 5
        predictor = [0, left, up, (left + up) // 2, paeth][kind]
        out.append(bytes([kind]) + ((raw - predictor) % 256).astype(np.uint8).tobytes())
    return b"".join(out)


def _png16(pixels: np.ndarray, interlaced: bool = False, extra: bytes = b"") -> bytes:
    """A 16-bit RGB (3 channels) or RGBA (4) PNG of `pixels` (uint16, H x W x C)."""
    height, width, channels = pixels.shape
    header = struct.pack(">IIBBBBB", width, height, 16, {3: 2, 4: 6}[channels], 0, 0, int(interlaced))
    if interlaced:
        passes = [pixels[y::dy, x::dx] for y, x, dy, dx in _ADAM7]
        raw = b"".join(_filtered_rows(p) for p in passes if p.size)
    else:
        raw = _filtered_rows(pixels)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + extra + _chunk(b"IDAT", zlib.compress(raw))
            + _chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def tissue(samples_dir) -> np.ndarray:
    """A real H&E field of view (700x460)."""
    return np.asarray(Image.open(sorted(samples_dir.rglob("*.png"))[3]).convert("RGB"))


@pytest.mark.parametrize("interlaced", [False, True])
@pytest.mark.parametrize("bits", [12, 16])
def test_16bit_rgb_png_is_scaled_by_the_bits_it_uses_with_a_note(tissue, bits, interlaced):
    """Pillow decodes a 16-bit RGB PNG to its high bytes: 12-bit values came out at most 15 (nearly black)
    and were refused as 'grey or greyscale'; a full-range one lost its low bytes with no note. Both now
    get the TIFF path's scaling and note."""
    field = tissue[:96, :128]
    stored = field.astype(np.uint16) * 257 if bits == 16 else field.astype(np.uint16) * 16
    loaded = load_image(_png16(stored, interlaced), name="camera.png")
    assert np.abs(loaded.rgb.astype(int) - field).max() <= 1
    assert f"16-bit RGB ({bits}-bit values) scaled to 8-bit RGB" in loaded.notes
    assert loaded.not_histology is None


def test_16bit_png_low_bytes_are_read():
    """Values that differ only in their low byte stay apart (the high byte alone makes them one grey)."""
    values = np.arange(4096, dtype=np.uint16).reshape(64, 64)
    rgb = np.stack([values, 4095 - values, values // 2], axis=-1)
    loaded = load_image(_png16(rgb), name="ramp.png", check_histology=False)
    expected = np.rint(rgb * (255 / 4095)).astype(int)
    assert np.abs(loaded.rgb.astype(int) - expected).max() == 0


def test_16bit_rgba_png_keeps_its_alpha(tissue):
    field = tissue[:64, :64].astype(np.uint16) * 16
    alpha = np.full((64, 64, 1), 65535, np.uint16)
    alpha[:, :32] = 0  # left half transparent
    loaded = load_image(_png16(np.concatenate([field, alpha], axis=-1)), name="cut.png", check_histology=False)
    assert (loaded.rgb[:, :32] == 255).all()
    assert np.abs(loaded.rgb[:, 32:].astype(int) - tissue[:64, 32:64]).max() <= 1
    assert loaded.notes == ["16-bit RGB (12-bit values) scaled to 8-bit RGB",
                            "RGBA image: transparent areas composited on white"]


def test_16bit_png_keeps_its_exif_orientation(tissue):
    field = tissue[:48, :80]
    stored = np.ascontiguousarray(np.rot90(field, 1))  # stored turned; orientation 6 turns it back
    exif = Image.Exif()
    exif[0x0112] = 6
    loaded = load_image(_png16(stored.astype(np.uint16) * 16, extra=_chunk(b"eXIf", exif.tobytes())),
                        name="turned.png", check_histology=False)
    assert loaded.rgb.shape == field.shape and np.abs(loaded.rgb.astype(int) - field).max() <= 1
    assert loaded.notes == ["16-bit RGB (12-bit values) scaled to 8-bit RGB",
                            "rotated/flipped upright using EXIF orientation 6"]


def test_truncated_16bit_png_is_refused_in_words(tissue):
    data = _png16(tissue[:64, :64].astype(np.uint16) * 16)
    with pytest.raises(ImageError, match="truncated or corrupt"):
        load_image(data[: len(data) // 2], name="cut_short.png")
