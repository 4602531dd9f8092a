"""Physical scale: BreakHis magnification -> microns per pixel, aspect restoration, the tile grid."""

import numpy as np
import pytest

from core.data.scale import (
    field_mpp,
    image_scale,
    magnification_mpp,
    model_scale,
    name_magnification,
    scaled_size,
    tile_grid,
    tile_origins,
    to_scale,
)


def test_magnification_figures_follow_the_objective():
    assert [magnification_mpp(m) for m in ("40X", "100X", "200X", "400X")] == [2.5, 1.0, 0.5, 0.25]
    with pytest.raises(ValueError):
        magnification_mpp("0X")


def test_copies_keep_the_field_of_view():
    original = field_mpp("200X", 700, 460)
    shrunk = field_mpp("200X", 500, 328)
    squashed = field_mpp("200X", 224, 224)
    assert original.isotropic and (original.x, original.y) == (0.5, 0.5)
    assert shrunk.isotropic and shrunk.x == pytest.approx(0.7)
    assert not squashed.isotropic
    assert squashed.x == pytest.approx(0.5 * 700 / 224) and squashed.y == pytest.approx(0.5 * 460 / 224)
    # All three at one target scale: the same field size in pixels, the aspect of the original field.
    target = squashed.x
    sizes = {scaled_size(w, h, s, target) for (w, h), s in
             (((700, 460), original), ((500, 328), shrunk), ((224, 224), squashed))}
    assert sizes == {(224, 147)}
    # Larger than a field, of its aspect (a 3x3 mosaic of fields, a 3:2 camera frame): not an enlarged
    # copy but tissue at the original pixel size, or a slide tile would cover 3x (9x) the tissue.
    for size in ((2100, 1380), (6000, 4000)):
        assert (field_mpp("200X", *size).x, field_mpp("200X", *size).y) == (0.5, 0.5)


def test_image_scale_from_name_or_choice():
    named = image_scale("SOB_B_A-14-22549AB-40-001.png", 700, 460)
    assert named.x == 2.5 and "file name" in named.source
    assert image_scale("photo.png", 700, 460) is None
    chosen = image_scale("photo.png", 700, 460, "400X")
    assert chosen.x == 0.25 and "chosen by user" in chosen.source


@pytest.mark.parametrize("name, expected", [
    ("SOB_B_A-14-22549AB-40-001.png", "40X"), ("biopsy_40x.png", "40X"), ("scan-400X.tif", "400X"),
    ("slide7_100x.tif", "100X"), ("case 200x field.jpg", "200X"),
    ("crop_400x300.png", None), ("tile_200x200.png", None), ("field_100x100.jpg", None), ("img-40x40.tif", None),
    ("x1400 field.png", None), ("img40xb.png", None), ("scan.png", None),
])
def test_one_rule_reads_a_magnification_from_a_name(name, expected):
    """A BreakHis name or a standalone token, never a pixel size; the app's, the CLI's and the scale's
    rule (Diagnose said "40X (file name)" while its scale said the same name stated none)."""
    from core.app.registry import magnification_from_name

    assert name_magnification(name) == magnification_from_name(name) == expected
    scale = image_scale(name, 2100, 1840, "200X")
    assert scale.source == (f"file name ({expected}), original pixel size" if expected
                            else "chosen by user (200X), original pixel size")


def test_to_scale_restores_the_aspect_of_a_squashed_copy():
    rgb = np.zeros((224, 224, 3), np.uint8)
    rgb[:, :112] = 255  # left half white
    out = to_scale(rgb, field_mpp("200X", 224, 224), field_mpp("200X", 224, 224).x)
    assert out.shape == (147, 224, 3)
    assert out[:, :100].min() > 250 and out[:, 124:].max() < 5


def test_tile_grid_covers_the_image_without_padding_past_it():
    assert tile_origins(10, 4, 4) == [0, 4, 6]
    assert tile_origins(8, 4, 2) == [0, 2, 4]
    assert tile_origins(3, 4, 4) == [0]
    grid = tile_grid(10, 8, 4)
    covered = np.zeros((8, 10), bool)
    for x, y in grid:
        assert x + 4 <= 10 and y + 4 <= 8
        covered[y:y + 4, x:x + 4] = True
    assert covered.all()
    with pytest.raises(ValueError):
        tile_origins(10, 0, 1)


def test_model_scale_reads_the_card_or_derives_it_from_the_training_images():
    stated = {"scale": {"mpp": 1.5625, "tile_px": [128, 128], "source": "a tile model"}}
    assert model_scale(stated) == {"mpp": 1.5625, "tile_px": [128, 128], "source": "a tile model"}
    at_400x = model_scale({"training": {"magnification": "400X"}})
    assert at_400x["mpp"] == 0.25 and at_400x["tile_px"] == [700, 460] and "estimated" in at_400x["source"]
    counted = model_scale({"training": {"magnification": "all"},
                           "evidence": {"by_magnification": {"40X": 45, "200X": 641, "400X": 40}}})
    assert counted["mpp"] == 0.5 and "641 of 726" in counted["source"]
    assert model_scale({})["mpp"] == 0.5 and "200X assumed" in model_scale({})["source"]
    with pytest.raises(ValueError, match="invalid"):
        model_scale({"scale": {"mpp": 0, "tile_px": [700, 460]}})


def test_training_writes_the_whole_field_scale_into_the_card():
    import pandas as pd

    from core.training.runcard import training_scale

    class Config:
        magnification = "all"

    train = pd.DataFrame({"magnification": ["100X", "100X", "40X", "200X"], "synthetic": [False, False, False, True]})
    scale = training_scale(Config, train)
    assert scale["mpp"] == 1.0 and scale["tile_px"] == [700, 460]  # synthetic images do not count
    Config.magnification = "40X"
    assert training_scale(Config, train)["mpp"] == 2.5


def test_a_stated_magnification_is_read_one_way_everywhere():
    from core.data.scale import parse_magnification

    assert [parse_magnification(m) for m in ("40X", "100x", "200", 400, " 20 X ")] == [40, 100, 200, 400, 20]
    for bad in ("abcX", "0X", "-40X", "1.5X", "", "X", None):
        with pytest.raises(ValueError, match="a magnification is a whole number of times such as 200X"):
            parse_magnification(bad)
    assert magnification_mpp("200") == magnification_mpp("200X") == 0.5
