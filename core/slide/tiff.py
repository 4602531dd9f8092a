"""What tifffile says of a TIFF before its regions are read: whether they read as stored (8-bit
grey or RGB) or need the loader's conversion, whether its pixel data is all there, and the
resolution an OME-TIFF states in its OME-XML (tiffslide and OpenSlide read none)."""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np

from core.data.scale import Scale

_READ_DIRECTLY = {"MINISBLACK": (1, 2), "RGB": (3, 4)}  # 8-bit grey or RGB, alpha or not: regions as stored
_DECODED_TO_RGB = {6, 7, 33003, 33005, 34712}  # JPEG and JPEG 2000 tiles of YCbCr decode to RGB


def tiff_mode(page) -> str | None:
    """None when a TIFF's level-0 page (tifffile) reads as 8-bit grey or RGB (alpha or not); else what
    it is, in words ("16-bit RGB", "8-bit palette", "32-bit float greyscale", ...): its regions read
    as stored (tiffslide), or as OpenSlide's 8-bit RGBA, would be wrapped, black or wrong colours."""
    photometric = getattr(page.photometric, "name", str(page.photometric))
    direct = page.dtype == np.uint8 and (page.samplesperpixel in _READ_DIRECTLY.get(photometric, ()) or (
        photometric == "YCBCR" and page.compression in _DECODED_TO_RGB))
    if direct:
        return None
    kind = {"MINISBLACK": "greyscale", "MINISWHITE": "inverted greyscale (min-is-white)", "RGB": "RGB",
            "PALETTE": "palette", "SEPARATED": "CMYK", "YCBCR": "YCbCr"}.get(photometric, photometric)
    if page.dtype.kind == "f":
        kind = f"float {kind}"
    bits = f"{page.bitspersample}-bit"
    return ("an " if bits.startswith(("8", "11", "18")) else "a ") + f"{bits} {kind}" + (
        f", {page.samplesperpixel} samples a pixel," if page.samplesperpixel > 4 else "")


def data_problem(tiff, series_index: int) -> str | None:
    """Why a TIFF's pixel data cannot be all there, or None: a level page with no strip/tile offsets
    (a file cut inside its header), or offsets + byte counts past the end of the file (cut short).
    tiffslide pads what it cannot read with zeros, so such a file read as a whole black slide."""
    size = tiff.filehandle.size
    for level, series in enumerate(tiff.series[series_index].levels):
        page = series.keyframe
        offsets, counts = page.dataoffsets, page.databytecounts
        if not len(offsets) or len(offsets) != len(counts):
            return f"level {level} has no strip or tile offsets (its image data is missing)"
        end = max((o + c for o, c in zip(offsets, counts) if c), default=0)
        if end > size:
            return f"level {level}'s image data runs to byte {end:,} of a {size:,}-byte file"
    return None


def first_page(path: Path):
    import tifffile

    with tifffile.TiffFile(path) as tiff:
        return tiff.series[0].keyframe


# OME length units (ome.xsd UnitsLength) in micrometres; PhysicalSize's unit is um when not stated.
_MICROMETRES = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "pm": 1e-6, "mm": 1e3, "cm": 1e4, "m": 1e6}


def is_ome(path: Path) -> bool:
    """Whether a TIFF file carries OME-XML (tifffile's own test; False for anything it cannot open)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tiff:
            return bool(tiff.is_ome)
    except Exception:  # noqa: BLE001 - not a TIFF tifffile reads: the callers' other paths say why
        return False


def ome_scale(tiff) -> Scale | None:
    """The microns per pixel an OME-TIFF's first image states (Pixels PhysicalSizeX/Y and their units),
    or None: not OME, not stated, or a unit that is not a length. Parsed with the standard library's
    XML parser (the OME-XML is text in the first page's description)."""
    if not getattr(tiff, "is_ome", False):
        return None
    try:
        root = ElementTree.fromstring(tiff.ome_metadata)
    except (ElementTree.ParseError, TypeError, ValueError):
        return None
    pixels = next((e for e in root.iter() if e.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None:
        return None
    sizes = []
    for axis in ("X", "Y"):
        try:
            value = float(pixels.get(f"PhysicalSize{axis}") or 0)
        except ValueError:
            return None
        unit = _MICROMETRES.get(pixels.get(f"PhysicalSize{axis}Unit", "µm"))
        if not value > 0 or unit is None:
            return None
        sizes.append(value * unit)
    return Scale(sizes[0], sizes[1], "slide metadata (OME-XML)")
