"""One reader for every slide and image: regions at any pyramid level, never level 0 whole.

    open_slide(path or upload bytes, name=..., mpp=..., magnification=...) -> SlideReader

Whole-slide formats (SVS, NDPI, MRXS, SCN, generic tiled TIFF, ...) go through OpenSlide (the
`openslide-bin` wheel ships the native library); TIFFs OpenSlide cannot open (striped, or BigTIFF
variants it refuses), OME-TIFFs and TIFF uploads held in memory go through tiffslide (what tifffile
says of a TIFF first, its mode, data and OME resolution: core.slide.tiff); plain PNG/JPEG images
are decoded by the project's safe loader (core.data.images: bombs, modes, EXIF) at full resolution,
and so is a TIFF that is not 8-bit grey or RGB (16-bit, palette, CMYK, ...: the loader's one
conversion of modes and bit depths; float greyscale, not float RGB), or it is refused by its mode
when too large for that.
Every backend reads the same way: an RGB region padded with white outside the slide, as glass is.

The microns per pixel come from the slide's metadata (an OME-TIFF's OME-XML included); else from
its objective power (0.25 um/px at 40x, the figure of core.data.scale); else from the magnification
its name states or the user's choice (core.data.scale.image_scale). Each bad input raises a
SlideError (a UserInputError) whose text is shown as is.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image

from core.data.scale import REFERENCE_MAGNIFICATION, REFERENCE_MPP, Scale, image_scale
from core.errors import UserInputError
from core.paths import visible_files
from core.slide.tiff import data_problem, first_page, is_ome, ome_scale, tiff_mode

SLIDE_EXTENSIONS = (".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide", ".tif", ".tiff",
                    ".dcm", ".png", ".jpg", ".jpeg")
BAND_PIXELS = 8_000_000  # an overview is read in bands of at most this many pixels at the read level
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


class SlideError(UserInputError):
    """A slide or image that cannot be used; str(error) is the message for the user."""


class SlideReader:
    """A slide (or image) open for reading. Coordinates are level-0 pixels (x, y); sizes (w, h)."""

    backend = "?"
    thread_safe = True  # regions may be read from several threads at once (OpenSlide's C library, NumPy)

    def __init__(self, name: str, level_dimensions, level_downsamples, scale: Scale, notes=()):
        self.name = name
        self.level_dimensions = [tuple(int(v) for v in d) for d in level_dimensions]
        self.level_downsamples = [float(d) for d in level_downsamples]
        self.scale = scale
        self.notes = list(notes)

    @property
    def dimensions(self) -> tuple[int, int]:
        return self.level_dimensions[0]

    def level_scale(self, level: int) -> Scale:
        d = self.level_downsamples[level]
        return Scale(self.scale.x * d, self.scale.y * d, self.scale.source)

    def best_level(self, downsample: float) -> int:
        """The coarsest level that is at least as fine as `downsample` (reading it never enlarges)."""
        fitting = [i for i, d in enumerate(self.level_downsamples) if d <= downsample * (1 + 1e-6)]
        return max(fitting, key=lambda i: self.level_downsamples[i]) if fitting else 0

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """uint8 RGB (h, w, 3) of the region whose top-left is `location` (level 0) at `level`;
        parts outside the slide are white. A region wholly outside the slide is an error."""
        if not 0 <= level < len(self.level_dimensions):
            raise SlideError(f"'{self.name}' has levels 0-{len(self.level_dimensions) - 1}, not {level}.")
        (x, y), (w, h) = (int(location[0]), int(location[1])), (int(size[0]), int(size[1]))
        width, height = self.dimensions
        d = self.level_downsamples[level]
        if w < 1 or h < 1 or x >= width or y >= height or x + w * d <= 0 or y + h * d <= 0:
            raise SlideError(f"The region at ({x}, {y}) of {w}x{h} px (level {level}) lies outside "
                             f"'{self.name}' ({width}x{height} px at level 0).")
        level_w, level_h = self.level_dimensions[level]
        # The part inside the level, in level pixels; the rest stays white.
        left, top = max(0, math.floor(x / d)), max(0, math.floor(y / d))
        right, bottom = min(level_w, math.floor(x / d) + w), min(level_h, math.floor(y / d) + h)
        canvas = np.full((h, w, 3), 255, np.uint8)
        if right > left and bottom > top:
            try:
                inner = self._read((round(left * d), round(top * d)), level, (right - left, bottom - top))
            except Exception as error:  # noqa: BLE001 - a damaged tile is a bad file, not a crash
                raise SlideError(f"'{self.name}' could not be read at ({x}, {y}), level {level}: it looks "
                                 f"truncated or corrupt ({type(error).__name__}: {error}).") from None
            ox, oy = left - math.floor(x / d), top - math.floor(y / d)
            try:
                canvas[oy:oy + inner.shape[0], ox:ox + inner.shape[1]] = inner[:h - oy, :w - ox]
            except ValueError as error:  # pixels that are not RGB: a message, never a crash
                raise SlideError(f"'{self.name}' could not be read as RGB at ({x}, {y}), level {level} "
                                 f"({error}).") from None
        return canvas

    def overview(self, downsample: float) -> np.ndarray:
        """The whole slide at level-0 size / downsample (e.g. a thumbnail or the tissue mask's
        image), read from the best level in bands, so memory stays bounded on any slide."""
        width, height = self.dimensions
        out_w, out_h = max(1, math.ceil(width / downsample)), max(1, math.ceil(height / downsample))
        level = self.best_level(downsample)
        d = self.level_downsamples[level]
        level_w = self.level_dimensions[level][0]
        rows_per_band = max(1, int(BAND_PIXELS / max(level_w, 1) * d / downsample))
        bands = []
        for row in range(0, out_h, rows_per_band):
            rows = min(rows_per_band, out_h - row)
            y0 = round(row * downsample)
            read_h = max(1, min(math.ceil(rows * downsample / d), math.ceil((height - y0) / d)))
            band = self.read_region((0, y0), level, (level_w, read_h))
            target = (out_w, rows)
            image = Image.fromarray(band)
            if image.size != target:
                image = image.resize(target, Image.Resampling.BOX)
            bands.append(np.asarray(image))
        return np.concatenate(bands, axis=0)

    def _read(self, location, level, size) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.close()


def _rgb(region) -> np.ndarray:
    """A region as read (OpenSlide: a PIL RGBA image, transparent where nothing was scanned; tiffslide:
    a uint8 array of 1-4 samples: grey, grey+alpha, RGB, RGBA) -> uint8 RGB with transparent parts
    on white, by the safe loader's own mode conversion (core.data.images.to_rgb), so a slide's
    region and the same image on Diagnose get the same pixels."""
    from core.data.images import to_rgb

    if not isinstance(region, Image.Image):
        array = np.asarray(region)
        if array.ndim == 3 and array.shape[2] == 1:  # tiffslide's grey: one sample a pixel
            array = array[..., 0]
        region = Image.fromarray(np.ascontiguousarray(array))
    return to_rgb(region)[0]


class OpenSlideReader(SlideReader):
    backend = "openslide"

    def __init__(self, path: Path, handle, scale: Scale, notes=()):
        super().__init__(path.name, handle.level_dimensions, handle.level_downsamples, scale, notes)
        self.handle = handle

    def _read(self, location, level, size):
        return _rgb(self.handle.read_region(location, level, size))

    def close(self):
        self.handle.close()


class TiffSlideReader(SlideReader):
    backend = "tiffslide"
    thread_safe = False  # one tifffile handle: regions are read one at a time

    def __init__(self, name: str, handle, scale: Scale, notes=()):
        super().__init__(name, handle.level_dimensions, handle.level_downsamples, scale, notes)
        self.handle = handle

    def _read(self, location, level, size):
        return _rgb(self.handle.read_region(location, level, size, as_array=True, padding=False))

    def close(self):
        self.handle.close()


class ImageReader(SlideReader):
    """A plain image decoded once (the safe loader), read by slicing; one level."""

    backend = "image"

    def __init__(self, name: str, rgb: np.ndarray, scale: Scale, notes=()):
        super().__init__(name, [(rgb.shape[1], rgb.shape[0])], [1.0], scale, notes)
        self.rgb = rgb

    def _read(self, location, level, size):
        (x, y), (w, h) = location, size
        return self.rgb[y:y + h, x:x + w]


def _metadata_scale(properties, prefix: str) -> Scale | None:
    """mpp from the slide's own properties, else from its objective power (40x ~ 0.25 um/px)."""
    try:
        x, y = float(properties.get(f"{prefix}.mpp-x") or 0), float(properties.get(f"{prefix}.mpp-y") or 0)
    except (TypeError, ValueError):
        x = y = 0.0
    if x > 0 and y > 0:
        return Scale(x, y, "slide metadata")
    try:
        power = float(properties.get(f"{prefix}.objective-power") or 0)
    except (TypeError, ValueError):
        power = 0.0
    if power > 0:
        mpp = REFERENCE_MPP * REFERENCE_MAGNIFICATION / (10 * power)
        return Scale(mpp, mpp, f"objective power {power:g}x in the slide metadata (estimate)")
    return None


