"""Reading slides and images: every level through OpenSlide and tiffslide, scale, bad input."""

import numpy as np
import pytest
from PIL import Image

from core.errors import UserInputError
from core.slide.reader import SlideError, open_slide
from core.slide.tissue import TissueMasker, optical_density
from core.testing.slides import write_pyramid


@pytest.fixture(scope="module")
def small_slide(tmp_path_factory):
    """1536x1024 px at 0.5 um/px, three levels: a pink block of 'tissue' on white glass."""
    rgb = np.full((1024, 1536, 3), 255, np.uint8)
    rgb[200:700, 300:1100] = (190, 90, 170)
    path = write_pyramid(tmp_path_factory.mktemp("slide") / "block.tif", rgb, mpp=0.5)
    return path, rgb


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_every_level_opens_with_its_scale(small_slide, backend):
    path, rgb = small_slide
    with open_slide(path, backend=backend) as slide:
        assert slide.backend == backend
        assert slide.level_dimensions == [(1536, 1024), (768, 512), (384, 256)]
        assert slide.scale.x == pytest.approx(0.5) and slide.scale.source == "slide metadata"
        for level, d in enumerate(slide.level_downsamples):
            region = slide.read_region((256, 128), level, (64, 48))
            assert region.shape == (48, 64, 3) and region.dtype == np.uint8
            assert slide.level_scale(level).x == pytest.approx(0.5 * d)
        # Level 0 pixels come back in place (JPEG tiles: within a few grey levels).
        inside = slide.read_region((400, 300), 0, (32, 32)).astype(int)
        assert np.abs(inside - rgb[300:332, 400:432]).max() < 12


def test_regions_past_the_edge_are_white_and_outside_is_an_error(small_slide):
    with open_slide(small_slide[0]) as slide:
        edge = slide.read_region((1500, 1000), 0, (100, 100))
        assert edge.shape == (100, 100, 3) and (edge[40:, :] == 255).all()
        with pytest.raises(SlideError, match="outside"):
            slide.read_region((5000, 0), 0, (10, 10))
        with pytest.raises(SlideError, match="levels 0-2"):
            slide.read_region((0, 0), 7, (10, 10))


def test_best_level_never_enlarges(small_slide):
    with open_slide(small_slide[0]) as slide:
        assert slide.best_level(1.0) == 0 and slide.best_level(3.0) == 1 and slide.best_level(100) == 2


def test_overview_and_tissue_mask_exclude_the_glass(small_slide):
    with open_slide(small_slide[0]) as slide:
        overview = slide.overview(8.0)
        assert overview.shape == (128, 192, 3)
        mask = TissueMasker().fit_transform(overview, mpp=4.0)
    truth = np.zeros((128, 192), bool)
    truth[25:87, 38:137] = True  # the block, at 1/8
    assert mask[truth].mean() > 0.95 and mask[~truth].mean() < 0.02


def test_empty_glass_has_no_tissue():
    glass = np.full((64, 64, 3), 250, np.uint8)
    assert not TissueMasker().fit_transform(glass, mpp=8.0).any()
    assert optical_density(glass).max() < 0.02


def test_plain_image_takes_its_scale_from_the_name(tmp_path):
    path = tmp_path / "SOB_M_DC-14-2523-400-010.png"
    Image.fromarray(np.full((460, 700, 3), 200, np.uint8)).save(path)
    with open_slide(path) as slide:
        assert slide.backend == "image" and slide.dimensions == (700, 460)
        assert slide.scale.x == pytest.approx(0.25)
    with open_slide(path.read_bytes(), name="upload.png", magnification="100X") as slide:
        assert slide.scale.x == pytest.approx(1.0) and "chosen by user" in slide.scale.source
    # `predict` reads a standalone token in any name: so does the slide reader (one rule)
    with open_slide(path.read_bytes(), name="biopsy_40x.png", magnification="100X") as slide:
        assert slide.scale.x == pytest.approx(2.5) and slide.scale.source.startswith("file name (40X)")
        assert "magnification given (100X) is for files that state none" in slide.scale.source  # not silently


