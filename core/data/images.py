"""Safe loading of user-supplied images into uint8 RGB, with notes on every conversion.

Uploads come from anywhere: 16-bit scanner TIFFs, CMYK JPEGs, PNGs with transparency, phone
photos rotated by EXIF, renamed files, truncated downloads, decompression bombs. Each case is
either converted (and the conversion written into `notes`, so the report can say what was done)
or rejected with an `ImageError` whose text is shown to the user as is. The H&E heuristic
(core.data.histology) marks images that are clearly not stained tissue (`not_histology`: callers
give them no call) and warns on atypical ones; decoding itself never depends on it.
"""

from __future__ import annotations

import dataclasses
import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from core.data.histology import histology_check
from core.errors import ImageError

# Decompression-bomb guard (~90 MP, Pillow's own default): checked from the header, before decoding.
MAX_PIXELS = 89_478_485
MAX_FILE_BYTES = 300 * 1024 * 1024
MIN_SIDE = 32
# Larger images are downscaled for processing (the model sees 224 px anyway); noted when done.
WORKING_MAX_SIDE = 4096

EXTENSION_FORMATS = {
    ".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF",
    ".bmp": "BMP", ".gif": "GIF", ".webp": "WEBP",
}
_ORIENTATION_TAG = 0x0112
_PNG_EXIF = (b"eXIf", b"Raw profile type exif")  # a PNG's EXIF chunk, or ImageMagick's text copy of it


@dataclasses.dataclass
class LoadedImage:
    rgb: np.ndarray  # uint8, H x W x 3
    name: str
    original_mode: str
    original_size: tuple[int, int]  # (width, height) as stored in the file
    notes: list[str] = dataclasses.field(default_factory=list)
    # (width, height) at full resolution as shown: after the EXIF orientation, before any downscaling
    # (what sizes the tissue; `rgb` may be a working-size copy). Not given: original_size.
    upright_size: tuple[int, int] | None = None
    warnings: list[str] = dataclasses.field(default_factory=list)
    # Set when the image is clearly not H&E tissue (core.data.histology): it gets no call at all.
    not_histology: str | None = None

    def __post_init__(self):
        if self.upright_size is None:
            self.upright_size = self.original_size


