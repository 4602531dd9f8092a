"""The slide call as a detection rule: regions on synthetic tile grids, the top-k rule, the choice of
the rule on mosaics, the mosaic builder, and real mosaics with a small focus through the bundled
whole-field model (models/small-cnn: its slide rule was chosen on mosaics of its validation patients)."""

import io
import json

import numpy as np
import pandas as pd
import pytest

from core.data.breakhis import parse_name
from core.slide.call import DEFAULT_RULE, SlideRule, apply_rule, call_text, find_regions, slide_call, slide_rule_of
from core.slide.choose import MARGIN, MosaicRun, choose_slide_rule
from core.slide.mosaic import build_mosaic
from tests.conftest import SHARED, WHOLE_FIELD_MODEL


def grid_tiles(p: np.ndarray, w: int = 700, h: int = 460, overlap: float = 0.0) -> pd.DataFrame:
    """A tiles table (every cell a tissue tile) from a rows x cols array of p(malignant); tiles `overlap` of
    a tile apart as SlidePredictor.plan strides them."""
    rows, cols = np.indices(p.shape)
    step_x, step_y = round(w * (1 - overlap)), round(h * (1 - overlap))
    return pd.DataFrame({"tile": np.arange(p.size), "row": rows.ravel(), "col": cols.ravel(),
                         "x": cols.ravel() * step_x, "y": rows.ravel() * step_y, "width": w, "height": h,
                         "p_malignant": p.ravel().astype(float)})


def card(**rule) -> dict:
    return {"thresholds": {"slide_rule": {**SlideRule(**rule).to_dict(),
                                          "validation": {"selected_on": {"mosaics": 3, "patients": 2},
                                                         "sensitivity": {"1": 0.5}, "specificity": 1.0}}}}


def test_regions_are_4_connected_tiles_above_the_tile_threshold():
    p = np.array([[0.9, 0.8, 0.1, 0.1],
                  [0.1, 0.1, 0.7, 0.1],   # (1, 2) touches (0, 1) only at a corner: its own region
                  [0.6, 0.1, 0.7, 0.1]])
    regions = find_regions(grid_tiles(p))
    assert [len(r.tiles) for r in regions] == [2, 2, 1]
    assert regions[0].tiles == [0, 1] and regions[0].mean_p == pytest.approx(0.85)
    assert regions[1].tiles == [6, 10] and regions[1].box == (1400, 460, 2100, 1380)
    assert regions[2].tiles == [8]
    # Without row/col columns the grid comes from the origins' ranks: the same regions.
    assert [r.tiles for r in find_regions(grid_tiles(p).drop(columns=["row", "col"]))] == [r.tiles for r in regions]


def test_a_gap_in_the_tissue_separates_regions():
    tiles = grid_tiles(np.array([[0.9, 0.2, 0.9]])).drop(index=1)  # the middle tile is glass (not analysed)
    assert [r.tiles for r in find_regions(tiles)] == [[0], [2]]


def test_region_rule_needs_size_and_mean():
    p = np.full((4, 4), 0.2)
    p[0, 0] = 0.95  # a single very suspicious tile: too small for min_size 2
    p[2:4, 2:4] = [[0.7, 0.72], [0.68, 0.66]]  # a 4-tile region of mean 0.69
    tiles = grid_tiles(p)
    positive, regions = apply_rule(SlideRule("region", 2, 0.65), tiles)
    assert positive and regions[0].qualified and sorted(regions[0].tiles) == [10, 11, 14, 15]
    assert regions[0].id == 1 and not regions[1].qualified  # the single tile is listed, second
    assert regions[0].score == pytest.approx(0.71)  # the core: its 2 most suspicious tiles
    assert not apply_rule(SlideRule("region", 2, 0.72), tiles)[0]  # core 0.71 < 0.72
    assert not apply_rule(SlideRule("region", 5, 0.6), tiles)[0]  # 4 tiles < 5
    positive, regions = apply_rule(SlideRule("region", 1, 0.9), tiles)
    assert positive and regions[0].tiles == [0]
    # Half-overlapping tiles count the area they cover: the 2 x 2 block is 1.5 x 1.5 = 2.25 tile areas.
    half = grid_tiles(p, overlap=0.5)
    assert apply_rule(SlideRule("region", 2, 0.6), half)[0] and not apply_rule(SlideRule("region", 3, 0.6), half)[0]


