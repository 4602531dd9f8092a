"""The patch predictor on a mosaic of real BreakHis fields: mask, maps, call, exports, bad slides.
Tile counts are in the whole-field model's tiles (models/small-cnn: one 200X field per tile)."""

import io
import json

import numpy as np
import pandas as pd
import pytest

from core.data.scale import model_scale
from core.errors import Cancelled, UserInputError
from core.model.loading import load_predictor
from core.slide.export import geojson, heatmap_rgb, malignant_regions, tiles_csv, write_outputs
from core.slide.predictor import SlidePredictor, TileSettings
from core.slide.reader import open_slide
from core.testing.slides import FIELD, write_mosaic, write_pyramid
from tests.conftest import REPO, WHOLE_FIELD_MODEL


@pytest.fixture(scope="module")
def bundled():
    return load_predictor(WHOLE_FIELD_MODEL)


@pytest.fixture(scope="module")
def mosaic(tmp_path_factory):
    return write_mosaic(tmp_path_factory.mktemp("mosaic") / "mosaic.tif")


@pytest.fixture(scope="module")
def result(bundled, mosaic):
    with open_slide(mosaic[0]) as slide:
        return SlidePredictor(bundled, TileSettings(top_k=2)).predict(slide)


def _region_mean(result, region):
    x0, y0, x1, y1 = (round(v / result.map_downsample) for v in region)
    return float(np.nanmean(result.p_malignant[y0:y1, x0:x1]))


def test_the_whole_field_models_scale_is_a_200x_field(bundled):
    scale = model_scale(bundled.card)
    assert scale["tile_px"] == list(FIELD) and scale["mpp"] == 0.5 and "411 of 457" in scale["source"]  # its train split


def test_tiles_cover_the_tissue_and_skip_the_glass(result, mosaic):
    _, regions = mosaic
    assert len(result.plan.origins) == 28 and len(result.tiles) == 8  # the 8 fields, nothing else
    inside = [any(r[0] <= t.x and t.x + t.width <= r[2] and r[1] <= t.y and t.y + t.height <= r[3]
                  for r in regions.values()) for t in result.tiles.itertuples()]
    assert all(inside)
    d = result.map_downsample
    assert not result.tissue[: int(400 / d)].any()  # the glass margin
    assert np.isnan(result.p_malignant[: int(400 / d)]).all()


def test_heat_map_is_higher_over_the_malignant_fields(result, mosaic):
    _, regions = mosaic
    assert _region_mean(result, regions["malignant"]) > _region_mean(result, regions["benign"]) + 0.2
    assert result.call["label"] == "malignant" and result.call["tissue_tiles"] == 8
    assert "region of connected tiles" in result.call["rule"] and result.call["region"] is not None
    x0, y0, x1, y1 = regions["malignant"]
    for tile in result.call["region"]["tiles"]:  # the driving region lies on the malignant fields
        box = result.plan.level0_box(tile)
        assert x0 <= box[0] and box[2] <= x1 and y0 <= box[1] and box[3] <= y1


def test_tile_coordinates_round_trip_to_level0(result, mosaic, bundled):
    """A tile's CSV coordinates (level 0) read back give its p(malignant): exactly at the level it
    was read at, and within resampling noise from level 0 itself (the field put there)."""
    rows = pd.read_csv(io.StringIO(tiles_csv(result)))
    row = rows.sort_values("p_malignant").iloc[-1]
    plan = result.plan
    assert plan.level == 1 and plan.read_size == (350, 230)  # 2.7 x 1.8 um/px input: the 1 um/px level
    with open_slide(mosaic[0]) as slide:
        seen = slide.read_region((int(row.x), int(row.y)), plan.level, plan.read_size)
        full = slide.read_region((int(row.x), int(row.y)), 0, (int(row.width), int(row.height)))
    assert bundled.predict([seen])[0].stage1["malignant"] == pytest.approx(row.p_malignant, abs=1e-4)
    assert bundled.predict([full])[0].stage1["malignant"] == pytest.approx(row.p_malignant, abs=0.05)


def test_top_tiles_have_both_grad_cams(result):
    assert len(result.top) == 2
    top = result.top[0]
    assert result.tiles.at[top.index, "p_malignant"] == result.tiles["p_malignant"].max()
    maps = top.cams.explanations(top.image.shape[:2])
    assert set(maps) == {"stage1", "stage2"} and maps["stage1"].heatmap.shape == top.image.shape[:2]


