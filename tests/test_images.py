"""Upload loading: every bad input gets a clear ImageError, every odd mode converts with a note."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from core.data.histology import NOT_HISTOLOGY, histology_check
from core.data.images import MAX_PIXELS, MIN_SIDE, WORKING_MAX_SIDE, LoadedImage, load_image
from core.errors import ImageError


def _encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG that declares a huge size: what a decompression bomb looks like to a reader."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def sample_paths(samples_dir):
    paths = sorted(samples_dir.rglob("*.png"))
    assert len(paths) == 22
    return paths


@pytest.fixture(scope="module")
def tissue(sample_paths) -> np.ndarray:
    """A real H&E field of view, 700x460."""
    return np.asarray(Image.open(sample_paths[3]).convert("RGB"))


# --- bad inputs ------------------------------------------------------------------------------

@pytest.mark.parametrize("data, expected", [
    (b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n%%EOF", "PDF"),
    (b"patient id, diagnosis\n1, benign\n", "text file"),
    (b"PK\x03\x04" + bytes(60), "ZIP"),
    (bytes(range(256)) * 4, "not a supported image format"),
])
def test_non_image_files_are_named(data, expected):
    with pytest.raises(ImageError, match=expected):
        load_image(data, name="report.png")


def test_empty_bytes_and_empty_file(tmp_path):
    with pytest.raises(ImageError, match="empty"):
        load_image(b"", name="upload.png")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        load_image(empty)


def test_missing_path_and_wrong_type(tmp_path):
    with pytest.raises(ImageError, match="not found"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="expected image bytes"):
        load_image(12345, name="number")


def test_truncated_png_is_rejected(sample_paths):
    data = sample_paths[0].read_bytes()
    with pytest.raises(ImageError, match="truncated or corrupt"):
        load_image(data[: len(data) // 2], name="cut.png")


def test_plain_pngs_are_decoded_by_libpng_bit_for_bit_as_pillow_does(sample_paths, tissue):
    """The fast decoder (libpng through imagecodecs) takes every plain 8-bit RGB PNG, including
    one with its rows filtered differently, and gives Pillow's pixels exactly; a truncated one is
    left to Pillow (None), which says so in words (test_truncated_png_is_rejected)."""
    from core.data import images

    files = [path.read_bytes() for path in sample_paths[:4]]
    files.append(_encode(Image.fromarray(tissue), "PNG", compress_level=1))
    files.append(_encode(Image.fromarray(tissue[:37, :53]), "PNG", optimize=True))
    for data in files:
        with Image.open(io.BytesIO(data)) as image:
            fast = images._decode_plain_png(image, data)
            assert fast is not None, "a plain RGB PNG went to the slow decoder"
            assert fast.dtype == np.uint8 and (fast == np.asarray(image.convert("RGB"))).all()
    with Image.open(io.BytesIO(files[0])) as image:
        assert images._decode_plain_png(image, files[0][: len(files[0]) // 2]) is None


def test_without_imagecodecs_pillow_decodes_the_same_pixels(sample_paths, monkeypatch):
    """A machine without imagecodecs (the GPU machine packs and reads fields without it) gets Pillow's decode."""
    import sys

    data = sample_paths[0].read_bytes()
    fast = load_image(data, name="a.png", check_histology=False).rgb
    monkeypatch.setitem(sys.modules, "imagecodecs", None)  # importing it now raises ImportError
    from core.data import images

    with Image.open(io.BytesIO(data)) as image:
        assert images._decode_plain_png(image, data) is None  # left to Pillow
    assert (load_image(data, name="a.png", check_histology=False).rgb == fast).all()


def test_decompression_bomb_rejected_before_decoding():
    side = int(np.sqrt(MAX_PIXELS)) + 100  # Just above our limit, below Pillow's hard error.
    with pytest.warns(Image.DecompressionBombWarning):
        with pytest.raises(ImageError, match="decompression bomb"):
            load_image(_png_header_only(side, side), name="bomb.png")
    with pytest.raises(ImageError, match="decompression bomb"):  # Pillow's own hard limit.
        load_image(_png_header_only(30000, 30000), name="bigger_bomb.png")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "TIFF"])
