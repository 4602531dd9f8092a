"""Probe: the small CNN on tiles at one physical scale, aggregated per image, vs the whole field.

    nice -n 10 python experiments/i18/probe_tiles.py --tile 96 --mpp 1.5625 --protocols cv2 [--epochs 30]

Per protocol: train on random tiles of the training patients' fields (k per image per epoch, the
project's augmentation), recalibrate BatchNorm, fit temperatures on the validation patients'
image-level (tile-mean) outputs, score the test patients' images (mean of all grid tiles).
Saves each protocol's calibrated image-level outputs for the fusion and referral probes.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from common import CACHE, RESULTS, fields, frame, protocols, record, score_tables, summarise

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from core.data.augment import augment  # noqa: E402
from core.data.balance import class_weights  # noqa: E402
from core.data.labels import CLASSES, STAGE1_OUTPUT, STAGE2_OUTPUTS, SUBTYPES, SUBTYPES_BY_CLASS  # noqa: E402
from core.data.pipeline import targets_and_weights  # noqa: E402
from core.model.calibration import apply_temperature, fit_temperature  # noqa: E402
from core.model.classifier import build_classifier  # noqa: E402
from tiling import aggregate, cut_tiles, pad_to  # noqa: E402
from core.evaluation.calibration_effect import head_targets  # noqa: E402
from core.training.fit import compile_model, follow_batch_statistics  # noqa: E402


def random_tiles(images, tile, k, rng):
    out = np.empty((len(images) * k, tile, tile, 3), np.uint8)
    for i, field in enumerate(images):
        field = pad_to(field, tile)
        h, w = field.shape[:2]
        for j in range(k):
            y, x = rng.integers(0, h - tile + 1), rng.integers(0, w - tile + 1)
            out[i * k + j] = field[y:y + tile, x:x + tile]
    return out


def grid_outputs(model, images, tile, stride, batch=128):
    tiles, counts = [], []
    for field in images:
        t, _ = cut_tiles(field, tile, stride)
        tiles.append(t)
        counts.append(len(t))
    tiles = np.concatenate(tiles).astype(np.float32)
    forward = tf.function(lambda x: model(x, training=False))
    outs = [{k: v.numpy() for k, v in forward(tf.constant(tiles[i:i + batch])).items()}
            for i in range(0, len(tiles), batch)]
    per_tile = {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}
    return aggregate(per_tile, counts)


def recalibrate_bn(model, tiles, batch=64, most=40):
    layers = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
    momenta = [l.momentum for l in layers]
    order = np.random.default_rng(1).permutation(len(tiles))[: batch * most]
    for used, start in enumerate(range(0, len(order), batch), start=1):
        for l in layers:
            l.momentum = 1.0 - 1.0 / used
        model(tf.constant(tiles[order[start:start + batch]].astype(np.float32)), training=True)
    for l, m in zip(layers, momenta):
        l.momentum = m


def calibrate(outputs_val, rows_val):
    temps = {}
    for head, (own, truth) in head_targets(rows_val.reset_index(drop=True), "hierarchical").items():
        if own.any():
            temps[head] = fit_temperature(outputs_val[head][own], truth)
    return temps


def to_frame(rows, outputs, temps):
    o = {k: apply_temperature(v, temps.get(k, 1.0)) for k, v in outputs.items()}
    p_class = o[STAGE1_OUTPUT]
    within = np.zeros((len(rows), len(SUBTYPES)))
    for c in CLASSES:
        for j, s in enumerate(SUBTYPES_BY_CLASS[c]):
            within[:, SUBTYPES.index(s)] = o[STAGE2_OUTPUTS[c]][:, j]
    return frame(rows, p_class, within), o


def train_one(table, scaled, args, seed=0, init_weights=None, log=None):
    keras.utils.set_random_seed(seed)
    train = table[table["split"] == "train"].reset_index(drop=True)
    images = [scaled[os.path.basename(p)] for p in train["path"]]
    targets, weights = targets_and_weights(train, "hierarchical", class_weights(train))
    model, _ = build_classifier("small_cnn", "hierarchical", weights=None, input_size=args.input or args.tile,
                                head_units=args.units, branch_units=args.units, dropout=0.5, l2=1e-4)
    if init_weights is not None:
        init_weights(model)
    steps_per_epoch = int(np.ceil(len(train) * args.k / args.batch))
    schedule = keras.optimizers.schedules.CosineDecay(args.lr, steps_per_epoch * args.epochs, alpha=0.05)
    compile_model(model, "hierarchical", schedule)
    follow_batch_statistics(model, steps_per_epoch)
    rng = np.random.default_rng(seed)
    size = args.input or args.tile
    for epoch in range(args.epochs):
        tiles = random_tiles(images, args.tile, args.k, rng)
        rep = lambda d: {k: np.repeat(v, args.k, axis=0) for k, v in d.items()}
        ds = tf.data.Dataset.from_tensor_slices((tiles, rep(targets), rep(weights))).shuffle(len(tiles), seed=epoch)
        ds = ds.batch(args.batch)
        seeds = tf.data.Dataset.random(seed=seed * 1000 + epoch).batch(2)

        def aug(batch, s):
            x = tf.cast(batch[0], tf.float32)
            x = augment(x, s, args.strength, args.zoom)
            if size != args.tile:
                x = tf.image.resize(x, (size, size), antialias=True)
            return x, batch[1], batch[2]

        ds = tf.data.Dataset.zip(ds, seeds).map(aug, num_parallel_calls=2).prefetch(2)
        history = model.fit(ds, epochs=1, verbose=0)
        if log and (epoch % 5 == 4 or epoch == args.epochs - 1):
            print(f"   epoch {epoch + 1}: loss {history.history['loss'][-1]:.3f}", file=log, flush=True)
    clean = random_tiles(images, args.tile, 2, np.random.default_rng(7))
    if size != args.tile:
        clean = tf.image.resize(clean.astype(np.float32), (size, size), antialias=True).numpy()
    recalibrate_bn(model, clean)
    return model


def evaluate(model, table, scaled, args):
    out = {}
    for split in ("val", "test"):
        rows = table[table["split"] == split].reset_index(drop=True)
        images = [scaled[os.path.basename(p)] for p in rows["path"]]
        if args.input and args.input != args.tile:
            raise NotImplementedError
        out[split] = (rows, grid_outputs(model, images, args.tile, args.stride or args.tile // 2))
    temps = calibrate(out["val"][1], out["val"][0])
    val_frame, val_o = to_frame(*out["val"], temps)
    test_frame, test_o = to_frame(*out["test"], temps)
    return val_frame, test_frame, val_o, test_o, temps


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tile", type=int, default=96)
    parser.add_argument("--input", type=int, default=0)
    parser.add_argument("--mpp", type=float, default=1.5625)
    parser.add_argument("--k", type=int, default=2, help="random tiles per image per epoch")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--units", type=int, default=256)
    parser.add_argument("--strength", type=float, default=2.0)
    parser.add_argument("--zoom", type=float, default=1.0)
    parser.add_argument("--stride", type=int, default=0)
    parser.add_argument("--protocols", default="cv2")
    parser.add_argument("--name", default="")
    args = parser.parse_args()
    name = args.name or f"tiles{args.tile}@{args.mpp:g}-k{args.k}-e{args.epochs}"
    proto = protocols(args.protocols)
    scaled = fields(proto[0][1], args.mpp)
    per, start = {}, time.time()
    saved = {}
    log = open(RESULTS / f"{name}.log", "a") if RESULTS.exists() else None
    for pname, table in proto:
        t0 = time.time()
        model = train_one(table, scaled, args, log=log)
        val_frame, test_frame, val_o, test_o, temps = evaluate(model, table, scaled, args)
        per[pname] = score_tables(test_frame, val_frame)
        per[pname]["train_seconds"] = time.time() - t0
        saved[pname] = {"val": val_frame, "test": test_frame}
        print(f"  {pname}: subF1 {per[pname]['image_subtype_macro_f1']['value']:.3f} bal "
              f"{per[pname]['image_stage1_balanced_accuracy']['value']:.3f} ({time.time() - t0:.0f} s) T={temps}",
              flush=True)
        model.save_weights(str(CACHE / f"{name}-{pname}.weights.h5"))
    for pname, parts in saved.items():
        for split, f in parts.items():
            f.to_csv(RESULTS / f"pred-{name}-{pname}-{split}.csv", index=False)
    record(name, summarise(per), time.time() - start, vars(args))


if __name__ == "__main__":
    main()