def _resolve_scale(found: Scale | None, name: str, width: int, height: int, mpp: float | None,
                   magnification: str | None) -> Scale:
    """The user's explicit mpp (it overrides: the way to correct a file's wrong resolution), else the
    metadata's, else the name's, else the chosen magnification (a fallback for files that state none). Where
    the file states a scale that an option did not replace, or an option replaced it, the source says both."""
    stated = found or image_scale(name, width, height)
    if mpp is not None:
        if not mpp > 0:
            raise SlideError(f"Microns per pixel must be positive, not {mpp}.")
        instead = f"; the {stated.source} states {stated.x:.4g} um/px" if stated is not None else ""
        return Scale(float(mpp), float(mpp), f"chosen by user (mpp){instead}")
    given = image_scale("", width, height, magnification) if magnification else None  # the magnification alone
    if stated is None and given is None:
        raise SlideError(f"'{name}' states no resolution: its metadata has no microns per pixel and its "
                         "name no magnification (a BreakHis name, or a token such as _200X). Choose the "
                         "magnification it was captured at (e.g. 200X) or give its microns per pixel.")
    if stated is None:
        return given
    if given is not None and not math.isclose(given.x, stated.x, rel_tol=0.1):
        return dataclasses.replace(stated, source=f"{stated.source}; the magnification given ({magnification}) "
                                   "is for files that state none: give microns per pixel to override it")
    return stated