def read_bytes(source, name: str) -> bytes:
    """Bytes of an upload or a file, with clear errors for missing, empty and huge files."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise ImageError(f"'{name}': file not found.")
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ImageError(f"'{name}' is larger than {MAX_FILE_BYTES // 2**20} MB; refusing to load it.")
        data = path.read_bytes()
    elif isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif hasattr(source, "getvalue") or hasattr(source, "read"):  # Streamlit UploadedFile, BytesIO.
        data = source.getvalue() if hasattr(source, "getvalue") else source.read()
    else:
        raise ImageError(f"'{name}': expected image bytes or a file path, got {type(source).__name__}.")
    if len(data) == 0:
        raise ImageError(f"'{name}' is empty (0 bytes).")
    if len(data) > MAX_FILE_BYTES:
        raise ImageError(f"'{name}' is larger than {MAX_FILE_BYTES // 2**20} MB; refusing to load it.")
    return data


def _not_an_image_message(data: bytes, name: str) -> str:
    """Say what the file looks like, so 'not an image' is actionable."""
    head = data[:1024]
    if head.startswith(b"%PDF"):
        kind = "a PDF document"
    elif head.startswith(b"PK\x03\x04"):
        kind = "a ZIP archive (or an Office document)"
    elif b"\x00" not in head and all(32 <= b < 127 or b in b"\r\n\t" for b in head):
        kind = "a text file"
    else:
        kind = "not a supported image format"
    return f"'{name}' is {kind}, not an image. Upload a PNG, JPEG or TIFF microscopy image."


def _open(data: bytes, name: str) -> Image.Image:
    """Open lazily (header only) and apply the size guards before any pixel is decoded."""
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise ImageError(
            f"'{name}' declares an enormous size (over {2 * MAX_PIXELS / 1e6:.0f} megapixels); "
            "refused as a possible decompression bomb."
        ) from None
    except UnidentifiedImageError:
        raise ImageError(_not_an_image_message(data, name)) from None
    except Exception as error:  # Pillow raises many types for corrupt headers.
        raise ImageError(f"'{name}' could not be read as an image ({error}).") from None
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise ImageError(
            f"'{name}' is {width}x{height} = {width * height / 1e6:.0f} megapixels, above the "
            f"{MAX_PIXELS / 1e6:.0f} MP limit (possible decompression bomb). Export a smaller image."
        )
    if min(width, height) < MIN_SIDE:
        raise ImageError(
            f"'{name}' is only {width}x{height} pixels; at least {MIN_SIDE} pixels per side are "
            "needed for a microscopy field of view."
        )
    return image


def _format_note(image: Image.Image, name: str) -> list[str]:
    """Content decides the decoder; a misleading extension is only noted."""
    expected = EXTENSION_FORMATS.get(Path(name).suffix.lower())
    if expected and image.format and image.format != expected:
        return [f"file is named '{Path(name).suffix}' but contains {image.format}; decoded as {image.format}"]
    return []


def _decode(image: Image.Image, data: bytes, name: str, max_side: int | None = WORKING_MAX_SIDE,
            fast_tried: bool = False) -> tuple[Image.Image, list[str]]:
    """First frame, fully decoded (JPEG at reduced scale when far above the working size).
    fast_tried: the caller already found that _decode_plain_png does not take this file."""
    notes = []
    frames = getattr(image, "n_frames", 1)
    if frames > 1:
        image.seek(0)
        notes.append(f"multi-frame {image.format} ({frames} frames): the first frame is used")
    fast = None if fast_tried else _decode_plain_png(image, data)
    if fast is not None:
        return Image.fromarray(fast), notes
    wide = _decode_16bit_rgb(image, data, name)
    if wide is not None:
        return wide[0], notes + [wide[1]]
    if max_side is not None and image.format == "JPEG" and max(image.size) > 2 * max_side:
        ratio = max_side / max(image.size)
        image.draft(image.mode, (int(image.width * ratio) + 1, int(image.height * ratio) + 1))
    try:
        image.load()
    except Exception as error:  # Truncated or corrupt pixel data.
        raise _corrupt(name, error) from None
    return image, notes


def _decode_plain_png(image: Image.Image, data: bytes) -> np.ndarray | None:
    """An 8-bit RGB PNG without transparency (every BreakHis scan) decoded by libpng through
    imagecodecs (already a dependency of the slide reader): lossless, so bit-identical to Pillow's
    decoder (tests check), and about half its time (~5 ms of a 700x460 field; TensorFlow's decoder,
    used before, ~7 ms), which matters in a diagnosis of ~70 ms (bench/diagnose.py). Anything
    else, or any problem: None, and Pillow decodes it with its own checks and messages. `data` is
    the file's bytes, which the caller has (Pillow's private `image.fp` is not read)."""
    if image.format != "PNG" or image.mode != "RGB" or "transparency" in image.info or len(data) < 33 \
            or data[12:16] != b"IHDR" or data[24] != 8 or data[25] != 2 or any(marker in data for marker in _PNG_EXIF):
        return None  # (EXIF: Pillow keeps it, so the image is turned upright as every other one is)
    try:  # where it is not installed (a bare training machine), Pillow decodes
        import imagecodecs
    except ImportError:
        return None
    try:
        pixels = imagecodecs.png_decode(data)
    except Exception:  # noqa: BLE001 - truncated or corrupt: Pillow says so in words
        return None
    if pixels.shape != (image.height, image.width, 3) or pixels.dtype != np.uint8:
        return None
    return pixels


def _decode_16bit_rgb(image: Image.Image, data: bytes, name: str) -> tuple[Image.Image, str] | None:
    """An RGB(A) TIFF or PNG of 16 bits a sample, which Pillow reports as "RGB" and decodes to its high
    bytes (12-bit camera values come out nearly black and are refused as greyscale), read at its full
    depth and scaled by the bits its values use, as 16-bit greyscale is (_scale_to_uint8), with a note.
    The file's orientation is kept for _apply_orientation. None for any other image."""
    read = {"TIFF": _tiff_16bit_samples, "PNG": _png_16bit_samples}.get(image.format)
    samples = read(image, data, name) if read and image.mode in ("RGB", "RGBA") else None
    if samples is None:
        return None
    array, orientation = samples
    scaled, note = _scale_to_uint8(array[..., :3], "I;16", "RGB")
    planes = [np.clip(np.rint(scaled), 0, 255).astype(np.uint8)]
    if array.shape[-1] == 4:  # alpha at its full 16-bit range
        planes.append(np.rint(array[..., 3:] * (255.0 / 65535)).astype(np.uint8))
    decoded = Image.fromarray(np.concatenate(planes, axis=-1), image.mode)
    if orientation not in (None, 1):
        exif = Image.Exif()
        exif[_ORIENTATION_TAG] = orientation
        decoded.info["exif"] = exif.tobytes()
    return decoded, note


