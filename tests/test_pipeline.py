"""The tf.data pipeline: shapes, value ranges, targets, sample weights, augmentation, HED jitter."""

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from PIL import Image

from core.data.augment import augment, hed_jitter, hed_to_rgb, rgb_to_hed
from core.data.breakhis import index_folder
from core.data.labels import CLASS_OF_SUBTYPE, SUBTYPES, SUBTYPES_BY_CLASS
from core.data.pipeline import decode_image, make_dataset, targets_and_weights
from core.data.selection import select_magnification

SIZE = 64


@pytest.fixture(scope="module")
def table(synthetic_breakhis):
    return index_folder(synthetic_breakhis).images


def test_batches_have_model_shapes_dtypes_and_ranges(table):
    dataset = make_dataset(table, "hierarchical", batch_size=16, input_size=SIZE)
    images, targets, weights = next(iter(dataset))
    assert images.shape == (16, SIZE, SIZE, 3) and images.dtype == tf.float32
    assert 0.0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 255.0
    assert float(tf.reduce_max(images)) > 100.0  # pixels stay 0..255, not rescaled to 0..1
    assert set(targets) == {"stage1", "benign_subtype", "malignant_subtype"} == set(weights)
    assert targets["stage1"].shape == (16, 2) and targets["malignant_subtype"].shape == (16, 4)
    np.testing.assert_allclose(tf.reduce_sum(targets["stage1"], axis=1), 1.0)
    assert sum(int(b.shape[0]) for b, _, _ in dataset) == len(table)


def test_untouched_pipeline_equals_the_shared_preprocessing(table):
    """The pipeline must feed the model exactly what prediction does (core.data.preprocess)."""
    from core.data.preprocess import to_model_input

    images, _, _ = next(iter(make_dataset(table.iloc[:3], batch_size=3, input_size=SIZE)))
    rgb = np.asarray(Image.open(table["path"].iloc[1]).convert("RGB"))
    np.testing.assert_allclose(images[1].numpy(), to_model_input(rgb, SIZE).numpy(), atol=1e-4)


def test_hierarchical_targets_and_zero_weight_for_the_other_class(table):
    targets, weights = targets_and_weights(table, "hierarchical")
    malignant = (table["label"] == "malignant").to_numpy()
    np.testing.assert_array_equal(targets["stage1"].argmax(1), malignant.astype(int))
    np.testing.assert_array_equal(weights["benign_subtype"], (~malignant).astype(np.float32))
    np.testing.assert_array_equal(weights["malignant_subtype"], malignant.astype(np.float32))
    np.testing.assert_array_equal(weights["stage1"], np.ones(len(table), np.float32))
    for i, subtype in enumerate(table["subtype"]):
        label = CLASS_OF_SUBTYPE[subtype]
        head = "benign_subtype" if label == "benign" else "malignant_subtype"
        assert targets[head][i].argmax() == SUBTYPES_BY_CLASS[label].index(subtype)


def test_subtype_weights_multiply_and_flat_targets(table):
    weights_in = {s: float(i + 1) for i, s in enumerate(SUBTYPES)}
    _, weights = targets_and_weights(table, "hierarchical", weights_in)
    expected = table["subtype"].map(weights_in).to_numpy(np.float32)
    np.testing.assert_allclose(weights["stage1"], expected)
    benign = (table["label"] == "benign").to_numpy()
    np.testing.assert_allclose(weights["benign_subtype"], np.where(benign, expected, 0.0))
    targets, flat_weights = targets_and_weights(table, "flat", weights_in)
    assert set(targets) == {"subtype8"} and targets["subtype8"].shape == (len(table), 8)
    assert [SUBTYPES[i] for i in targets["subtype8"].argmax(1)] == table["subtype"].tolist()
    np.testing.assert_allclose(flat_weights["subtype8"], expected)
    with pytest.raises(ValueError, match="unknown subtype"):
        targets_and_weights(table, "hierarchical", {"not_a_subtype": 2.0})


