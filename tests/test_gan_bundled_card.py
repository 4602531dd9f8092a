"""The bundled generator's words agree with its own measurements (models/gan-default/quality/quality.json)."""

import json

from core.model.folders import read_card, verify_checksum
from tests.app_helpers import REPO

FOLDER = REPO / "models" / "gan-default"
RAREST = ("adenosis", "phyllodes_tumor", "lobular_carcinoma")  # 1-4 training fields each


def test_the_rarest_subtypes_nuclei_are_stated_as_measured():
    """The card (shown first on the gallery) said "about a tenth of the real nuclei"; its report has
    adenosis at a sixtieth (0.3 vs 18.6 per patch) and phyllodes at a sixth."""
    report = json.loads((FOLDER / "quality" / "quality.json").read_text())["generators"]["generator"]["subtypes"]
    ratios = [report[s]["nuclei"]["ratio"] for s in RAREST]
    stated = f"{min(ratios):.0%} to {max(ratios):.0%} of the real nuclei".replace("%", " %")
    card = read_card(FOLDER)
    verify_checksum(FOLDER, card)  # the text was changed with update_card: the folder is still valid
    assert stated in card["limitations"] and "tenth" not in card["limitations"], stated
    readme = (REPO / "README.md").read_text()
    bundled = readme[readme.index("**Bundled generator**"):readme.index("**Ablation result, field recipe**")]
    assert stated in bundled.replace("\n", " ")