def test_corrupted_bytes_never_crash(tissue, fmt):
    """Overwrite random byte runs: every outcome is an image or an ImageError, nothing else."""
    data = _encode(Image.fromarray(tissue[:200, :200]), fmt)
    rng = np.random.default_rng(0)
    outcomes = set()
    for _ in range(15):
        corrupted = bytearray(data)
        start = int(rng.integers(0, len(data) - 64))
        corrupted[start:start + 64] = rng.integers(0, 256, 64, dtype=np.uint8).tobytes()
        try:
            outcomes.add(load_image(bytes(corrupted), name=f"x.{fmt.lower()}").rgb.dtype.name)
        except ImageError as error:
            assert str(error).startswith("'x.")
            outcomes.add("ImageError")
    assert outcomes <= {"uint8", "ImageError"} and outcomes


def test_tiny_image_has_clear_message():
    with pytest.raises(ImageError, match=r"only 1x1 pixels.*at least 32"):
        load_image(_encode(Image.new("RGB", (1, 1), "white")), name="dot.png")
    with pytest.raises(ImageError, match="only"):
        load_image(_encode(Image.new("RGB", (MIN_SIDE - 1, 200))), name="thin.png")


def test_jpeg_named_png_loads_by_content(tissue):
    loaded = load_image(_encode(Image.fromarray(tissue), "JPEG", quality=95), name="slide.png")
    assert loaded.rgb.shape == tissue.shape
    assert any("named '.png' but contains JPEG" in note for note in loaded.notes)
    assert np.abs(loaded.rgb.astype(int) - tissue).mean() < 6  # Really decoded the JPEG.


# --- odd modes ------------------------------------------------------------------------------

def test_plain_rgb_from_path_has_no_notes(sample_paths):
    loaded = load_image(sample_paths[0])
    assert isinstance(loaded, LoadedImage)
    assert loaded.rgb.dtype == np.uint8 and loaded.rgb.shape == (460, 700, 3)
    assert (loaded.name, loaded.original_mode, loaded.original_size) == (sample_paths[0].name, "RGB", (700, 460))
    assert loaded.notes == [] and loaded.warnings == []


def test_file_like_upload(sample_paths):
    loaded = load_image(io.BytesIO(sample_paths[0].read_bytes()), name="x.png")
    assert loaded.rgb.shape == (460, 700, 3)


def _gradient16(maximum: int) -> np.ndarray:
    return np.tile(np.linspace(0, maximum, 256).astype(np.uint16), (64, 1))


@pytest.mark.parametrize("maximum, bits", [(65535, 16), (4095, 12)])
def test_16bit_grayscale_is_scaled_not_clipped(maximum, bits):
    data = _encode(Image.fromarray(_gradient16(maximum)))
    loaded = load_image(data, name="scan16.png")
    assert loaded.original_mode.startswith("I")
    row = loaded.rgb[0, :, 0].astype(int)
    assert row[0] == 0 and row[-1] == 255
    assert np.all(np.diff(row) >= 0) and len(np.unique(row)) > 200  # A gradient, not saturated.
    assert abs(row[128] - 128) <= 2
    assert (loaded.rgb[..., 0] == loaded.rgb[..., 2]).all()
    assert any(f"16-bit grayscale ({bits}-bit values) scaled to 8-bit" in n for n in loaded.notes)


def test_16bit_tiff_big_endian():
    image = Image.fromarray(_gradient16(65535)).convert("I;16B")
    loaded = load_image(_encode(image, "TIFF"), name="scan.tif")
    assert loaded.rgb[0, -1, 0] == 255 and loaded.rgb[0, 0, 0] == 0