def test_dataset_sample_weights_follow_the_rows(table):
    _, targets, weights = next(iter(make_dataset(table, batch_size=96, input_size=SIZE, cache=False)))
    malignant = targets["stage1"].numpy().argmax(1) == 1
    np.testing.assert_array_equal(weights["benign_subtype"].numpy() == 0, malignant)
    np.testing.assert_array_equal(weights["malignant_subtype"].numpy() == 0, ~malignant)


def test_augmentation_changes_images_but_keeps_shape_and_range(samples_dir):
    real = index_folder(samples_dir).images.iloc[:16]  # distinct real fields of view
    plain, _, _ = next(iter(make_dataset(real, batch_size=16, input_size=SIZE)))
    dataset = make_dataset(real, batch_size=16, input_size=SIZE, augment=True, training=False)
    first, _, _ = next(iter(dataset))
    second, _, _ = next(iter(dataset))  # a new epoch draws new augmentations
    assert first.shape == plain.shape and first.dtype == tf.float32
    assert 0.0 <= float(tf.reduce_min(first)) and float(tf.reduce_max(first)) <= 255.0
    assert float(tf.reduce_mean(tf.abs(first - plain))) > 2.0
    assert float(tf.reduce_mean(tf.abs(first - second))) > 2.0
    # Content is kept: up to a symmetry of the square, each image still matches its own original.
    for augmented, original, other in zip(first.numpy(), plain.numpy(), np.roll(plain.numpy(), 1, axis=0)):
        assert _best_symmetry_correlation(augmented, original) > 0.6
        assert _best_symmetry_correlation(augmented, other) < 0.3


def _best_symmetry_correlation(a, b):
    grey_a, grey_b = a.mean(-1), b.mean(-1)
    candidates = [np.rot90(m, k) for m in (grey_b, grey_b.T) for k in range(4)]
    return max(np.corrcoef(grey_a.ravel(), c.ravel())[0, 1] for c in candidates)


def test_augment_single_image_symmetries_and_per_image_draws():
    image = tf.random.stateless_uniform([SIZE, SIZE, 3], seed=[1, 2], maxval=255.0)
    out = augment(image, tf.constant([3, 4]))
    assert out.shape == image.shape
    batch = tf.repeat(image[None], 8, axis=0)
    outs = augment(batch, tf.constant([5, 6])).numpy()
    assert len({round(float(o.mean()), 3) for o in outs}) > 1  # each image gets its own draw
    # Same seed, same result (stateless randomness: reproducible runs).
    np.testing.assert_array_equal(augment(batch, tf.constant([5, 6])).numpy(), outs)


def test_zoom_crops_vary_the_scale_and_strength_zero_keeps_the_colours():
    values = np.linspace(0.0, 255.0, SIZE, dtype=np.float32)
    ramp = tf.constant(np.broadcast_to(values[None, None, :, None], (8, SIZE, SIZE, 3)).copy())  # varies along x
    geometry_only = augment(ramp, tf.constant([1, 2]), strength=0.0).numpy()
    for image in geometry_only:  # a flip or rotation of the ramp: the same values, nothing else
        np.testing.assert_allclose(np.sort(image[..., 0].ravel()), np.sort(ramp[0, ..., 0].numpy().ravel()), atol=1e-3)
    zoomed = augment(ramp, tf.constant([1, 2]), strength=0.0, zoom=0.5).numpy()
    spans = zoomed[..., 0].max(axis=(1, 2)) - zoomed[..., 0].min(axis=(1, 2))
    assert (spans >= 0.5 * 255 - 2).all() and (spans <= 255 + 1e-3).all()  # crops of half the field or more
    assert (spans < 0.98 * 255).mean() > 0.5  # and most images are really cropped
    assert zoomed.shape == ramp.shape