def test_a_region_is_judged_by_its_core_not_diluted_by_its_border():
    p = np.full((3, 5), 0.2)
    p[1, :] = [0.55, 0.9, 0.88, 0.55, 0.55]  # a focus and the tiles straddling its border
    positive, regions = apply_rule(SlideRule("region", 2, 0.8), grid_tiles(p))
    assert positive and regions[0].mean_p < 0.8 and regions[0].score == pytest.approx(0.89)
    assert not apply_rule(SlideRule("region", 3, 0.8), grid_tiles(p))[0]  # core of 3: 0.777


def test_top_k_rule_takes_the_k_most_suspicious_tiles_anywhere():
    p = np.full((3, 3), 0.1)
    p[0, 0], p[2, 2] = 0.9, 0.8
    positive, regions = apply_rule(SlideRule("top_k", 2, 0.8), grid_tiles(p))
    assert positive and regions[0].kind == "top_k" and regions[0].tiles == [0, 8]
    assert not apply_rule(SlideRule("top_k", 3, 0.8), grid_tiles(p))[0]  # (0.9 + 0.8 + 0.1) / 3


def test_the_call_names_its_region_or_says_none_qualified():
    p = np.full((3, 4), 0.3)
    p[1, 1:3] = 0.9
    call, regions = slide_call(grid_tiles(p), card(kind="region", min_size=2, min_mean_p=0.8))
    assert call["label"] == "malignant" and call["region"]["tiles"] == [5, 6]
    assert "region 1" in call["statement"] and "chosen on mosaics" in call["threshold_source"]
    assert call["validation"]["specificity"] == 1.0 and call["malignant_share"] == pytest.approx(2 / 12)
    call, _ = slide_call(grid_tiles(p), card(kind="region", min_size=3, min_mean_p=0.8))
    assert call["label"] == "benign" and call["region"] is None
    assert call["statement"].startswith("No region qualified") and call["closest_region"]["n_tiles"] == 2
    call, _ = slide_call(grid_tiles(np.full((2, 2), 0.2)), card())
    assert call["label"] == "benign" and "no tile reached" in call["statement"] and call["closest_region"] is None


def test_an_old_card_gets_the_default_rule_and_says_so():
    rule, where, _ = slide_rule_of({"thresholds": {"slide_malignant_share": 0.5}})
    assert rule == DEFAULT_RULE and "not chosen on validation" in where and "not used" in where
    call, _ = slide_call(grid_tiles(np.array([[0.9, 0.9, 0.2]])), {})
    assert call["label"] == "malignant" and "slide-threshold" in call["threshold_source"]


def test_a_benign_call_by_a_weak_rule_says_it_rules_nothing_out():
    weak = card(kind="top_k", min_size=4, min_mean_p=0.98)
    weak["thresholds"]["slide_rule"]["validation"]["localised"] = {"target": 0.01}
    call, _ = slide_call(grid_tiles(np.array([[0.9, 0.2, 0.2]])), weak)
    assert call["label"] == "benign" and "caught 1% of the 2-4-field foci" in call["statement"]
    strong = card(kind="region", min_size=1, min_mean_p=0.6)
    strong["thresholds"]["slide_rule"]["validation"]["localised"] = {"target": 0.9}
    assert "rule out" not in slide_call(grid_tiles(np.array([[0.2, 0.2]])), strong)[0]["statement"]


def _run(p, focus_cells=(), case="m"):
    tiles = grid_tiles(np.array(p, float))
    focus = np.zeros(len(tiles), bool)
    for r, c in focus_cells:
        focus[r * tiles["col"].max() + r + c] = True
    return MosaicRun(tiles, focus, len(focus_cells), case if focus_cells else None)