def _corrupt(name: str, error: Exception) -> ImageError:
    return ImageError(f"'{name}' is truncated or corrupt and cannot be decoded ({error}). "
                      "Re-export or re-download the file.")


def _tiff_16bit_samples(image: Image.Image, data: bytes, name: str) -> tuple[np.ndarray, int | None] | None:
    """A 16-bit RGB(A) TIFF's samples (H x W x C uint16) read by tifffile, and its orientation tag (Pillow
    turns a TIFF upright as it loads; this one is turned by _apply_orientation). None if not 16-bit, or
    if tifffile reads it otherwise."""
    bits = image.tag_v2.get(258)  # BitsPerSample
    if set(bits if isinstance(bits, tuple) else (bits,)) != {16}:
        return None
    import tifffile

    try:
        array = tifffile.imread(io.BytesIO(data), key=0)
    except Exception as error:  # noqa: BLE001 - Pillow read the header; a damaged strip is a bad file
        raise _corrupt(name, error) from None
    channels, stored = len(image.mode), (image.tag_v2.get(257), image.tag_v2.get(256))  # as stored: Pillow's
    if array.ndim == 3 and array.shape[0] == channels and array.shape[1:] == stored:  # size is upright
        array = np.moveaxis(array, 0, -1)  # planar configuration: one plane per sample
    if array.dtype != np.uint16 or array.shape != (*stored, channels):
        return None
    return array, image.tag_v2.get(_ORIENTATION_TAG)


def _png_16bit_samples(image: Image.Image, data: bytes, name: str) -> tuple[np.ndarray, int | None] | None:
    """A 16-bit RGB(A) PNG's samples (H x W x C uint16) and its EXIF orientation. Pillow has no 16-bit
    RGB mode: it un-filters (and de-interlaces) the rows and keeps the first byte of each big-endian
    sample ("RGB;16B"). Unpacking the same rows as little-endian ("RGB;16L") keeps the second byte, the
    low one, so the file decoded both ways gives the true values, with Pillow's own checks. None if
    the PNG is not 16-bit RGB(A)."""
    if len(data) < 26 or data[12:16] != b"IHDR" or data[24] != 16 or data[25] not in (2, 6):
        return None
    high_bytes, low_bytes = f"{image.mode};16B", f"{image.mode};16L"
    with Image.open(io.BytesIO(data)) as low:
        if len(low.tile) != 1 or low.tile[0].args != high_bytes or low.mode != image.mode:
            return None
        low.tile = [low.tile[0]._replace(args=low_bytes)]
        try:
            low.load()
            image.load()
        except Exception as error:  # noqa: BLE001 - the header was read; damaged pixel data is a bad file
            raise _corrupt(name, error) from None
        array = (np.asarray(image, np.uint16) << 8) | np.asarray(low, np.uint16)
    return array, image.getexif().get(_ORIENTATION_TAG)