def _kind_of(data_head: bytes) -> str:
    """A word on what an unsupported file looks like, so the message is actionable."""
    if data_head.startswith(b"%PDF"):
        return "a PDF document"
    if data_head.startswith(b"PK\x03\x04"):
        return "a ZIP archive"
    if data_head and b"\x00" not in data_head and all(32 <= b < 127 or b in b"\r\n\t" for b in data_head):
        return "a text file"
    return "not a format this app reads"


def _unsupported(name: str, head: bytes) -> SlideError:
    return SlideError(f"'{name}' is {_kind_of(head)}, not a slide or image. Supported: whole-slide formats "
                      "OpenSlide reads (SVS, NDPI, MRXS, SCN, generic tiled TIFF, ...), TIFF, PNG and JPEG.")


def _memory_file(data: bytes) -> io.BufferedReader:
    """Upload bytes as a READ-ONLY file: tifffile makes the zarr store of uncompressed chunks
    writable when its file is (a BytesIO is), and tiffslide opens the store with mode 'r', which
    zarr 3 refuses ("Store is not read-only but mode is 'r'"): every valid uncompressed TIFF upload
    failed. A BufferedReader over the bytes reports writable() False and stays in memory."""
    return io.BufferedReader(io.BytesIO(data))


def _open_tiffslide(source, name: str, mpp, magnification, notes) -> SlideReader:
    """A TIFF (a path, or upload bytes read from memory) through tiffslide; one that is not 8-bit grey
    or RGB is decoded whole by the safe loader instead (its one conversion of modes and bit depths,
    as on Diagnose), or refused by name when too large for that."""
    import tiffslide

    from core.data.images import MAX_PIXELS

    try:  # tifffile reads pages lazily: a damaged file can fail at open or at its first page
        handle = tiffslide.TiffSlide(_memory_file(source) if isinstance(source, bytes) else source)
        width, height = handle.dimensions
        found = _metadata_scale(handle.properties, "tiffslide")
        series = int(handle.properties.get("tiffslide.series-index") or 0)
        found = found or ome_scale(handle.ts_tifffile)
        mode = tiff_mode(handle.ts_tifffile.series[series].keyframe)
        problem = data_problem(handle.ts_tifffile, series)
    except Exception as error:  # noqa: BLE001 - tiffslide/tifffile raise many types for bad files
        raise SlideError(f"'{name}' could not be read as a slide: it looks truncated or corrupt "
                         f"({type(error).__name__}: {error}).") from None
    if problem is not None:
        handle.close()
        raise SlideError(f"'{name}' could not be read as a slide: it looks truncated or corrupt ({problem}).")
    if mode is not None and width * height > MAX_PIXELS:
        handle.close()
        raise SlideError(f"'{name}' is {mode} TIFF of {width}x{height} px: slides are read as 8-bit RGB or "
                         f"greyscale, and it is too large ({MAX_PIXELS / 1e6:.0f} megapixels at most) to be "
                         "converted whole. Save it as an 8-bit RGB (pyramidal) TIFF.")
    try:  # before any conversion: a missing resolution is said as such, not as a failed conversion
        scale = _resolve_scale(found, name, width, height, mpp, magnification)
    except SlideError:
        handle.close()
        raise
    if mode is not None:
        handle.close()
        try:
            reader = _open_image(source, name, mpp, magnification, found)
        except SlideError as error:  # the loader (Pillow) decodes float greyscale, not float RGB: no "not an image"
            why = "the loader converts float greyscale only" if "float" in mode else str(error)
            raise SlideError(f"'{name}' is {mode} TIFF that could not be converted to 8-bit RGB ({why}). "
                             "Save it as an 8-bit RGB TIFF.") from None
        reader.notes.insert(0, f"{mode} TIFF, converted whole to 8-bit RGB by the image loader")
        return reader
    return TiffSlideReader(name, handle, scale, notes)


