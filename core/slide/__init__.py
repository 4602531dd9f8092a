"""core.slide: whole-slide images and large fields, analysed as tiles at the model's own scale.

reader (one SlideReader over OpenSlide, tiffslide and plain images: regions at any level, never
level 0 whole; the slide's mpp), tissue (Otsu on optical density of a low-resolution overview),
predictor (SlidePredictor: owns the tile grid from the model card's scale, batches tiles through
the shared Predictor and Grad-CAM pass, stitches p(malignant), subtype and uncertainty maps, the
top-k tiles), call (the slide call: connected regions of suspicious tiles, the driving region),
export (heat-map PNG, tiles CSV, QuPath GeoJSON, the driving region first), batch (many slides on
a Dask cluster, one model load per worker), mosaic (test slides of real fields with a malignant
focus and its ground truth), choose (the slide rule chosen on mosaics of validation patients, or
of a cross-validation's held-out patients), commands (`python -m core slide / slides / slide-threshold`).

Modules are imported directly (`from core.slide.reader import open_slide`): reading a slide
needs no TensorFlow, so this package imports nothing itself.
"""