def _apply_orientation(image: Image.Image) -> tuple[Image.Image, list[str]]:
    """Rotate/flip as the camera intended (EXIF orientation), so heatmaps match what users see."""
    try:
        orientation = image.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:
        return image, ["EXIF metadata unreadable; orientation left as stored"]
    if orientation in (None, 1):
        return image, []
    try:
        return ImageOps.exif_transpose(image), [f"rotated/flipped upright using EXIF orientation {orientation}"]
    except Exception:
        return image, [f"EXIF orientation {orientation} could not be applied; left as stored"]


def _scale_to_uint8(values: np.ndarray, mode: str, colour: str = "grayscale") -> tuple[np.ndarray, str]:
    """High bit-depth pixels -> 0..255 by scaling (never clipping), with a note saying how."""
    values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(values.min()), float(values.max())
    if mode == "F" and low >= 0.0 and high <= 1.0:
        return values * 255.0, "32-bit float image (0..1) scaled to 8-bit RGB"
    if low < 0 or (mode == "F" and high > 255.0):
        span = high - low if high > low else 1.0
        return (values - low) * (255.0 / span), f"{mode} image (range {low:g}..{high:g}) rescaled to 8-bit RGB"
    if mode == "F":
        return values, "32-bit float image (0..255) converted to 8-bit RGB"
    # Unsigned integers: scale by the bit depth actually used (12-bit cameras store in 16 bits).
    bits = max(8, int(high).bit_length())
    depth = "16-bit" if mode.startswith("I;16") else "32-bit"
    return values * (255.0 / (2**bits - 1)), f"{depth} {colour} ({bits}-bit values) scaled to 8-bit RGB"


def _composite_on_white(image: Image.Image) -> tuple[Image.Image, str]:
    rgba = image.convert("RGBA")
    alpha = np.asarray(rgba.getchannel("A"))
    if alpha.min() == 255:
        return rgba.convert("RGB"), f"{image.mode} image: fully opaque alpha channel dropped"
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB"), (
        f"{image.mode} image: transparent areas composited on white"
    )


def _to_rgb(image: Image.Image) -> tuple[Image.Image, list[str]]:
    """Every Pillow mode -> RGB, saying what was done."""
    mode = image.mode
    if mode == "RGB":
        return image, []
    if mode in ("RGBA", "RGBa", "LA", "La", "PA") or (mode == "P" and "transparency" in image.info):
        rgb, note = _composite_on_white(image)
        return rgb, (["palette image converted to RGB"] if mode == "P" else []) + [note]
    if mode.startswith("I") or mode == "F":
        scaled, note = _scale_to_uint8(np.asarray(image), mode)
        gray = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
        return Image.fromarray(np.stack([gray] * 3, axis=-1)), [note]
    notes = {
        "L": "8-bit grayscale converted to RGB (three equal channels)",
        "1": "1-bit black-and-white image converted to RGB",
        "P": "palette image converted to RGB",
        "CMYK": "CMYK image converted to RGB",
        "YCbCr": "YCbCr image converted to RGB",
        "LAB": "Lab image converted to RGB",
        "HSV": "HSV image converted to RGB",
    }
    try:
        return image.convert("RGB"), [notes.get(mode, f"{mode} image converted to RGB")]
    except Exception as error:
        raise ImageError(f"Images in mode {mode} are not supported ({error}).") from None


def to_rgb(image: Image.Image) -> tuple[np.ndarray, list[str]]:
    """A decoded image of any mode -> uint8 RGB (H x W x 3) and the notes saying what was done: the one
    mode conversion of uploads and of slide regions (core.slide.reader)."""
    rgb, notes = _to_rgb(image)
    return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8)), notes