def _open_image(source, name: str, mpp, magnification, found: Scale | None = None) -> ImageReader:
    from core.data.images import ImageError, load_image

    try:
        loaded = load_image(source, name, check_histology=False, max_side=None)
    except ImageError as error:
        hint = " Save it as a tiled pyramidal TIFF to analyse it." if "megapixels" in str(error) else ""
        raise SlideError(f"{error}{hint}") from None
    height, width = loaded.rgb.shape[:2]
    scale = _resolve_scale(found, name, width, height, mpp, magnification)
    return ImageReader(name, loaded.rgb, scale, loaded.notes)


def _check(reader: SlideReader) -> SlideReader:
    """Read the coarsest level once: a truncated pyramid fails here, with its message, not mid-run."""
    level = len(reader.level_dimensions) - 1
    w, h = reader.level_dimensions[level]
    try:
        reader.read_region((0, 0), level, (min(w, 4096), min(h, 4096)))
    except SlideError:
        reader.close()
        raise
    return reader


def check_file(path: Path, name: str | None = None) -> None:
    """SlideError unless `path` is a file with something in it: what can be said before anything is read (the
    slide command says it before loading the model)."""
    name = name or path.name
    if not path.is_file():
        raise SlideError(f"'{name}': file not found." if not path.is_dir() else
                         f"'{name}' is a folder, not a slide (MRXS: name the .mrxs file next to its folder).")
    if path.stat().st_size == 0:
        raise SlideError(f"'{name}' is empty (0 bytes).")