def test_geojson_polygons_lie_in_the_malignant_region(result, mosaic):
    x0, y0, x1, y1 = mosaic[1]["malignant"]
    collection = json.loads(json.dumps(geojson(result)))
    assert collection["type"] == "FeatureCollection" and collection["features"]
    assert result.call["label"] == "malignant"
    for feature in collection["features"]:  # only the region that drove the call is a "Malignant" annotation
        expected = "Malignant" if feature["properties"]["drives_call"] else "Suspicious (model)"
        assert feature["properties"]["classification"]["name"] == expected
        assert feature["properties"]["slide_call"] == result.call["label"]
        assert feature["properties"]["model"] == result.model["name"] and "model_limited" in feature["properties"]
        for x, y in feature["geometry"]["coordinates"][0]:
            assert x0 <= x <= x1 and y0 <= y <= y1
    assert sum(p.area for p in malignant_regions(result)) == pytest.approx(
        (result.tiles["p_malignant"] >= 0.5).sum() * FIELD[0] * FIELD[1])
    assert collection["features"][0]["properties"]["name"] == "Driving region (slide call)"


def test_outputs_are_written_summary_last(result, tmp_path):
    paths = write_outputs(result, tmp_path)
    written = json.loads(paths["summary"].read_text())
    assert written["call"]["label"] == "malignant" and written["statement"].startswith("Malignant: driven by region 1")
    first = pd.read_csv(paths["tiles"]).iloc[0]
    assert first["drives_call"] and first["tile"] in written["call"]["region"]["tiles"]
    assert not list(tmp_path.glob("*.partial"))
    assert heatmap_rgb(result).shape == result.thumbnail.shape


def test_a_model_whose_card_declares_its_views_says_tta_is_always_on(bundled, mosaic, result, monkeypatch):
    """--tta changed nothing for such a model (the bundled one) and nothing said so: its help promised 8x the time."""
    assert not any("symmetries" in note for note in result.notes)  # this model's --tta is the user's choice
    monkeypatch.setattr(bundled, "tta_fixed", lambda: True)
    with open_slide(mosaic[0]) as slide:
        notes = SlidePredictor(bundled, TileSettings(top_k=0, tta=True)).predict(slide).notes
    assert any("always on; --tta changed nothing" in note for note in notes)


def test_cancel_stops_with_nothing_returned(bundled, mosaic):
    with open_slide(mosaic[0]) as slide, pytest.raises(Cancelled):
        SlidePredictor(bundled, TileSettings(batch_size=2)).predict(slide, cancelled=lambda: True)


def test_a_slide_without_tissue_says_so(bundled, tmp_path):
    path = write_pyramid(tmp_path / "glass.tif", np.full((920, 1400, 3), 246, np.uint8), mpp=0.5, levels=2)
    with open_slide(path) as slide, pytest.raises(UserInputError, match="No tissue"):
        SlidePredictor(bundled).predict(slide)


def test_a_slide_that_is_not_he_tissue_gets_diagnoses_message_not_a_call(bundled, result):
    """The tissue mask knows only optical density: a green photo and a greyscale scan named _200X were
    all "tissue" and called benign. Their tiles get Diagnose's H&E check, and its words; real tissue passes."""
    from core.data.histology import NOT_ANALYSED
    from core.testing.slides import mosaic
    from tests.app_helpers import png_bytes

    rgb, _ = mosaic()
    grey = np.repeat(rgb.mean(axis=-1, keepdims=True).astype(np.uint8), 3, axis=-1)
    photo = np.zeros((1380, 2100, 3), np.uint8)
    photo[..., 1] = np.linspace(40, 220, 2100).astype(np.uint8)[None]
    photo[..., 2] = 60
    for name, image in (("grey_200X.png", grey), ("holiday_200X.png", photo)):
        with open_slide(png_bytes(image), name=name) as slide, pytest.raises(UserInputError, match=NOT_ANALYSED):
            SlidePredictor(bundled).predict(slide)
    assert not any("H&E check" in note for note in result.notes)


def test_a_slide_whose_colours_are_wrong_is_not_analysed(bundled, result):
    """The mosaic's RGB read as YCbCr (a colour-space mix-up in a file's export): magenta glass, green nuclei.
    Its glass was not believed, so every tile was "tissue", and the tiles passed the H&E check (magenta reads
    as pink): benign fields were called p 0.82 malignant with no note. Refused, naming the background."""
    from PIL import Image

    from core.data.histology import NOT_ANALYSED
    from core.testing.slides import mosaic
    from tests.app_helpers import png_bytes

    rgb, _ = mosaic()
    mixed = np.asarray(Image.frombytes("YCbCr", (rgb.shape[1], rgb.shape[0]), rgb.tobytes()).convert("RGB"))
    with open_slide(png_bytes(mixed), name="mixed_200X.png") as slide, \
            pytest.raises(UserInputError, match=NOT_ANALYSED) as refused:
        SlidePredictor(bundled).predict(slide)
    assert "(255, 120, 255), a colour no glass has" in str(refused.value)
    assert result.call["tissue_tiles"] > 0  # the same mosaic in its true colours is analysed