def test_the_rule_is_chosen_above_every_benign_score_with_a_margin():
    benign = [_run([[0.3, 0.6, 0.3], [0.3, 0.55, 0.3], [0.3, 0.3, 0.62]])]  # regions: 0.575 (2 tiles), 0.62 (1)
    foci = [_run([[0.3, 0.3, 0.3], [0.3, 0.9, 0.85], [0.3, 0.3, 0.3]], [(1, 1), (1, 2)]),
            _run([[0.3, 0.3, 0.3], [0.3, 0.3, 0.3], [0.3, 0.95, 0.3]], [(2, 1)]),
            _run([[0.9, 0.3, 0.3], [0.3, 0.3, 0.3], [0.3, 0.3, 0.3]], [(0, 0)])]
    chosen = choose_slide_rule(benign + foci)
    candidates = {(c["kind"], c["min_size"]): c for c in chosen["candidates"]}
    # Halfway between the benign maximum and the weakest focus caught, at least the margin above it:
    # cores of 1 tile: benign 0.62, foci 0.9, 0.95, 0.9; of 2 tiles: benign 0.575, the 2-field focus 0.875.
    assert candidates[("region", 1)]["min_mean_p"] == pytest.approx((0.62 + 0.9) / 2)
    assert candidates[("region", 2)]["min_mean_p"] == pytest.approx((0.575 + 0.875) / 2)
    assert candidates[("region", 3)]["min_mean_p"] == pytest.approx(0.5 + MARGIN)  # no focus and no benign of 3
    assert all(c["specificity"] == 1.0 for c in chosen["candidates"] if c["usable"])
    assert candidates[("region", 1)]["sensitivity"]["all"] == 1.0 and candidates[("region", 2)]["sensitivity"]["1"] == 0
    # Region 1 and 2 both catch the 2-field focus (the target): the larger size wins the tie.
    assert chosen["rule"] == SlideRule("region", 2.0, round((0.575 + 0.875) / 2, 4))
    assert chosen["figures"]["localised"]["target"] == 1.0


def test_a_top_k_rule_that_fires_off_the_focus_is_not_localised():
    benign = [_run([[0.3, 0.3], [0.3, 0.3]])]
    focus = [_run([[0.58, 0.3], [0.3, 0.9]], [(1, 1)])]
    candidates = {(c["kind"], c["min_size"]): c for c in choose_slide_rule(benign + focus)["candidates"]}
    top2 = candidates[("top_k", 2)]
    assert top2["min_mean_p"] == pytest.approx(max(0.5 + MARGIN, (0.5 + 0.74) / 2))  # benign top-2 is 0.3: floor 0.5
    assert top2["sensitivity"]["1"] == 1.0 and top2["localised"]["1"] == 1.0  # the top 2 include the focus
    # A false region somewhere else in a focus mosaic raises the region threshold above it.
    noisy = [_run([[0.88, 0.3, 0.3], [0.3, 0.3, 0.9]], [(1, 2)])]
    region1 = {(c["kind"], c["min_size"]): c for c in choose_slide_rule(benign + noisy)["candidates"]}[("region", 1)]
    assert region1["min_mean_p"] == pytest.approx(0.88 + MARGIN) and region1["sensitivity"]["1"] == 0.0


# -- real mosaics -----------------------------------------------------------------------------------
# 200X fields of validation patients of the whole-field model (its card's slide rule was chosen on
# mosaics of them). Benign: 14-3411, including the one field the model scores 0.54 (a suspicious
# tile that must not make a region); the focus: two fields of 14-16196 (lobular, 0.92 and 0.93).
BENIGN = ("SOB_B_TA-14-3411F-200-001.png", "SOB_B_TA-14-3411F-200-002.png", "SOB_B_TA-14-3411F-200-003.png",
          "SOB_B_TA-14-3411F-200-004.png", "SOB_B_TA-14-3411F-200-005.png", "SOB_B_TA-14-3411F-200-006.png",
          "SOB_B_TA-14-3411F-200-007.png", "SOB_B_TA-14-3411F-200-008.png", "SOB_B_TA-14-3411F-200-009.png",
          "SOB_B_TA-14-3411F-200-013.png")
FOCUS = ("SOB_M_LC-14-16196-200-009.png", "SOB_M_LC-14-16196-200-012.png")


def _fields(names, label):
    paths = [next((SHARED / "real").rglob(name), None) for name in names]
    assert all(paths), f"missing from ../shared/breakhis/real: {[n for n, p in zip(names, paths) if p is None]}"
    return pd.DataFrame({"path": [str(p) for p in paths], "label": label, "case": [parse_name(n).case for n in names]})


