"""The GAN gallery's logic without Streamlit (core.gan.gallery), on the bundled generator's card and checks."""

import io
import zipfile

import numpy as np
from PIL import Image

from core.gan import gallery
from core.model.folders import read_card
from core.paths import MODELS_DIR

BUNDLED = MODELS_DIR / "gan-default"


def test_every_downloaded_png_and_the_zip_say_the_images_are_synthetic():
    """The zip held bare PNGs marked only by a SYN_ prefix: a renamed file said nothing. Each PNG now carries a
    text chunk naming its generator and "not patient tissue", and the zip a README.txt with the card's figures."""
    card = read_card(BUNDLED)
    batches = {"adenosis": np.zeros((2, 8, 8, 3), np.uint8), "ductal_carcinoma": np.full((1, 8, 8, 3), 200, np.uint8)}
    archive = zipfile.ZipFile(io.BytesIO(gallery.sample_zip(batches, card, seed=3)))
    pngs = [name for name in archive.namelist() if name.endswith(".png")]
    assert len(pngs) == 3 and all(name.startswith("SYN_") for name in pngs)
    for name in pngs:
        text = Image.open(io.BytesIO(archive.read(name))).text
        for key in ("Description", "Comment"):
            assert "SYNTHETIC" in text[key] and f"'{card['name']}'" in text[key] and "Not patient tissue" in text[key]
    readme = archive.read("README.txt").decode()
    assert readme.startswith("SYNTHETIC IMAGES - NOT PATIENT TISSUE") and card["name"] in readme and "seed 3" in readme
    assert "6000 training steps on 353 real images" in readme  # the card's figures, as the gallery states them
    assert "benign 0.65, malignant 0.90" in readme and "all goals met: no" in readme
