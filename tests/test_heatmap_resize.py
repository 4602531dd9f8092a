"""resize_maps (core.model.heatmap): the one bilinear resize of heat maps, checked against the
libraries it replaces on the maps' hot path (Pillow for shown maps, tf.image.resize for stitching)."""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from core.model.heatmap import resize_maps, to_heatmap


def pillow(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(cam.astype(np.float32)).resize(size[::-1], Image.Resampling.BILINEAR))


@pytest.mark.parametrize("shape,size", [((4, 4), (19, 19)), ((16, 25), (460, 700)), ((7, 7), (33, 50)),
                                        ((16, 25), (5, 9)), ((30, 12), (11, 40)), ((1, 6), (3, 4))])
def test_resize_maps_equals_pillows_bilinear_filter_enlarging_and_shrinking(shape, size):
    cam = np.random.default_rng(sum(shape)).random(shape).astype(np.float32)
    assert np.abs(resize_maps(cam, size) - pillow(cam, size)).max() < 1e-5


def test_resize_maps_enlarging_equals_tensorflow_bilinear_and_keeps_the_batch_axes():
    maps = np.random.default_rng(0).random((2, 10, 4, 4)).astype(np.float32)
    ours = resize_maps(maps, (17, 23))
    theirs = tf.image.resize(np.transpose(maps, (0, 2, 3, 1)), (17, 23), method="bilinear").numpy()
    assert ours.shape == (2, 10, 17, 23)
    assert np.abs(ours - np.transpose(theirs, (0, 3, 1, 2))).max() < 1e-5


def test_to_heatmap_spans_zero_to_one_at_the_size_asked_with_the_peak_where_the_cam_peaks():
    cam = np.zeros((8, 8), np.float32)
    cam[2, 5] = 3.0
    heatmap, note = to_heatmap(cam, (80, 120))
    assert heatmap.shape == (80, 120) and note == ""
    assert heatmap.min() == 0.0 and heatmap.max() <= 1.0 and heatmap.max() > 0.5
    y, x = np.unravel_index(np.argmax(heatmap), heatmap.shape)
    assert (y // 10, x // 15) == (2, 5)