@pytest.fixture(scope="module")
def bundled():
    from core.model.loading import load_predictor

    return load_predictor(WHOLE_FIELD_MODEL)


def pdf_text(bundled, result) -> str:
    from pypdf import PdfReader

    from core.app.pdf_report import build_slide_report
    from core.app.registry import describe_model

    pdf = build_slide_report(result, describe_model(bundled.card), audit_id=7)
    return " ".join(" ".join(page.extract_text().split()) for page in PdfReader(io.BytesIO(pdf)).pages)


def _analyse(bundled, mosaic):
    from core.slide.predictor import SlidePredictor, TileSettings
    from core.slide.reader import open_slide

    with open_slide(mosaic.path) as slide:
        return SlidePredictor(bundled, TileSettings(top_k=0, map_side=256)).predict(slide)


def test_the_mosaic_builder_places_a_connected_focus_and_its_truth(tmp_path):
    from core.slide.reader import open_slide

    benign, focus = _fields(BENIGN[:4], "benign"), _fields(FOCUS, "malignant")
    mosaic = build_mosaic(tmp_path / "m.tif", benign, focus, focus=2, grid=(2, 3), seed=1, levels=2)
    assert mosaic.size == (5 * 700, 4 * 460) and mosaic.focus_share == pytest.approx(2 / 6)
    cells = mosaic.focus[["row", "col"]].to_numpy()
    assert np.abs(cells[0] - cells[1]).sum() == 1  # edge to edge
    assert sorted(mosaic.slots.loc[mosaic.slots.label == "benign", "path"]) == sorted(benign["path"])  # each once
    with open_slide(mosaic.path) as slide:
        assert slide.dimensions == mosaic.size and slide.scale.x == pytest.approx(0.5, rel=1e-3)
    x0, y0, x1, y1 = mosaic.focus_box
    tiles = pd.DataFrame({"x": [x0, x0 + 525, 0], "y": [y0, y0, 0], "width": 700, "height": 460})
    assert mosaic.focus_tiles(tiles).tolist() == [True, (x1 - x0) > 700, False]  # a quarter on the focus, or all
    with pytest.raises(ValueError, match="malignant fields"):
        build_mosaic(tmp_path / "x.tif", benign, None, focus=1, grid=(2, 2))


def test_a_small_focus_in_benign_tissue_is_called_malignant_on_the_focus(bundled, tmp_path):
    from core.slide.export import geojson, tiles_csv

    mosaic = build_mosaic(tmp_path / "focus.tif", _fields(BENIGN, "benign"), _fields(FOCUS, "malignant"),
                          focus=2, grid=(3, 4), seed=5, levels=2)
    assert 0.10 <= mosaic.focus_share <= 0.25
    result = _analyse(bundled, mosaic)
    assert "chosen on mosaics of validation patients" in result.call["threshold_source"]
    assert result.call["label"] == "malignant"
    truth = mosaic.focus_tiles(result.tiles)
    region = result.call["region"]
    driving = result.tiles["tile"].isin(region["tiles"]).to_numpy()
    assert driving[truth].all() and (driving & truth).sum() >= (driving & ~truth).sum()  # the focus, mostly
    feature = geojson(result)["features"][0]
    assert feature["properties"]["drives_call"] and feature["properties"]["tiles"] == region["tiles"]
    first = pd.read_csv(io.StringIO(tiles_csv(result))).head(len(region["tiles"]))
    assert first["drives_call"].all() and sorted(first["tile"]) == sorted(region["tiles"])
    text = pdf_text(bundled, result)
    assert f"Malignant - driving region 1: {len(region['tiles'])} tile(s)" in text
    assert "Tiles of the driving region" in text and f"{region['mean_p_malignant']:.2f}" in text