def test_mpp_overrides_what_the_file_states_and_says_so(tmp_path):
    """--mpp and --magnification were both documented as fallbacks; --mpp silently won over the metadata and
    --magnification silently lost to it. Now --mpp overrides (to correct a wrong resolution) naming what the
    file stated, and a magnification the file's own scale outranks is said to be unused."""
    slide_path = write_pyramid(tmp_path / "scan.tif", np.full((460, 700, 3), 200, np.uint8), mpp=0.5, levels=1)
    with open_slide(slide_path, mpp=0.25) as slide:
        assert slide.scale.x == 0.25 and slide.scale.source.startswith("chosen by user (mpp)")
        assert "states 0.5 um/px" in slide.scale.source
    with open_slide(slide_path, magnification="40X") as slide:
        assert slide.scale.x == pytest.approx(0.5) and "(40X) is for files that state none" in slide.scale.source
    with open_slide(slide_path, magnification="200X") as slide:  # agrees with the metadata (0.5 um/px): no note
        assert "magnification given" not in slide.scale.source


def test_bad_inputs_get_clear_messages(tmp_path, small_slide):
    (tmp_path / "notes.tif").write_text("this is not a slide at all\n")
    (tmp_path / "empty.svs").write_bytes(b"")
    data = small_slide[0].read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[: len(data) // 3])
    unscaled = write_pyramid(tmp_path / "unscaled.tif", np.full((256, 256, 3), 200, np.uint8), mpp=None, levels=1)
    cases = {"notes.tif": "text file", "empty.svs": "empty", "missing.svs": "not found",
             "cut.tif": "truncated or corrupt", "unscaled.tif": "no resolution"}
    for name, expected in cases.items():
        with pytest.raises(UserInputError, match=expected):
            open_slide(tmp_path / name)
    with open_slide(unscaled, mpp=0.5) as slide:  # the user's mpp makes it usable
        assert slide.scale.source == "chosen by user (mpp)"
    with pytest.raises(SlideError, match="folder"):
        open_slide(tmp_path)


@pytest.mark.parametrize("cut", [300, "past the data"])
def test_a_tiff_whose_data_is_missing_or_past_its_end_is_refused(tmp_path, small_slide, cut):
    """tiffslide pads what it cannot read with zeros: a TIFF cut inside its header (no strip or
    tile offsets) was read as a whole black slide and called benign."""
    data = small_slide[0].read_bytes()
    data = data[:cut] if isinstance(cut, int) else data[:len(data) - 100]
    (tmp_path / "cut_200X.tif").write_bytes(data)
    for source in (tmp_path / "cut_200X.tif", data):
        with pytest.raises(SlideError, match="truncated or corrupt"):
            open_slide(source, name="cut_200X.tif", backend="tiffslide")


def test_black_pixels_are_not_tissue():
    """OD of a zero pixel is the clip maximum: black (missing data, padding) read as the densest stain."""
    black = np.zeros((64, 64, 3), np.uint8)
    assert not TissueMasker().fit_transform(black, mpp=8.0).any()
    block = np.full((64, 96, 3), 255, np.uint8)
    block[:, :32] = 0  # a black margin
    block[16:48, 48:80] = (190, 90, 170)  # and tissue
    mask = TissueMasker().fit_transform(block, mpp=8.0)
    assert mask[16:48, 48:80].all() and not mask[:, :32].any()


def test_an_uncompressed_pyramid_opens_from_memory_as_from_its_path(tmp_path):
    """tifffile + zarr 3 refused uncompressed tiles from a writable in-memory file ("Store is not
    read-only"): a valid upload was called truncated or corrupt."""
    rgb = np.zeros((600, 900, 3), np.uint8)
    rgb[..., 0] = np.arange(900) % 251
    rgb[..., 1] = (np.arange(600) % 241)[:, None]
    rgb[..., 2] = 180
    path = write_pyramid(tmp_path / "raw.tif", rgb, mpp=0.5, levels=2, compression="none")
    with open_slide(path.read_bytes(), name="raw.tif") as slide:
        assert slide.backend == "tiffslide" and slide.level_dimensions == [(900, 600), (450, 300)]
        assert (slide.read_region((100, 50), 0, (300, 200)) == rgb[50:250, 100:400]).all()
        assert slide.read_region((0, 0), 1, (450, 300)).shape == (300, 450, 3)


@pytest.fixture(scope="module")
def field_rgb():
    """A real 200X BreakHis field, twice across (1400x460)."""
    from core.testing.slides import SHARED

    field = np.asarray(Image.open(next((SHARED / "real").rglob("SOB_M_MC-14-18842D-200-016.png"))).convert("RGB"))
    return np.concatenate([field, field[:, ::-1]], axis=1)


def test_a_grey_and_alpha_tiff_reads_as_the_safe_loader_reads_it(tmp_path, field_rgb):
    """tiffslide gives a grey+alpha TIFF two samples a pixel; they crashed read_region (could not
    broadcast (h, w, 2) into (h, w, 3)) on the Slide page, `slide` and `slides`."""
    from core.data.images import load_image

    la = Image.fromarray(field_rgb).convert("LA")
    alpha = np.full(field_rgb.shape[:2], 255, np.uint8)
    alpha[:, :200] = 0  # a transparent strip: white, as the loader composites it
    la.putalpha(Image.fromarray(alpha))
    la.save(tmp_path / "grey_alpha.tif")
    data = (tmp_path / "grey_alpha.tif").read_bytes()
    expected = load_image(data, "grey_alpha.tif", check_histology=False).rgb
    for source in (tmp_path / "grey_alpha.tif", data):
        with open_slide(source, name="grey_alpha.tif", magnification="200X") as slide:
            assert slide.backend == "tiffslide"
            region = slide.read_region((0, 0), 0, (1400, 460))
        assert region.shape == (460, 1400, 3) and (region[:, :200] == 255).all()
        assert np.abs(region.astype(int) - expected).max() <= 1
    Image.fromarray(field_rgb).convert("L").save(tmp_path / "grey.tif")  # one sample a pixel: (h, w, 1)
    with open_slide(tmp_path / "grey.tif", name="grey.tif", magnification="200X") as slide:
        grey = np.asarray(Image.fromarray(field_rgb).convert("L"))
        assert (slide.read_region((0, 0), 0, (1400, 460)) == grey[..., None]).all()


def _tiff_modes(rgb: np.ndarray) -> dict[str, np.ndarray | Image.Image]:
    grey = np.asarray(Image.fromarray(rgb).convert("L"))
    return {"16-bit RGB": rgb.astype(np.uint16) * 16, "16-bit greyscale": grey.astype(np.uint16) * 16,
            "32-bit float greyscale": grey.astype(np.float32) / 255, "8-bit palette": Image.fromarray(rgb).quantize(64),
            "8-bit CMYK": Image.fromarray(rgb).convert("CMYK")}


@pytest.mark.parametrize("tiled", [False, True])
def test_tiffs_that_are_not_8_bit_grey_or_rgb_read_as_the_safe_loader_reads_them(tmp_path, field_rgb, tiled):
    """tiffslide's arrays were cast to uint8 unscaled (16-bit wrapped, float black), palette indices
    read as grey and CMYK's K as alpha (white); OpenSlide reads a tiled 16-bit or CMYK TIFF by its
    high bytes. Every such TIFF now gets the safe loader's conversion, as on Diagnose, and says so."""
    import tifffile

    from core.data.images import load_image

    for mode, pixels in _tiff_modes(field_rgb).items():
        path = tmp_path / f"{mode.replace(' ', '_')}.tif"
        if isinstance(pixels, Image.Image):  # palette and CMYK: Pillow writes their colour map / inks
            if tiled:
                continue
            pixels.save(path)
        else:
            tifffile.imwrite(path, pixels, photometric="rgb" if pixels.ndim == 3 else "minisblack",
                             tile=(256, 256) if tiled else None, resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
        expected = load_image(path, check_histology=False).rgb
        assert expected.std() > 20  # a real picture, not black or white
        for source in (path, path.read_bytes()):
            with open_slide(source, name=path.name, magnification="200X") as slide:
                region = slide.read_region((0, 0), 0, (1400, 460))
                assert f"{mode} TIFF, converted whole to 8-bit RGB" in slide.notes[0], mode
                if not isinstance(pixels, Image.Image):
                    assert slide.scale.source == "slide metadata" and slide.scale.x == pytest.approx(0.5)
            assert (region == expected).all(), mode


def test_a_tiff_too_large_to_convert_is_refused_by_its_mode(tmp_path, field_rgb, monkeypatch):
    import tifffile

    import core.data.images

    monkeypatch.setattr(core.data.images, "MAX_PIXELS", 1000 * 460)
    tifffile.imwrite(tmp_path / "deep.tif", field_rgb.astype(np.uint16) * 256, photometric="rgb")
    for source in (tmp_path / "deep.tif", (tmp_path / "deep.tif").read_bytes()):
        with pytest.raises(SlideError, match="is a 16-bit RGB TIFF of 1400x460 px: slides are read as 8-bit"):
            open_slide(source, name="deep.tif", magnification="200X")


def test_a_16_bit_tiff_without_a_resolution_is_asked_for_one_not_told_its_conversion_failed(tmp_path, field_rgb):
    """A 16-bit RGB TIFF that states no resolution got "is a 16-bit RGB TIFF that could not be converted to
    8-bit RGB ('u16.tif' states no resolution ...). Save it as an 8-bit RGB TIFF.": the conversion works; the
    scale was what was missing. It is asked for by itself, and with it given the TIFF is read."""
    import tifffile

    path = tmp_path / "u16.tif"
    tifffile.imwrite(path, field_rgb.astype(np.uint16) * 257, photometric="rgb")
    for source in (path, path.read_bytes()):
        with pytest.raises(SlideError, match="states no resolution") as error:
            open_slide(source, name=path.name)
        assert "could not be converted" not in str(error.value) and "8-bit" not in str(error.value)
        with open_slide(source, name=path.name, magnification="200X") as slide:
            assert "16-bit RGB TIFF, converted whole to 8-bit RGB" in slide.notes[0]
            assert (slide.read_region((0, 0), 0, (1400, 460)) == field_rgb).all()


def test_a_float_tiff_is_refused_by_its_mode_not_called_not_an_image(tmp_path, field_rgb):
    """A float RGB TIFF got "could not be converted to 8-bit RGB ('x.tif' is not a supported image format,
    not an image ...)": a message that contradicted itself."""
    import tifffile

    path = tmp_path / "float_200X.tif"
    tifffile.imwrite(path, field_rgb.astype(np.float32) / 255, photometric="rgb", tile=(256, 256))
    with pytest.raises(SlideError, match="32-bit float RGB TIFF that could not be converted to 8-bit RGB .the loader converts float grey") as error:
        open_slide(path)
    assert "not an image" not in str(error.value)


@pytest.mark.parametrize("unit, stated", [("µm", 0.5), ("nm", 500.0), (None, 0.5)])
def test_an_ome_tiff_is_read_with_its_pyramid_and_its_stated_resolution(tmp_path, small_slide, unit, stated):
    """OpenSlide opened an OME-TIFF as a one-level generic TIFF without a resolution ('states no
    resolution', every read from level 0): its OME-XML PhysicalSize and its SubIFD pyramid are used."""
    import tifffile

    _, rgb = small_slide
    path = tmp_path / "block.ome.tif"
    metadata = {"PhysicalSizeX": stated, "PhysicalSizeY": stated}
    if unit:
        metadata |= {"PhysicalSizeXUnit": unit, "PhysicalSizeYUnit": unit}
    with tifffile.TiffWriter(path, ome=True) as tiff:
        tiff.write(rgb, subifds=2, tile=(256, 256), photometric="rgb", metadata=metadata)
        for factor in (2, 4):
            tiff.write(rgb[::factor, ::factor], subfiletype=1, tile=(256, 256), photometric="rgb")
    with open_slide(path) as slide:
        assert slide.scale.x == pytest.approx(0.5) and "OME" in slide.scale.source
        assert slide.level_dimensions == [(1536, 1024), (768, 512), (384, 256)]
        assert np.array_equal(slide.read_region((400, 300), 1, (16, 16)), rgb[300:332:2, 400:432:2])


def _fragment_on(glass, shape=(125, 188)) -> tuple[np.ndarray, np.ndarray]:
    """A pink-purple textured fragment on flat glass of colour `glass` (an 8 um/px overview) and its truth."""
    rng = np.random.default_rng(0)
    rgb = np.empty((*shape, 3), np.uint8)
    rgb[:] = glass
    truth = np.zeros(shape, bool)
    truth[80:110, 130:170] = True
    rgb[truth] = np.clip(np.array([190, 120, 175]) + rng.integers(-25, 26, (int(truth.sum()), 3)), 0, 255)
    return rgb, truth


@pytest.mark.parametrize("glass", [(243, 243, 241), (205, 205, 208), (240, 236, 208)])
def test_grey_or_yellowish_glass_is_not_tissue(glass):
    """OD was measured against 255: glass of 205 or (240, 236, 208) exceeded max_od and was all tissue."""
    rgb, truth = _fragment_on(glass)
    masker = TissueMasker()
    mask = masker.fit_transform(rgb, mpp=8.0)
    assert np.allclose(masker.white_, glass, atol=1)
    assert mask[truth].mean() > 0.95 and not mask[~truth].any()


def test_a_field_that_is_all_tissue_stays_all_tissue():
    """No glass to measure: its palest mode is not believed as glass (not flat), OD stays against 255."""
    from core.testing.slides import BENIGN_FIELDS, _field

    field = np.asarray(Image.fromarray(_field(BENIGN_FIELDS[1])).resize((44, 29), Image.Resampling.BOX))
    masker = TissueMasker()
    assert masker.fit_transform(field, mpp=8.0).mean() > 0.95
    assert (masker.white_ == 255).all()


def test_a_dark_or_tinted_glass_estimate_is_not_believed():
    """A 'glass' mode with a channel below GLASS_FLOOR (a magenta cast, a black-ish scan) keeps 255."""
    from core.slide.tissue import glass_level

    for cast in [(255, 125, 255), (120, 120, 120)]:
        rgb, _ = _fragment_on(cast)
        assert (glass_level(rgb) == 255).all()
    assert not TissueMasker().fit_transform(np.full((64, 64, 3), 205, np.uint8), mpp=8.0).any()  # grey glass only


@pytest.mark.parametrize("glass, tint", [((243, 243, 241), False), ((205, 205, 208), False),
                                         ((240, 236, 208), False), ((207, 255, 230), False),
                                         ((255, 125, 255), True), ((255, 128, 128), True), ((120, 120, 120), False)])
def test_only_a_bright_background_of_no_glass_colour_is_tinted(glass, tint):
    """Glass up to the most coloured background of the 757 real fields (207, 255, 230) is glass; magenta or
    pink from a colour-space mix-up is a tint (the predictor refuses the slide); a dark grey scan is neither."""
    rgb, _ = _fragment_on(glass)
    masker = TissueMasker()
    masker.fit_transform(rgb, mpp=8.0)
    assert (masker.glass_.tint is not None) is tint


def test_pen_ink_is_not_tissue_and_is_white_in_the_tiles():
    """Green and blue pen (high OD) were tissue and reached the model: a circle round the malignant block took
    its tiles from p 0.6-0.76 to 0.10-0.17. Ink is off the mask and white in the tile; stain is kept."""
    rgb, truth = _fragment_on((243, 243, 241))
    rgb[20:24, 10:150] = (20, 140, 60)  # a green line on the glass
    rgb[90:94, 125:175] = (30, 60, 170)  # a blue one across the tissue
    masker = TissueMasker()
    mask = masker.fit_transform(rgb, mpp=8.0)
    assert not mask[20:24].any() and not mask[90:94].any() and mask[truth].mean() > 0.85
    cleaned = masker.glass_.clean(rgb)
    assert (cleaned[20:24, 10:150] == 255).all() and (cleaned[90:94, 125:175] == 255).all()
    untouched = truth.copy()
    untouched[90:94] = False
    assert np.array_equal(cleaned[untouched], rgb[untouched]) and masker.glass_.ink_share > 0


@pytest.mark.parametrize("pen", [(20, 20, 200), (40, 40, 42), (55, 50, 48)])
def test_pure_blue_and_black_markers_are_ink_too(pen):
    """Pure blue (red equal to green: the H&E hue rule reads it as purple) and a black marker brighter than the
    black cut-off were 'tissue' and reached the model. Dark purple nuclei and the fragment stay."""
    from core.slide.tissue import ink

    rgb, truth = _fragment_on((243, 243, 241))
    rgb[20:24, 10:150] = pen  # on the glass
    rgb[90:94, 125:175] = pen  # across the tissue
    masker = TissueMasker()
    mask = masker.fit_transform(rgb, mpp=8.0)
    assert not mask[20:24].any() and mask[truth].mean() > 0.85
    cleaned = masker.glass_.clean(rgb)
    assert (cleaned[20:24, 10:150] == 255).all() and (cleaned[90:94, 125:175] == 255).all()
    assert not ink(np.array([[70, 40, 110], [45, 25, 80], [120, 60, 150], [30, 28, 70]], np.uint8)).any()


def test_a_slide_mostly_of_ink_colours_is_left_to_the_he_check():
    """A green photo is not H&E with pen marks: its colours stay 'tissue' and unwhitened, so the H&E
    check refuses it in its own words instead of the mask calling it empty."""
    photo = np.zeros((64, 96, 3), np.uint8)
    photo[..., 1] = np.linspace(40, 220, 96).astype(np.uint8)[None]
    photo[..., 2] = 60
    masker = TissueMasker()
    assert masker.fit_transform(photo, mpp=8.0).mean() > 0.9 and not masker.glass_.ink
    assert np.array_equal(masker.glass_.clean(photo), photo)