@pytest.mark.parametrize("bits", [12, 16])
def test_16bit_rgb_tiff_is_scaled_by_the_bits_it_uses_with_a_note(tissue, bits):
    """Pillow reads an RGB TIFF of 16 bits a sample as 'RGB' by its high bytes: 12-bit camera values
    loaded nearly black (max 15) and were refused as greyscale; a full-range one lost its depth silently."""
    import tifffile

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, tissue.astype(np.uint16) * (2 ** (bits - 8)), photometric="rgb")
    loaded = load_image(buffer.getvalue(), name="camera.tif")
    assert np.abs(loaded.rgb.astype(int) - tissue).max() <= 1
    assert f"16-bit RGB ({bits}-bit values) scaled to 8-bit RGB" in loaded.notes
    assert loaded.not_histology is None


def test_16bit_rgb_tiff_keeps_its_orientation(tissue):
    import tifffile

    buffer = io.BytesIO()
    stored = np.ascontiguousarray(np.rot90(tissue, 1))  # stored turned; orientation 6 turns it back
    tifffile.imwrite(buffer, stored.astype(np.uint16) * 16, photometric="rgb", extratags=[(274, "H", 1, 6, True)])
    loaded = load_image(buffer.getvalue(), name="camera.tif")
    assert loaded.rgb.shape == tissue.shape and np.abs(loaded.rgb.astype(int) - tissue).max() <= 1
    assert loaded.notes == ["16-bit RGB (12-bit values) scaled to 8-bit RGB",
                            "rotated/flipped upright using EXIF orientation 6"]


def test_cmyk_jpeg():
    magenta = Image.new("CMYK", (64, 64), (0, 255, 0, 0))
    loaded = load_image(_encode(magenta, "JPEG", quality=100), name="print.jpg")
    assert loaded.original_mode == "CMYK"
    assert np.allclose(loaded.rgb.reshape(-1, 3).mean(0), (255, 0, 255), atol=6)
    assert any("CMYK" in note for note in loaded.notes)


def test_rgba_composited_on_white():
    pixels = np.zeros((64, 64, 4), np.uint8)
    pixels[..., 0] = 200
    pixels[:, 32:, 3] = 255  # Right half opaque red, left half fully transparent.
    loaded = load_image(_encode(Image.fromarray(pixels, "RGBA")), name="cut_out.png")
    assert (loaded.rgb[:, :32] == 255).all()
    assert (loaded.rgb[:, 32:] == (200, 0, 0)).all()
    assert any("composited on white" in note for note in loaded.notes)


def test_opaque_alpha_is_just_dropped(tissue):
    loaded = load_image(_encode(Image.fromarray(tissue).convert("RGBA")), name="opaque.png")
    assert np.array_equal(loaded.rgb, tissue)
    assert any("alpha channel dropped" in note for note in loaded.notes)


def test_la_grayscale_with_alpha():
    gray = Image.new("L", (40, 40), 100)
    alpha = Image.new("L", (40, 40), 0)
    loaded = load_image(_encode(Image.merge("LA", (gray, alpha))), name="la.png")
    assert loaded.original_mode == "LA" and (loaded.rgb == 255).all()


def test_palette_with_and_without_transparency(tissue):
    palette = Image.fromarray(tissue).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    loaded = load_image(_encode(palette), name="p.png")
    assert loaded.original_mode == "P"
    assert np.abs(loaded.rgb.astype(int) - tissue).mean() < 10
    assert any("palette" in note for note in loaded.notes)
    palette.info["transparency"] = int(np.asarray(palette)[0, 0])
    loaded = load_image(_encode(palette, transparency=palette.info["transparency"]), name="pt.png")
    assert (loaded.rgb[0, 0] == 255).all()


def test_8bit_grayscale(tissue):
    loaded = load_image(_encode(Image.fromarray(tissue).convert("L")), name="gray.png")
    assert loaded.rgb.shape == tissue.shape and (loaded.rgb[..., 0] == loaded.rgb[..., 1]).all()
    assert any("grayscale converted to RGB" in note for note in loaded.notes)