def test_a_benign_mosaic_is_called_benign_and_says_no_region_qualified(bundled, tmp_path):
    from core.slide.export import summary

    mosaic = build_mosaic(tmp_path / "benign.tif", _fields(BENIGN, "benign"), focus=0, grid=(3, 4), seed=2, levels=2)
    result = _analyse(bundled, mosaic)
    assert result.call["label"] == "benign" and result.call["region"] is None
    assert result.tiles["p_malignant"].max() >= 0.5  # the suspicious 0.54 field is there ...
    assert result.call["statement"].startswith("No region qualified")  # ... and did not make a region
    assert json.loads(json.dumps(summary(result), default=float))["call"]["region"] is None
    text = pdf_text(bundled, result)
    assert "Benign - no region qualified" in text and "most suspicious region (it did not qualify)" in text


def test_the_threshold_command_writes_the_rule_into_a_copy_of_the_card(tmp_path):
    import shutil

    from core.cli import main
    from core.model.folders import read_card, update_card, verify_checksum
    from core.slide.choose import validate_slide_rule

    model = shutil.copytree(WHOLE_FIELD_MODEL, tmp_path / "model")
    thresholds = dict(read_card(model)["thresholds"])
    thresholds.pop("slide_rule", None)
    update_card(model, thresholds=thresholds)
    assert slide_rule_of(read_card(model))[0] == DEFAULT_RULE
    entry = validate_slide_rule(model, SHARED / "real", repeats=1, benign_mosaics=2, grid=(3, 3))
    card_after = read_card(model)
    verify_checksum(model, card_after)  # the model file is untouched
    rule, where, validation = slide_rule_of(card_after)
    assert rule == SlideRule.from_dict(entry) and "chosen on mosaics of validation patients" in where
    on = validation["selected_on"]
    assert on["split"] == "val" and on["mosaics"] == 2 + 3 * on["malignant_patients"]
    assert validation["specificity"] == 1.0 and set(validation["sensitivity"]) >= {"1", "2", "4"}
    assert main(["slide-threshold", str(model), "--data", str(tmp_path)]) == 2  # not the model's data: a message


def test_a_model_that_scores_benign_tissue_near_certain_makes_no_slide_call():
    """No threshold keeps its benign validation tissue benign: the rule is "none", the slide is not
    called, and the statement says why and points to the most suspicious region."""
    benign = [_run([[0.996, 0.995, 0.997], [0.998, 0.996, 0.995]])]  # benign tissue scored near 1, everywhere
    focus = [_run([[0.3, 0.3], [0.999, 0.3]], [(1, 0)])]
    chosen = choose_slide_rule(benign + focus)
    assert chosen["rule"].kind == "none" and not any(c["usable"] for c in chosen["candidates"])
    assert chosen["figures"]["specificity"] == 1.0 and chosen["figures"]["sensitivity"]["all"] == 0.0
    assert chosen["figures"]["benign_max"] == pytest.approx(0.9968, abs=1e-4)  # the lowest any candidate met (4 tiles)
    none = {"thresholds": {"slide_rule": {**chosen["rule"].to_dict(),
                                          "validation": {"selected_on": {"mosaics": 2, "patients": 2},
                                                         "benign_max": chosen["figures"]["benign_max"]}}}}
    call, regions = slide_call(grid_tiles(np.array([[0.2, 0.98, 0.97], [0.2, 0.2, 0.6]])), none)
    assert call["label"] == "not called" and call["region"] is None
    assert call["statement"].startswith("No slide call") and "p(malignant) 1.00 or more under every" in call["statement"]
    assert "region 1: 3 connected tiles (tiles 1, 2, 5)" in call["statement"]  # the most suspicious, for review
    headline, _ = call_text(call)
    assert "Not called" in headline and "no slide call" in headline


def test_a_call_without_a_malignant_region_gets_its_own_note():
    """The Slide page showed "No region qualified for a malignant call" with a check mark for a model
    that makes no call (rule "none"), beside a suspicious region it names in its caption."""
    from core.slide.call import call_note

    p = np.array([[0.2, 0.98, 0.97], [0.2, 0.2, 0.6]])
    not_called, _ = slide_call(grid_tiles(p), {"thresholds": {"slide_rule": {**SlideRule(kind="none").to_dict()}}})
    note = call_note(not_called)
    assert "No region qualified" not in note and note.startswith("This model makes no slide call")
    assert "the most suspicious is region 1: 3 tile(s)" in note
    benign, _ = slide_call(grid_tiles(p), card(kind="region", min_size=4, min_mean_p=0.8))
    assert benign["label"] == "benign" and call_note(benign).startswith("No region qualified")
    malignant, _ = slide_call(grid_tiles(p), card(kind="region", min_size=2, min_mean_p=0.8))
    assert malignant["label"] == "malignant" and call_note(malignant) is None


