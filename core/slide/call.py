"""The slide-level call: a detection rule over connected regions of suspicious tiles.

A slide holding a malignant focus is a malignant slide, however much benign tissue surrounds it,
and the pathologist must be sent to that focus. So the call is not "most tiles are malignant"
(a BreakHis field is taken inside the lesion; a slide is not) but a detection:

- a tile is suspicious when its calibrated p(malignant) >= `tile_threshold` (0.5, the image rule);
- a region is a set of suspicious tiles connected on the tile grid (4-connectivity: tiles that
  share an edge; scipy.ndimage.label on the grid's rows and columns); its size is the area the union
  of its tiles' level-0 boxes covers, in tile areas (region_size), so that overlapping tiles do not
  inflate it: neither --overlap nor the last column or row, which core.data.scale.tile_origins moves
  back onto its neighbour when the slide is not a whole number of tiles (up to 99 % the same tissue);
- rule "region": the slide is malignant when a region has size >= `min_size` AND the mean
  p(malignant) of its n = ceil(min_size) most suspicious tiles (its "core") is >= `min_mean_p`.
  The core, not the whole region's mean, so that a focus is not diluted by the tiles that straddle
  its border or by suspicious benign tiles next to it; the driving region is the qualifying one of
  highest core mean;
- rule "top_k": malignant when the mean p(malignant) of the k = `min_size` most suspicious
  tiles anywhere is >= `min_mean_p`; the driving "region" is those k tiles.

The rule and its thresholds come from card["thresholds"]["slide_rule"], chosen on mosaics of the
model's validation patients (core.slide.choose: benign fields with small malignant foci).
A card without one (older models) gets DEFAULT_RULE and the call says it was not chosen on
validation; an old card's "slide_malignant_share" (the retired majority rule) is not used.
Rule "none" is what the choice writes when no rule keeps the validation patients' benign tissue
benign (the model scores some of it near 1): the slide is then "not called", and the statement
says why and points to the map and the most suspicious region, which are still shown.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
from scipy import ndimage

from core.data.labels import pretty
from core.model.decisions import IMAGE_THRESHOLD

TILE_THRESHOLD = IMAGE_THRESHOLD  # a tile is called as an image is
RULE_KINDS = ("region", "top_k", "none")
NOT_CALLED = "not called"
FOUR_CONNECTED = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]])


@dataclasses.dataclass(frozen=True)
class SlideRule:
    kind: str = "region"
    min_size: float = 2.0  # region: tile areas; top_k: k tiles
    min_mean_p: float = 0.7
    tile_threshold: float = TILE_THRESHOLD

    def __post_init__(self):
        if self.kind not in RULE_KINDS:
            raise ValueError(f"slide rule kind must be one of {RULE_KINDS}, not {self.kind!r}")
        if self.min_size <= 0 or not 0.0 <= self.min_mean_p <= 1.0:
            raise ValueError(f"min_size > 0 and min_mean_p in [0, 1] are needed, not {self}")

    def describe(self) -> str:
        if self.kind == "none":
            return ("no slide call: no rule kept this model's benign validation tissue benign, "
                    "so suspicious tiles are shown for review but do not make a call")
        if self.kind == "top_k":
            return (f"malignant when the mean calibrated p(malignant) of the {self.min_size:g} most suspicious "
                    f"tiles is >= {self.min_mean_p:.2f}")
        return (f"malignant when a region of connected tiles with p(malignant) >= {self.tile_threshold:g} "
                f"covers >= {self.min_size:g} tile area(s) and its {self.core} most suspicious tile(s) have a mean "
                f"calibrated p(malignant) >= {self.min_mean_p:.2f}")

    @property
    def core(self) -> int:
        """Tiles whose mean p(malignant) is compared with min_mean_p (a region rule's core; top-k's k)."""
        return max(1, math.ceil(self.min_size - 1e-9))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "SlideRule":
        return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values})


DEFAULT_RULE = SlideRule()
# Below this share of validation foci caught (localised, 2-4 fields), a benign call says it rules nothing out.
WEAK_RULE = 0.5


@dataclasses.dataclass
class Region:
    """Connected suspicious tiles (or, for the top-k rule, the k most suspicious tiles)."""

    id: int  # 1.. in the order shown; the driving region (if any) is 1
    rows: list[int]  # index labels of the tiles table
    tiles: list[int]  # tile numbers (the plan's indices)
    size: float  # tile areas its tiles' boxes cover (region_size)
    mean_p: float
    max_p: float
    box: tuple[int, int, int, int]  # level-0 bounding box x0, y0, x1, y1
    qualified: bool = False
    kind: str = "region"  # "region" or "top_k"
    p_desc: list[float] = dataclasses.field(default_factory=list)  # its tiles' p(malignant), highest first
    score: float = float("nan")  # the mean its rule compares: core mean (region) or the k tiles' mean (top-k)

    def core_mean(self, n: int) -> float:
        """Mean p(malignant) of the region's n most suspicious tiles (all of them when it has fewer)."""
        return float(np.mean(self.p_desc[:max(1, n)]))

    def to_dict(self, with_tiles: bool = True) -> dict:
        values = {"id": self.id, "kind": self.kind, "size_tiles": round(self.size, 3), "n_tiles": len(self.tiles),
                  "mean_p_malignant": round(self.mean_p, 4), "max_p_malignant": round(self.max_p, 4),
                  "score": round(self.score, 4),
                  "box_level0": [int(v) for v in self.box], "qualified": self.qualified}
        return {**values, "tiles": [int(t) for t in self.tiles]} if with_tiles else values

    def describe(self) -> str:
        x0, y0, x1, y1 = self.box
        what = "the most suspicious tiles" if self.kind == "top_k" else "connected tiles"
        return (f"region {self.id}: {len(self.tiles)} {what} (tiles {_tile_list(self.tiles)}), rule score "
                f"{self.score:.2f}, mean p(malignant) {self.mean_p:.2f}, max {self.max_p:.2f}, full-resolution box "
                f"({x0}, {y0})-({x1}, {y1})")