def test_32bit_integer_and_float_modes():
    values = np.tile(np.linspace(0, 1, 128, dtype=np.float32), (48, 1))
    loaded = load_image(_encode(Image.fromarray(values, "F"), "TIFF"), name="float.tif")
    assert loaded.rgb[0, 0, 0] == 0 and loaded.rgb[0, -1, 0] == 255
    assert any("float" in note for note in loaded.notes)
    signed = Image.fromarray((values * 2000 - 1000).astype(np.int32), "I")
    loaded = load_image(_encode(signed, "TIFF"), name="signed.tif")
    assert loaded.rgb[0, 0, 0] == 0 and loaded.rgb[0, -1, 0] == 255
    assert any("rescaled" in note for note in loaded.notes)


def test_exif_orientation_is_applied():
    pixels = np.zeros((40, 80, 3), np.uint8)  # Wide image, marker at top-left.
    pixels[:10, :10] = (255, 0, 0)
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # Camera held rotated: display rotated 90 degrees clockwise.
    loaded = load_image(_encode(image, "JPEG", quality=100, exif=exif.tobytes()), name="phone.jpg")
    assert loaded.rgb.shape == (80, 40, 3)
    assert loaded.rgb[:10, -10:, 0].mean() > 200  # Top-left marker is now top-right.
    assert any("EXIF orientation 6" in note for note in loaded.notes)
    assert (loaded.original_size, loaded.upright_size) == ((80, 40), (40, 80))  # as stored; as shown


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L"])
def test_png_exif_orientation_is_applied_in_every_mode(tissue, mode):
    """An 8-bit RGB PNG (the fast libpng decode) was left as stored while RGBA and grey PNGs and
    JPEGs were turned upright."""
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned a quarter; displayed upright
    stored = Image.fromarray(tissue).transpose(Image.Transpose.ROTATE_90).convert(mode)
    loaded = load_image(_encode(stored, "PNG", exif=exif), name=f"phone_{mode}.png")
    assert loaded.rgb.shape == tissue.shape and "rotated/flipped upright using EXIF orientation 6" in loaded.notes
    upright = np.asarray(Image.fromarray(tissue).convert(mode).convert("RGB"))
    assert (loaded.rgb == upright).all()


def test_a_png_the_fast_decoder_refuses_is_looked_at_once(tissue, monkeypatch):
    """An 8-bit RGB PNG with EXIF goes to Pillow: the fast decoder's check (a scan of the whole file
    for the EXIF chunk) ran twice for it, once in the conversion chain and again in _decode."""
    from core.data import images

    calls = []
    fast = images._decode_plain_png
    monkeypatch.setattr(images, "_decode_plain_png", lambda image, data: calls.append(1) or fast(image, data))
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = Image.fromarray(tissue).transpose(Image.Transpose.ROTATE_90)
    loaded = load_image(_encode(stored, "PNG", exif=exif), name="phone.png", check_histology=False)
    assert (loaded.rgb == tissue).all() and len(calls) == 1
    calls.clear()
    load_image(_encode(Image.fromarray(tissue), "PNG"), name="plain.png", check_histology=False)
    assert len(calls) == 1  # the plain one: decoded by it, once


def test_multi_frame_tiff_uses_first_frame():
    frames = [Image.new("RGB", (48, 48), colour) for colour in ((200, 50, 120), (0, 255, 0))]
    data = _encode(frames[0], "TIFF", save_all=True, append_images=frames[1:])
    loaded = load_image(data, name="stack.tif")
    assert (loaded.rgb == (200, 50, 120)).all()
    assert any("2 frames" in note and "first frame" in note for note in loaded.notes)


def test_very_large_image_is_downscaled(tissue):
    big = Image.fromarray(tissue).resize((WORKING_MAX_SIDE + 904, 600))
    loaded = load_image(_encode(big), name="big.png")
    assert max(loaded.rgb.shape[:2]) == WORKING_MAX_SIDE
    assert loaded.original_size == (WORKING_MAX_SIDE + 904, 600)
    assert any("downscaled from 5000x600" in note for note in loaded.notes)


