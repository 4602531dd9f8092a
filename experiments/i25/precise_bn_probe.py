"""Issue 25 probe (archived, not part of the project): batch-norm statistics re-estimated after training
("precise BN"), on a fields cross-validation's saved fold models.

Why: the recipe trains with batch-norm momentum 0.9, so a saved model's inference statistics are those of
its last ~10 training batches: random 55-100 % crops under H&E jitter, brightness/contrast and noise, under
the weights of those steps. It predicts from other inputs: 224-px crops of the un-jittered field (the
train/test discrepancy of Touvron et al. 2019, "FixRes"; Summers & Dinneen 2019 and Izmailov et al. 2018
re-estimate the statistics after training for the same reason). Each fold model's statistics are
re-estimated as a cumulative average over shuffled batches of its OWN training fields (nothing held out is
seen), (a) under the prediction views, (b) under fresh training augmentation (the control: is it the views
or just a precise average?); its subtype heads are then refitted on the new features as --refit-subtypes
does, and its held-out patients scored. Prints pooled out-of-fold figures with 95 % patient-bootstrap
intervals for the saved models and each arm.

    PYTHONPATH=. python experiments/i25/precise_bn_probe.py RUN ../shared/breakhis/real
"""

import json
import sys

import keras
import numpy as np

from core.data.keras_augment import FieldAugmentation
from core.training.field_fit import predict_views, view_batches
from core.training.field_run import scored_rows, view_spec
from core.training.head_refit import refit_subtype_heads
from core.training.rescore import pooled_figures, saved_cv, saved_folds

FIELDS_PER_BATCH = 16  # 16 fields x 24 views = 384 views per batch-norm batch
AUGMENTED_PASSES = 6  # (b): each training field seen under this many fresh augmentations


def batch_norms(model):
    return [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]  # all top-level here


def reestimate(model, batches) -> int:
    """Cumulative average of the batch statistics (momentum i/(i+1) at batch i), from zero: the mean over
    all batches, as torch.optim.swa_utils.update_bn computes it. Dropout sits after every batch norm here."""
    layers = batch_norms(model)
    saved = [layer.momentum for layer in layers]
    for layer in layers:
        layer.moving_mean.assign(np.zeros(layer.moving_mean.shape, "float32"))
        layer.moving_variance.assign(np.zeros(layer.moving_variance.shape, "float32"))
    count = 0
    for count, views in enumerate(batches, start=1):
        for layer in layers:
            layer.momentum = (count - 1) / count
        model(views, training=True)
    for layer, momentum in zip(layers, saved):
        layer.momentum = momentum
    return count


def prediction_view_batches(fields, spec, magnifications, seed):
    order = np.random.default_rng(seed).permutation(len(fields))  # a batch of one patient would bias the variance
    mags = None if magnifications is None else magnifications.iloc[order]
    for views, n in view_batches(fields[order], spec, mags, batch_fields=FIELDS_PER_BATCH):
        if n == FIELDS_PER_BATCH:  # the last, padded batch would count one field many times
            yield views


def augmented_batches(fields, config, size, seed):
    augment = FieldAugmentation(size, config.crop_min, config.augment_strength, seed)
    rng = np.random.default_rng(seed)
    per_batch = config.batch_size  # the training batches' size, one view per field as in training
    for _ in range(AUGMENTED_PASSES):
        order = rng.permutation(len(fields))
        for start in range(0, len(order) - per_batch + 1, per_batch):
            yield augment(fields[order[start:start + per_batch]], training=True)


def pooled(rows, parts) -> dict:
    figures = pooled_figures(rows, parts)
    ci = figures["intervals"]["image"]
    out = {}
    for key in ("stage1_balanced_accuracy", "stage1_auc", "subtype_macro_f1", "patient_stage1_accuracy"):
        out[key] = round(float(figures[key]), 4)
        if key in ci:
            out[key + "_95ci"] = [round(float(ci[key][b]), 3) for b in ("low", "high")]
    return out


def main(run, data):
    config, table, fields = saved_cv(run, data)
    spec, mags, subtypes = view_spec(config), table["magnification"], table["subtype"]
    arms = {"saved": [], "views": [], "augmented": []}
    order = []
    for k, (held, seen, model) in enumerate(saved_folds(run, config, table)):
        weights = model.get_weights()
        arms["saved"].append(predict_views(model, fields[held], spec, magnifications=mags.iloc[held]))
        for arm in ("views", "augmented"):
            model.set_weights(weights)
            if arm == "views":
                n = reestimate(model, prediction_view_batches(fields[seen], spec, mags.iloc[seen], config.seed + k))
            else:
                n = reestimate(model, augmented_batches(fields[seen], config, spec.input_size, config.seed + k))
            refit_subtype_heads(model, fields[seen], subtypes.iloc[seen], spec, mags.iloc[seen])
            arms[arm].append(predict_views(model, fields[held], spec, magnifications=mags.iloc[held]))
            print(f"fold {k} {arm}: {n} batches", flush=True)
        order.append(held)
    rows = scored_rows(table.iloc[np.concatenate(order)], "test", f"patient-wise {config.folds}-fold CV, pooled")
    result = {"images": len(rows), "patients": int(rows["case"].nunique())}
    result.update({arm: pooled(rows, parts) for arm, parts in arms.items()})
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
