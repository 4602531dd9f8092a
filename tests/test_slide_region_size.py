"""A region's size (core.slide.call.region_size): the tile areas its tiles' boxes cover, so that the last column
or row moved back onto its neighbour (core.data.scale.tile_origins) and --overlap count only the tissue they add;
the rule chooser (core.slide.choose) measures regions the same way."""

import numpy as np
import pandas as pd
import pytest

from core.slide.call import SlideRule, apply_rule, find_regions
from core.slide.choose import MosaicRun


def grid_tiles(p: np.ndarray, w: int = 700, h: int = 460, overlap: float = 0.0) -> pd.DataFrame:
    """A tiles table from a rows x cols array of p(malignant), tiles `overlap` of a tile apart."""
    rows, cols = np.indices(p.shape)
    step_x, step_y = round(w * (1 - overlap)), round(h * (1 - overlap))
    return pd.DataFrame({"tile": np.arange(p.size), "row": rows.ravel(), "col": cols.ravel(),
                         "x": cols.ravel() * step_x, "y": rows.ravel() * step_y, "width": w, "height": h,
                         "p_malignant": p.ravel().astype(float)})


def slide_tiles(width: int, height: int, suspicious: set, w: int = 700, h: int = 460) -> pd.DataFrame:
    """The tiles table SlidePredictor lays on a width x height slide (core.data.scale.tile_origins), every
    tile tissue, p(malignant) 0.9 where a tile overlaps a `suspicious` (row, col) field of w x h, else 0.1."""
    from core.data.scale import tile_origins

    ys, xs = tile_origins(height, h, h), tile_origins(width, w, w)
    tiles = pd.DataFrame([{"row": r, "col": c, "x": x, "y": y, "width": w, "height": h,
                           "p_malignant": 0.9 if any(x < (fc + 1) * w and fc * w < x + w and y < (fr + 1) * h
                                                     and fr * h < y + h for fr, fc in suspicious) else 0.1}
                          for r, y in enumerate(ys) for c, x in enumerate(xs)])
    return tiles.assign(tile=np.arange(len(tiles)))


def test_an_edge_tile_moved_back_onto_its_neighbour_is_not_a_second_tile_area():
    """QA defect 3: 20 px of glass beyond 4 whole fields adds a last column 20 px from the one before; the one
    malignant field, covered by both, was 2 tile areas and flipped models/small-cnn's call to malignant."""
    rule = SlideRule("region", 2.0, 0.6465)  # models/small-cnn's chosen rule
    exact, plus20 = slide_tiles(2800, 920, {(0, 3)}), slide_tiles(2820, 920, {(0, 3)})
    assert sorted(plus20["x"].unique()) == [0, 700, 1400, 2100, 2120]  # the moved-back column
    (one,), (two,) = find_regions(exact), find_regions(plus20)
    assert len(one.tiles) == 1 and len(two.tiles) == 2
    assert one.size == 1.0 and two.size == pytest.approx(720 / 700)  # the same field, plus the 20-px strip
    assert not apply_rule(rule, exact)[0] and not apply_rule(rule, plus20)[0]
    # A last row moved back 1 px from the one before: still about one tile area, not 2.
    (tall,) = find_regions(slide_tiles(2800, 921, {(1, 3)}))
    assert len(tall.tiles) == 2 and tall.size == pytest.approx(461 / 460)


def test_a_regions_size_is_the_tissue_it_covers_at_any_overlap():
    """Away from the slide's edge and without overlap a region is its tile count, as before; at --overlap 0.5
    the 3 x 3 tiles inside the same 2 x 2 tile areas of tissue are those 4 tile areas (not 9 x 0.25 = 2.25)."""
    p = np.full((5, 6), 0.1)
    p[1:3, 1:3] = 0.9  # 2 x 2 tile areas at (700, 460)-(2100, 1380), away from every edge
    (plain,) = find_regions(grid_tiles(p))
    assert plain.size == 4.0 == len(plain.tiles)
    half = np.full((9, 11), 0.1)
    half[2:5, 2:5] = 0.9  # origins 700, 1050, 1400 by 460, 690, 920: the tiles wholly inside the same tissue
    (overlapping,) = find_regions(grid_tiles(half, overlap=0.5))
    assert len(overlapping.tiles) == 9 and overlapping.size == pytest.approx(4.0)
    assert overlapping.box == plain.box == (700, 460, 2100, 1380)


def test_the_rule_chooser_measures_regions_as_the_call_does():
    """core.slide.choose scores the same region sizes the applied rule compares with min_size: a benign
    near-duplicate pair at the slide's edge is one tile area there too, so it sets no size-2 benign maximum."""
    from core.slide.choose import benign_scores

    tiles = slide_tiles(2820, 920, {(0, 3)})
    run = MosaicRun(tiles, np.zeros(len(tiles), bool), 0)
    assert benign_scores([run], "region", 1) == [pytest.approx(0.9)]
    assert benign_scores([run], "region", 2) == []
    assert [r.size for r in find_regions(tiles)] == [r.size for r in apply_rule(SlideRule("region", 2, 0.6), tiles)[1]]