@pytest.mark.parametrize("mpp", [0.02, 0.001, 8.0])
def test_an_absurd_tile_for_the_resolution_is_refused_before_reading(bundled, mpp, monkeypatch):
    """At 0.02 um/px one tile of a 4900x2540 image was 17,500x11,500 px (5.9 GB of RAM); at 0.001 it asked
    for 225 GiB (a MemoryError traceback); at 8 it was 44x29 px, enlarged 4x to the model's input, and a slide
    ran for minutes. Refused before any read, with the resolution and what to do."""
    from core.slide.reader import SlideReader

    rgb = np.full((2540, 4900, 3), 255, np.uint8)
    rgb[300:2200, 300:4600] = (190, 90, 170)
    with _image(rgb, mpp) as slide:
        monkeypatch.setattr(SlideReader, "read_region", lambda *a, **k: pytest.fail("read before the check"))
        with pytest.raises(UserInputError, match=f"at {mpp:g} um/px .chosen by user.*Check that resolution"):
            SlidePredictor(bundled).predict(slide)


def _image(rgb, mpp):
    from tests.app_helpers import png_bytes

    return open_slide(png_bytes(rgb), name="scan.png", mpp=mpp)


def test_a_large_upload_is_tiled_and_a_field_is_not(bundled):
    from core.app.slides import analyse_upload, should_tile
    from core.testing.slides import mosaic
    from tests.app_helpers import png_bytes

    card = bundled.card
    assert should_tile(card, "SOB_M_DC-14-2523-200-010.png", (700, 460), None) is None  # a field
    assert should_tile(card, "SOB_M_DC-14-2523-40-010.png", (700, 460), None) is None  # a 40X field too
    assert should_tile(card, "SOB_M_DC-14-2523-200-010.png", (2800, 1840), None) is None  # a copy of one
    assert should_tile(card, "biopsy.png", (3000, 3000), None) is None  # scale unknown: not guessed
    reason = should_tile(card, "biopsy.png", (4900, 1840), "200X")
    assert reason and "28 tiles" in reason and "350x230 um" in reason
    # A field recipe's tiles are 224-um views of its 350x230-um field: a plain 200X field is 4 of them,
    # and still one field, diagnosed whole; twice its size in each direction is tiled.
    from core.data.fields import ViewSpec

    field_model = {"views": ViewSpec(128, 224, 3, True).to_dict(),
                   "scale": {"mpp": 1.0, "tile_px": [224, 224], "source": "field recipe"}}
    assert should_tile(field_model, "field.png", (700, 460), "200X") is None
    reason = should_tile(field_model, "field.png", (1400, 920), "200X")
    assert reason and "(350x230 um)" in reason and "12 tiles" in reason
    # A field at a magnification the model learnt whole fields of is one field whatever its name: a 40X or 100X
    # field named field_40x.png (or with 40X chosen) was tiled as 25 (or 4) training fields and not called.
    for stated in ("40X", "100X", "400X"):
        assert should_tile(card, f"field_{stated.lower()}.png", (700, 460), None) is None, stated
        assert should_tile(card, "field.png", (700, 460), stated) is None, stated
    reason = should_tile(card, "mosaic.png", (2100, 1380), "40X")  # 3x3 fields at 40X: tiled
    assert reason and "(1750x1150 um, a whole 40X field)" in reason
    # Of unknown scale it is diagnosed whole, as one field; larger than two fields each way, it says how to tile it.
    from core.app.slides import scale_hint

    assert "choose its magnification" in scale_hint("biopsy.png", (3000, 3000), None)
    assert scale_hint("biopsy.png", (700, 460), None) is None  # field-sized
    assert scale_hint("biopsy.png", (3000, 3000), "200X") is None  # stated: tiled or not by should_tile
    assert scale_hint("SOB_M_DC-14-2523-200-010.png", (2800, 1840), None) is None  # the name states it
    rgb, _ = mosaic()
    result = analyse_upload(bundled, "biopsy.png", png_bytes(rgb), "200X")
    assert len(result.tiles) == 8 and result.call["tissue_tiles"] == 8


def test_the_thumbnail_and_the_heat_map_share_the_level0_frame(result):
    """On the Slide page the thumbnail, the heat map and the tile markers are drawn in level-0 pixels:
    plotly puts an image's and a heat map's FIRST PIXEL CENTRE at x0, so both start at d / 2 and the
    thumbnail's edge is at 0 (x0 = 0 drew it half a thumbnail pixel up and left of its heat map)."""
    from core.app.slides import heatmap_figure

    image, heat = heatmap_figure(result).data[:2]
    d = result.map_downsample
    assert (image.x0, image.y0, image.dx) == (heat.x0, heat.y0, heat.dx) == (d / 2, d / 2, d)