def test_huge_jpeg_is_decoded_at_reduced_scale():
    big = Image.new("RGB", (9000, 200), (200, 120, 180))
    loaded = load_image(_encode(big, "JPEG"), name="huge.jpg")
    assert max(loaded.rgb.shape[:2]) == WORKING_MAX_SIDE
    assert any("reduced scale" in note for note in loaded.notes)
    assert loaded.upright_size == loaded.original_size == (9000, 200)
    exif = Image.Exif()
    exif[0x0112] = 8
    turned = load_image(_encode(big, "JPEG", exif=exif), name="huge.jpg")
    assert turned.rgb.shape[:2] == (WORKING_MAX_SIDE, 91) and turned.upright_size == (200, 9000)


# --- out-of-distribution check --------------------------------------------------------------

def test_every_real_sample_looks_like_histology(sample_paths):
    failures = {}
    for path in sample_paths:
        verdict = histology_check(load_image(path).rgb)
        if not verdict.typical or not 0.2 < verdict.score <= 1.0:  # Non-histology images score below 0.2.
            failures[path.name] = (verdict.score, verdict.reason)
    assert failures == {}


def test_real_samples_survive_jpeg_recompression(sample_paths):
    for path in sample_paths[::4]:
        rgb = np.asarray(Image.open(path).convert("RGB"))
        loaded = load_image(_encode(Image.fromarray(rgb), "JPEG", quality=75), name=path.name)
        assert loaded.warnings == [], path.name


def _non_histology(kind: str) -> np.ndarray:
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:300, 0:400] / 300.0
    if kind == "green foliage":
        image = np.stack([40 + 60 * yy, 120 + 80 * np.sin(xx * 10) ** 2, 30 + 20 * yy], -1)
        return np.clip(image + rng.normal(0, 10, image.shape), 0, 255).astype(np.uint8)
    if kind == "blue sky":
        image = np.stack([80 + 50 * yy, 140 + 50 * yy, 220 + 30 * yy], -1)
        return np.clip(image + rng.normal(0, 5, image.shape), 0, 255).astype(np.uint8)
    if kind == "flat grey":
        return np.full((300, 400, 3), 128, np.uint8)
    if kind == "white page":
        return np.full((300, 400, 3), 250, np.uint8)
    if kind == "noise":
        return rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    if kind == "pink noise":
        return np.where(rng.random((300, 400, 1)) < 0.5, [236, 170, 200], [120, 60, 150]).astype(np.uint8)
    raise ValueError(kind)


@pytest.mark.parametrize("kind, reason", [
    ("green foliage", "not H&E pink/purple"),
    ("blue sky", "not H&E pink/purple"),
    ("flat grey", "flat image"),
    ("white page", "blank background"),
    ("noise", "looks like noise"),
    ("pink noise", "looks like noise"),
])
def test_non_histology_images_fail_with_reason(kind, reason):
    verdict = histology_check(_non_histology(kind))
    assert verdict.status == NOT_HISTOLOGY and reason in verdict.reason
    assert verdict.score < 0.2


def test_greyscale_histology_is_flagged(tissue):
    gray = np.repeat(np.asarray(Image.fromarray(tissue).convert("L"))[..., None], 3, axis=-1)
    verdict = histology_check(gray)
    assert verdict.status == NOT_HISTOLOGY and "no stain colour" in verdict.reason


def test_load_image_decodes_but_marks_what_is_not_histology():
    loaded = load_image(_encode(Image.fromarray(_non_histology("green foliage"))), name="garden.png")
    assert loaded.rgb.shape == (300, 400, 3)
    assert "not H&E pink/purple" in loaded.not_histology and loaded.warnings == []
    unchecked = load_image(_encode(Image.fromarray(_non_histology("green foliage"))), name="g.png",
                           check_histology=False)
    assert unchecked.not_histology is None and unchecked.warnings == []