def test_the_bundled_field_model_shows_a_slide_but_does_not_call_it(tmp_path):
    """models/default's slide rule is "none" (benign tissue of its folds' held-out patients reached
    p(malignant) 0.94+): a mosaic with a focus gets its map and tiles, "not called", and the PDF says so."""
    from core.model.loading import load_predictor
    from core.paths import DEFAULT_MODEL_DIR

    default = load_predictor(DEFAULT_MODEL_DIR)
    assert slide_rule_of(default.card)[0].kind == "none"
    mosaic = build_mosaic(tmp_path / "focus.tif", _fields(BENIGN[:6], "benign"), _fields(FOCUS, "malignant"),
                          focus=2, grid=(2, 4), seed=5, levels=2)
    result = _analyse(default, mosaic)
    assert result.call["label"] == "not called" and result.call["region"] is None
    assert result.call["tissue_tiles"] == len(result.tiles) > 8  # 224-um tiles: more than one per field
    assert result.call["statement"].startswith("No slide call") and "Read the map" in result.call["statement"]
    text = pdf_text(default, result)
    assert "Not called - no slide call for this model" in text and "no slide call for this model, none outlined" in text
    # Never calling has no figures of its own: "sensitivity 0%, specificity 100%" read as a guarantee.
    assert "sensitivity" in json.dumps(default.card["thresholds"]["slide_rule"]["validation"])
    assert result.call["validation"] == {} and "specificity" not in call_text(result.call)[1] + text
    # In QuPath, away from the app, its regions are not "Malignant" annotations and name the model.
    from core.slide.export import geojson

    features = geojson(result)["features"]
    assert features and all(f["properties"]["classification"]["name"] == "Suspicious (model, not called)"
                            and f["properties"]["slide_call"] == "not called" and f["properties"]["model_limited"]
                            and f["properties"]["model"] == default.name for f in features)
    # ...nor are its tiles plain calls of an unnamed model: every row names it, LIMITED, subtype not reliable.
    from core.slide.export import tiles_csv

    rows = pd.read_csv(io.StringIO(tiles_csv(result)))
    assert len(rows) == len(result.tiles) and set(rows["model"]) == {default.name}
    assert rows["model_limited"].all() and not rows["model_demo"].any() and not rows["subtype_reliable"].any()


def test_an_ensembles_slide_rule_is_refused_not_chosen_on_unknown_patients(tmp_path):
    """An ensemble's card has no training block: the rule's "validation" patients were rebuilt as a
    default patient-wise split, i.e. patients its members may have learnt from (the bundled field model
    learnt from all of them), and written into its card as chosen on validation."""
    from core.errors import UserInputError
    from core.model.folders import read_card, save_ensemble
    from core.slide.choose import validate_slide_rule

    ensemble = save_ensemble([WHOLE_FIELD_MODEL, WHOLE_FIELD_MODEL.parent / "default"], tmp_path / "ens")
    before = read_card(ensemble)
    with pytest.raises(UserInputError, match="does not say which data and patients it learnt from"):
        validate_slide_rule(ensemble, SHARED / "real", repeats=1, benign_mosaics=2, grid=(3, 3))
    assert read_card(ensemble) == before


def test_a_stray_fold_folder_is_not_read_as_a_fold(tmp_path):
    """fold_parts sorted RUN/fold-*/model by int(): a stray RUN/fold-old/model raised a ValueError traceback."""
    from core.errors import UserInputError
    from core.slide.choose import fold_parts

    for name in ("model", "fold-0/model", "fold-old/model"):
        (tmp_path / name).mkdir(parents=True)
    card = {"training": {"pipeline": "fields", "settings": {"folds": 2}}}
    with pytest.raises(UserInputError, match="learnt from every patient of a 2-fold cross-validation"):
        fold_parts(tmp_path / "model", card, tmp_path)