def test_a_benign_slide_calls_none_of_its_regions_malignant_in_qupath(result):
    """A benign call's suspicious regions were exported as "Malignant" annotations: that is what QuPath shows."""
    import copy

    benign = copy.copy(result)
    benign.call = {**result.call, "label": "benign"}
    names = {f["properties"]["classification"]["name"] for f in geojson(benign)["features"]}
    assert names == {"Suspicious (model)"}


def test_a_slide_thinner_than_a_tile_is_not_drawn_past_its_edge(bundled):
    """QA defect 4: on a 300-px-high strip the 460-px tiles, and the GeoJSON outlines made of them, reached
    y = 460. Boxes are clipped to the slide; the model still reads the whole tile, padded white."""
    from core.slide.call import region_size
    from core.testing.slides import mosaic

    rgb, _ = mosaic()
    strip = np.ascontiguousarray(rgb[FIELD[1] + 80:FIELD[1] + 380])  # 4900 x 300: one row of fields, cut
    with _image(strip, 0.5) as slide:
        result = SlidePredictor(bundled, TileSettings(top_k=1)).predict(slide)
    tiles, plan = result.tiles, result.plan
    assert len(tiles) == 4 and (tiles["y"] + tiles["height"]).max() == 300 and (tiles["x"] + tiles["width"]).max() <= 4900
    assert plan.level0_box(0) == (0, 0, 700, 300) and plan.read_box(0) == (0, 0, 700, 460)  # what the model reads
    assert tiles["tissue"].max() > 0.9 > 300 / 460  # the share of a tile's part on the slide, as --min-tissue says
    assert result.top[0].image.shape[:2] == (460, 700)  # read whole (level 0: read_size is the tile)
    collection = json.loads(json.dumps(geojson(result)))
    assert collection["features"], "the malignant fields make a region"
    for feature in collection["features"]:
        for polygon in feature["geometry"]["coordinates"][:1]:
            assert all(0 <= x <= 4900 and 0 <= y <= 300 for x, y in polygon)
    for region in result.regions:  # a clipped tile still counts one tile area
        assert region.size == pytest.approx(len(region.tiles)) == region_size(tiles.loc[region.rows], tiles)


def test_a_black_band_reaches_the_model_as_the_white_band_it_stands_for(bundled):
    """Black scanner borders and zero padding were out of the mask but went to the model as they were:
    malignant tiles beside a 120-px border fell from p 0.7 to 0.1. They are whitened, as glass is."""
    from core.testing.slides import mosaic
    from tests.app_helpers import png_bytes

    rgb, regions = mosaic()
    x0, y0, _, y1 = regions["malignant"]
    tiles, seen = {}, {}
    for colour in (0, 255):
        banded = rgb.copy()
        banded[y0:y1, x0:x0 + 200] = colour  # the left 200 px of the malignant block
        with open_slide(png_bytes(banded), name="banded_200X.png") as slide:
            predictor = SlidePredictor(bundled, TileSettings(top_k=0))
            result = predictor.predict(slide)
            tiles[colour] = result.tiles
            seen[colour] = [predictor.read_tile(slide, result.plan, int(i)) for i in result.tiles["tile"]]
    assert all(np.array_equal(a, b) for a, b in zip(seen[0], seen[255], strict=True))
    # (the mask's share differs only where the overview averages the band's edge into the tissue)
    pd.testing.assert_frame_equal(tiles[0].drop(columns="tissue"), tiles[255].drop(columns="tissue"))


def test_a_tiles_own_view_says_what_the_map_and_tiles_csv_say(bundled, mosaic, result):
    """The Slide page's view of one tile re-scored it as a whole field (3 crops x 8 symmetries of a restored
    field) while the map, the list, tiles.csv and the PDF hold the tile pass's score (one view of the tile):
    p(malignant) differed by up to 0.14 and the subtype could change. Now the tile pass's input is explained."""
    from core.data.fields import ViewSpec

    field_model = load_predictor(REPO / "models" / "default")
    assert ViewSpec.from_card(field_model.card) is not None  # a model that scores a field from several views
    with open_slide(mosaic[0]) as slide:
        scored = SlidePredictor(field_model, TileSettings(top_k=0)).predict(slide)
        rows = scored.tiles.set_index("tile")
        for tile in rows.index[:3]:
            image, diagnosis = SlidePredictor(field_model).explain_tile(slide, scored.plan, int(tile), level0=False)
            assert diagnosis.prediction.stage1["malignant"] == pytest.approx(rows.at[tile, "p_malignant"], abs=1e-4)
            assert diagnosis.prediction.subtype == rows.at[tile, "subtype"]
            assert set(diagnosis.explanations) == {"stage1", "stage2"} and image.shape[:2] == \
                diagnosis.explanations["stage1"].heatmap.shape[:2]