def _limit_size(image: Image.Image, notes: list[str], max_side: int | None = WORKING_MAX_SIDE) -> Image.Image:
    if max_side is None or max(image.size) <= max_side:
        return image
    before = image.size
    image = image.copy()
    image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    notes.append(f"downscaled from {before[0]}x{before[1]} to {image.width}x{image.height} for processing")
    return image


def _decode_to_rgb(data: bytes, name: str, max_side: int | None = WORKING_MAX_SIDE
                   ) -> tuple[np.ndarray, str, tuple[int, int], tuple[int, int], list[str]]:
    """Header guards, first frame, EXIF orientation, mode and size: the whole conversion chain."""
    with _open(data, name) as image:
        original_mode, original_size = image.mode, image.size
        notes = _format_note(image, name)
        fast_tried = getattr(image, "n_frames", 1) == 1 and (max_side is None or max(image.size) <= max_side)
        if fast_tried:
            pixels = _decode_plain_png(image, data)
            if pixels is not None:  # RGB, upright (no EXIF) and within the working size: nothing to convert,
                # so no round trip through a Pillow image (two copies of the field, a tenth of the decode)
                return pixels, original_mode, original_size, original_size, notes
        decoded, decode_notes = _decode(image, data, name, max_side, fast_tried)
        notes += decode_notes
        if image.format == "JPEG" and decoded.size != original_size:
            notes.append(f"JPEG decoded at reduced scale ({decoded.width}x{decoded.height})")
        oriented, orientation_notes = _apply_orientation(decoded)
        upright_size = oriented.size  # the full size upright; a JPEG decoded reduced: its original size, turned
        if image.format == "JPEG" and decoded.size != original_size:
            upright_size = original_size if oriented.size == decoded.size else original_size[::-1]
        rgb_image, mode_notes = _to_rgb(oriented)
        notes += orientation_notes + mode_notes
        rgb_image = _limit_size(rgb_image, notes, max_side)
        rgb = np.ascontiguousarray(np.asarray(rgb_image, dtype=np.uint8))
    return rgb, original_mode, original_size, upright_size, notes


def load_image(source, name: str | None = None, check_histology: bool = True,
               max_side: int | None = WORKING_MAX_SIDE) -> LoadedImage:
    """Load an upload (bytes, file-like) or a path as uint8 RGB; raise ImageError with a reason.

    Conversions are listed in `notes`; an image that is clearly not H&E tissue gets its reason in
    `not_histology` (callers give it no call), an atypical H&E image a `warnings` entry.
    check_histology=False skips that check (~20 ms) for bulk loading of known dataset images.
    max_side=None keeps the full resolution (core.slide tiles large images at their own scale).
    """
    if name is None:
        name = Path(source).name if isinstance(source, (str, os.PathLike)) else getattr(source, "name", "upload")
    data = read_bytes(source, name)
    try:
        rgb, original_mode, original_size, upright_size, notes = _decode_to_rgb(data, name, max_side)
    except ImageError:
        raise
    except MemoryError:
        raise ImageError(f"'{name}' is too large to decode in the available memory.") from None
    except Exception as error:  # Any decoder failure is a bad file, never a crash.
        raise ImageError(f"'{name}' could not be decoded ({type(error).__name__}: {error}).") from None
    loaded = LoadedImage(rgb, name, original_mode, original_size, notes, upright_size=upright_size)
    return check_loaded(loaded) if check_histology else loaded


def check_loaded(loaded: LoadedImage) -> LoadedImage:
    """The H&E check of a loaded image (core.data.histology): not histology -> `not_histology` (no
    call), atypical -> a `warnings` entry. Apart from load_image so that the app can run it while
    the model's pass runs (core.app.service.classify)."""
    verdict = histology_check(loaded.rgb)
    if not verdict.analysable:
        loaded.not_histology = f"{verdict.reason}; score {verdict.score:.2f}"
    elif not verdict.typical:
        loaded.warnings.append(
            f"Atypical for H&E histology ({verdict.reason}; score {verdict.score:.2f}). The model was "
            "trained on BreakHis H&E slides; check the call against the image."
        )
    return loaded
