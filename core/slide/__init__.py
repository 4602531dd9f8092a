"""core.slide: whole-slide images and large fields, analysed as tiles at the model's own scale.

reader (one SlideReader over OpenSlide, tiffslide and plain images: regions at any level, never
level 0 whole; the slide's mpp), tissue (Otsu on optical density of a low-resolution overview),
predictor (SlidePredictor: owns the tile grid from the model card's scale, batches tiles through
the shared Predictor and Grad-CAM pass, stitches p(malignant), subtype and uncertainty maps, the
top-k tiles and the slide-level call), export (heat-map PNG, tiles CSV, QuPath GeoJSON), batch
(many slides on a Dask cluster, one model load per worker).

Modules are imported directly (`from core.slide.reader import open_slide`): reading a slide
needs no TensorFlow, so this package imports nothing itself.
"""