def _tile_list(tiles, most: int = 8) -> str:
    shown = ", ".join(str(int(t)) for t in tiles[:most])
    return shown + (f", ... {len(tiles) - most} more" if len(tiles) > most else "")


def grid_positions(tiles: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(row, col) of each tile on the tile grid: the table's own columns when it has them
    (SlidePredictor writes them from the plan), else the ranks of its distinct y and x origins."""
    if {"row", "col"} <= set(tiles.columns):
        return tiles["row"].to_numpy(int), tiles["col"].to_numpy(int)
    rows = np.searchsorted(np.unique(tiles["y"].to_numpy()), tiles["y"].to_numpy())
    cols = np.searchsorted(np.unique(tiles["x"].to_numpy()), tiles["x"].to_numpy())
    return rows, cols


def tile_union(part: pd.DataFrame):
    """Shapely (Multi)Polygon, level-0 px: the union of the tiles' boxes (x, y, width, height). One geometry
    for a region's size and its exported outline (core.slide.export.region_outline)."""
    import shapely

    x, y = part["x"].to_numpy(float), part["y"].to_numpy(float)
    return shapely.union_all(shapely.box(x, y, x + part["width"].to_numpy(float), y + part["height"].to_numpy(float)))


def region_size(part: pd.DataFrame, tiles: pd.DataFrame) -> float:
    """Tile areas the tiles of `part` cover: their union's area over one tile's (the largest width x height in
    `tiles`; a slide's tiles share one size, and on a slide thinner than a tile all are clipped alike, so one
    tile is still 1). A tile counted by its box rather than as 1 (or (1 - overlap)^2) so that a near-duplicate
    edge tile, or --overlap, adds only the tissue it adds. The rule chooser (core.slide.choose) and the
    applied rule both measure regions here, so the chosen min_size means the same when applied."""
    if not len(part):
        return 0.0
    return float(tile_union(part).area / (tiles["width"].max() * tiles["height"].max()))


def _region(rows_index, tiles: pd.DataFrame, kind: str = "region") -> Region:
    part = tiles.loc[rows_index]
    p = part["p_malignant"].to_numpy(float)
    box = (int(part["x"].min()), int(part["y"].min()), int((part["x"] + part["width"]).max()),
           int((part["y"] + part["height"]).max()))
    return Region(0, [int(r) for r in rows_index], [int(t) for t in part["tile"]], region_size(part, tiles),
                  float(p.mean()), float(p.max()), box, kind=kind, p_desc=sorted(p.tolist(), reverse=True),
                  score=float(p.mean()))


def find_regions(tiles: pd.DataFrame, tile_threshold: float = TILE_THRESHOLD) -> list[Region]:
    """The connected regions of tiles with p(malignant) >= tile_threshold, highest mean first; each region's
    size by region_size (overlapping tiles, of --overlap or an edge tile moved back, are not counted twice)."""
    if not len(tiles):
        return []
    p = tiles["p_malignant"].to_numpy(float)
    rows, cols = grid_positions(tiles)
    grid = np.zeros((rows.max() + 1, cols.max() + 1), bool)
    suspicious = p >= tile_threshold
    grid[rows[suspicious], cols[suspicious]] = True
    labels, count = ndimage.label(grid, structure=FOUR_CONNECTED)
    tile_labels = np.where(suspicious, labels[rows, cols], 0)
    regions = [_region(tiles.index[tile_labels == k], tiles) for k in range(1, count + 1)]
    return sorted(regions, key=lambda r: (-r.mean_p, -r.size, r.tiles[0]))


def top_k_region(tiles: pd.DataFrame, k: int) -> Region | None:
    if not len(tiles):
        return None
    order = tiles.sort_values(["p_malignant", "tile"], ascending=[False, True]).index[:max(1, int(k))]
    return _region(order, tiles, kind="top_k")


def apply_rule(rule: SlideRule, tiles: pd.DataFrame) -> tuple[bool, list[Region]]:
    """(malignant, regions): the driving region first (id 1, qualified), then the other regions."""
    regions = find_regions(tiles, rule.tile_threshold)
    if rule.kind == "none":  # never positive; the regions in order of their most suspicious tiles, for review
        for region in regions:
            region.score = region.core_mean(1)
        regions = sorted(regions, key=lambda r: (-r.score, -r.size, r.tiles[0]))
        positive = False
    elif rule.kind == "top_k":
        top = top_k_region(tiles, int(rule.min_size))
        positive = top is not None and top.mean_p >= rule.min_mean_p
        if positive:
            top.qualified = True
            regions = [top, *regions]
    else:
        for region in regions:
            region.score = region.core_mean(rule.core)
            region.qualified = region.size >= rule.min_size - 1e-9 and region.score >= rule.min_mean_p
        regions = sorted(regions, key=lambda r: (not r.qualified, -r.score, -r.size, r.tiles[0]))
        positive = bool(regions) and regions[0].qualified
    for i, region in enumerate(regions, start=1):
        region.id = i
    return positive, regions


def slide_rule_of(card: dict) -> tuple[SlideRule, str, dict]:
    """(rule, where it comes from, its validation figures) from a model card."""
    stored = (card.get("thresholds") or {}).get("slide_rule")
    if stored:
        validation = stored.get("validation") or {}
        on = validation.get("selected_on") or {}
        where = (f"chosen on mosaics of validation patients ({on.get('mosaics', '?')} mosaics of "
                 f"{on.get('patients', '?')} patients' fields)") if on else "from the model card"
        return SlideRule.from_dict(stored), where, validation
    old = " (the card's older majority threshold is not used)" if "slide_malignant_share" in (
        card.get("thresholds") or {}) else ""
    return DEFAULT_RULE, ("default rule, not chosen on validation for this model: run `python -m core "
                          f"slide-threshold MODEL --data DIR`{old}"), {}


def slide_call(tiles: pd.DataFrame, card: dict) -> tuple[dict, list[Region]]:
    """({"label", "rule", "region", "statement", ...}, regions with the driving one first)."""
    rule, where, validation = slide_rule_of(card)
    positive, regions = apply_rule(rule, tiles)
    p = tiles["p_malignant"].to_numpy(float) if len(tiles) else np.zeros(0)
    called = p >= rule.tile_threshold
    driving = regions[0] if positive else None
    if driving is not None:
        statement = f"Malignant: driven by {driving.describe()}."
    elif rule.kind == "none":
        statement = (f"No slide call: this model scored benign tissue of patients it never saw as malignant with "
                     f"near certainty (p(malignant) {validation.get('benign_max', float('nan')):.2f} or more under "
                     "every candidate rule on its validation mosaics), so no rule could keep benign slides benign. "
                     "Read the map: "
                     + (f"the most suspicious is {regions[0].describe()}." if regions else
                        f"no tile reached p(malignant) {rule.tile_threshold:g}."))
    else:
        statement = (f"No region qualified ({rule.describe()}); the most suspicious was {regions[0].describe()}."
                     if regions else f"No region qualified: no tile reached p(malignant) {rule.tile_threshold:g}.")
        caught = (validation.get("localised") or {}).get("target")
        if caught is not None and caught < WEAK_RULE:
            statement += (f" This model's rule caught {caught:.0%} of the 2-4-field foci of its validation mosaics: "
                          "a benign call does not rule out a malignant focus; read the map.")
    # A rule that never calls has no figures of its own: "sensitivity 0 %, specificity 100 %" is what never
    # calling gets by definition, and beside "benign tissue reached p 0.94" read as a guarantee.
    figures = {} if rule.kind == "none" else {k: validation[k] for k in ("sensitivity", "specificity") if k in validation}
    label = "malignant" if positive else NOT_CALLED if rule.kind == "none" else "benign"
    call = {"label": label, "rule": rule.describe(), "rule_params": rule.to_dict(),
            "threshold_source": where, "validation": figures, "statement": statement,
            "region": driving.to_dict() if driving is not None else None,
            "closest_region": None if driving is not None or not regions else regions[0].to_dict(with_tiles=False),
            "regions": len([r for r in regions if r.kind == "region"]),
            "tissue_tiles": int(len(p)), "malignant_tiles": int(called.sum()),
            "malignant_share": float(called.mean()) if len(p) else 0.0,
            "mean_p_malignant": float(p.mean()) if len(p) else float("nan")}
    return call, regions


def _region_text(region: dict) -> str:
    """A region of a call (Region.to_dict, with or without its tiles) in a few words."""
    n = region.get("n_tiles", len(region.get("tiles") or []))
    return (f"region {region['id']}: {n} tile(s), score {region['score']:.2f}, "
            f"mean p(malignant) {region['mean_p_malignant']:.2f}")


def call_note(call: dict) -> str | None:
    """The sentence under a call that found no malignant region (None when one drove it): a model that
    makes no call says so and names its most suspicious region; a benign call says none qualified."""
    if call.get("region"):
        return None
    closest = call.get("closest_region")
    if call["label"] == NOT_CALLED:
        return ("This model makes no slide call (why below); read the map: "
                + (f"the most suspicious is {_region_text(closest)}, listed first." if closest else
                   "no tile reached its tile threshold."))
    return "No region qualified for a malignant call; the most suspicious tiles are still listed first."


def tile_threshold(call: dict) -> float:
    """The p(malignant) at which a call's tiles count as malignant (its rule's; TILE_THRESHOLD by default)."""
    return (call.get("rule_params") or {}).get("tile_threshold", TILE_THRESHOLD)


def call_text(call: dict) -> tuple[str, str]:
    """(headline in Markdown, the rule and the region in a sentence) of a slide call."""
    region = call.get("region")
    if region:
        where = f"driven by {_region_text(region)} (outlined on the map; first in the downloads)"
    elif call["label"] == NOT_CALLED:
        where = "this model makes no slide call (why below); read the map"
    else:
        where = "no region qualified"
    headline = (f"Slide call: **{pretty(call['label'])}** · {where} · {call['malignant_tiles']} of "
                f"{call['tissue_tiles']} tissue tiles have p(malignant) >= "
                f"{tile_threshold(call):g}.")
    validation = call.get("validation") or {}
    figures = ""
    if validation.get("sensitivity"):
        sens = validation["sensitivity"]
        figures = (f" On validation mosaics: sensitivity {', '.join(f'{sens[k]:.0%} ({k}-field foci)' for k in sens if k.isdigit())}"
                   f", specificity {validation.get('specificity', float('nan')):.0%} (benign only).")
    return headline, f"{call['statement']} Rule: {call['rule']} ({call['threshold_source']}).{figures}"