def test_hed_round_trip_and_jitter():
    rgb = tf.random.stateless_uniform([2, 16, 16, 3], seed=[0, 1], maxval=255.0)
    np.testing.assert_allclose(hed_to_rgb(rgb_to_hed(rgb)).numpy(), rgb.numpy(), atol=0.05)
    identity = hed_jitter(rgb, tf.ones([2, 3]), tf.zeros([2, 3]))
    np.testing.assert_allclose(identity.numpy(), rgb.numpy(), atol=0.05)
    # More haematoxylin makes a pink pixel bluer/darker, not brighter.
    pink = tf.constant([[[[230.0, 150.0, 200.0]]]])
    darker = hed_jitter(pink, tf.constant([[1.5, 1.0, 1.0]]), tf.zeros([1, 3]))
    assert float(tf.reduce_sum(darker)) < float(tf.reduce_sum(pink))
    assert float(darker[0, 0, 0, 0]) < 230.0


def test_decode_png_jpeg_and_tiff(tmp_path):
    rgb = (np.arange(40 * 50 * 3) % 251).astype(np.uint8).reshape(40, 50, 3)
    for name in ("a.png", "b.tif"):
        Image.fromarray(rgb).save(tmp_path / name)
    Image.fromarray(rgb).convert("L").save(tmp_path / "grey.jpg")
    np.testing.assert_array_equal(decode_image(tf.constant(str(tmp_path / "a.png"))).numpy(), rgb)
    np.testing.assert_array_equal(decode_image(tf.constant(str(tmp_path / "b.tif"))).numpy(), rgb)
    grey = decode_image(tf.constant(str(tmp_path / "grey.jpg"))).numpy()
    assert grey.shape == (40, 50, 3)


def test_magnification_filter(table):
    only = select_magnification(table, "40X")
    assert len(only) > 0 and set(only["magnification"]) == {"40X"}
    assert len(select_magnification(table, "40x")) == len(select_magnification(table, 40)) == len(only)
    assert len(select_magnification(table, "all")) == len(table)
    with pytest.raises(ValueError, match="magnification"):
        select_magnification(table, "35X")
    images, _, _ = next(iter(make_dataset(only, batch_size=64, input_size=SIZE)))
    assert images.shape[0] == len(only)


def test_synthetic_rows_and_bad_tables(table, tmp_path):
    synthetic = table.iloc[:2].assign(synthetic=True)
    images, _, _ = next(iter(make_dataset(synthetic, batch_size=2, input_size=SIZE)))
    assert images.shape == (2, SIZE, SIZE, 3)
    with pytest.raises(ValueError, match="No images"):
        make_dataset(table.iloc[:0])
    with pytest.raises(ValueError, match="Unknown subtype"):
        make_dataset(pd.DataFrame({"path": ["x.png"], "subtype": ["cat"]}))


def test_file_cache_and_training_shuffle(table, tmp_path):
    cached = make_dataset(table, batch_size=96, input_size=SIZE, training=True, cache=str(tmp_path / "c" / "cache"))
    first = next(iter(cached))[1]["stage1"].numpy()
    second = next(iter(cached))[1]["stage1"].numpy()
    assert list((tmp_path / "c").glob("cache*"))  # the file cache was written
    assert first.sum(0).tolist() == second.sum(0).tolist()  # same images each epoch ...
    order = make_dataset(table, batch_size=96, input_size=SIZE, training=True)
    labels = [next(iter(order))[1]["stage1"].numpy().argmax(1) for _ in range(2)]
    assert not np.array_equal(labels[0], labels[1])  # ... in a new order


def test_hed_jitter_uses_the_same_stain_model_as_the_histology_check(samples_dir):
    """One stain model: the augmentation's HED space is core.data.stain's colour deconvolution."""
    from core.data.images import load_image
    from core.data.stain import hed_concentrations

    rgb = load_image(next(samples_dir.rglob("*.png")), check_histology=False).rgb[:64, :64]
    np.testing.assert_allclose(np.asarray(rgb_to_hed(rgb)), hed_concentrations(rgb), atol=1e-4)