def open_slide(source, name: str | None = None, mpp: float | None = None,
               magnification: str | None = None, backend: str | None = None) -> SlideReader:
    """Open a slide or image file (a path), or an upload (bytes), for reading regions.
    backend="tiffslide" skips OpenSlide for a TIFF (the fallback path, chosen explicitly)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        name = name or "upload"
        if not data:
            raise SlideError(f"'{name}' is empty (0 bytes).")
        if data[:4] in _TIFF_MAGIC:  # in memory, never written to disk
            return _check(_open_tiffslide(data, name, mpp, magnification, ["read from memory"]))
        return _check(_open_image(data, name, mpp, magnification))
    path = Path(source)
    name = name or path.name
    check_file(path, name)
    with open(path, "rb") as handle:
        head = handle.read(1024)
    if backend == "tiffslide" and head[:4] in _TIFF_MAGIC:
        return _check(_open_tiffslide(str(path), name, mpp, magnification, ["read with tiffslide (chosen)"]))
    import openslide

    vendor = None
    try:
        vendor = openslide.OpenSlide.detect_format(str(path))
    except Exception as error:  # noqa: BLE001 - detection itself can fail on a damaged header
        logging.getLogger(__name__).info("OpenSlide could not inspect %s: %s", name, error)
    if vendor == "generic-tiff" and tiff_mode(first_page(path)) is not None:  # converted or refused there
        return _check(_open_tiffslide(str(path), name, mpp, magnification, []))
    if head[:4] in _TIFF_MAGIC and is_ome(path):  # OpenSlide sees neither its SubIFD pyramid nor its resolution
        return _check(_open_tiffslide(str(path), name, mpp, magnification, ["OME-TIFF, read with tiffslide"]))
    if vendor:
        try:
            slide = openslide.OpenSlide(str(path))
        except Exception as error:  # noqa: BLE001 - fall back to the pure-Python reader
            if head[:4] not in _TIFF_MAGIC:
                raise SlideError(f"'{name}' could not be read as a {vendor} slide: it looks truncated or "
                                 f"corrupt ({error}).") from None
            note = f"OpenSlide could not open it ({error}); read with tiffslide"
            return _check(_open_tiffslide(str(path), name, mpp, magnification, [note]))
        width, height = slide.dimensions
        found = _metadata_scale(slide.properties, "openslide")
        try:
            scale = _resolve_scale(found, name, width, height, mpp, magnification)
        except SlideError:
            slide.close()
            raise
        return _check(OpenSlideReader(path, slide, scale, [f"OpenSlide ({vendor})"]))
    if head[:4] in _TIFF_MAGIC:
        return _check(_open_tiffslide(str(path), name, mpp, magnification,
                                      ["not a format OpenSlide reads; read with tiffslide"]))
    try:
        Image.open(path).close()
    except Exception:  # noqa: BLE001 - not an image either
        raise _unsupported(name, head) from None
    return _check(_open_image(path, name, mpp, magnification))


def slide_files(folder: str | os.PathLike) -> list[Path]:
    """The slides and images directly in (or below) a folder, sorted; MRXS data folders skipped, and
    hidden files and folders below it (a share's .snapshot copies, a stick's .Trashes, macOS ._ files).
    Linked folders (a scanner share linked in) are followed, each real folder once, as `predict` does
    (core.paths.visible_files): Path.rglob skipped them silently."""
    root = Path(folder)
    if not root.is_dir():
        raise SlideError(f"'{folder}' is not a folder.")
    return sorted(Path(p) for p in visible_files(root) if Path(p).suffix.lower() in SLIDE_EXTENSIONS
                  and os.path.isfile(p))
