"""Probe: the field recipe's CV with an exponential moving average of the weights (AdamW's use_ema,
momentum 0.99: about the last 100 of a fold's ~300 steps) as the trained network, instead of the last
step's weights.

Small-batch training on few patients is noisy, and averaging the last steps' weights is a cheap, known
way to smooth it (Polyak averaging). Scratch probe: it wraps core.training.field_fit.compile_training
(Keras swaps the average into the model at the end of fit) and runs the installed recipe's CV unchanged
otherwise.

    PYTHONPATH=. python experiments/i25/weight_ema_probe.py -- <train options>
"""

import sys

import keras

import core.training.field_fit as field_fit
from core.cli import main

original = field_fit.compile_training


def compile_training(model, config, total_steps):
    original(model, config, total_steps)  # the recipe's losses; its optimizer again, with the average
    rate = field_fit.schedule(config.learning_rate or field_fit.DEFAULT_LEARNING_RATE, total_steps, config.warmup_steps)
    model.compile(optimizer=keras.optimizers.AdamW(rate, weight_decay=config.weight_decay, clipnorm=5.0,
                                                   use_ema=True, ema_momentum=0.99), loss=model.loss)
    return model


field_fit.compile_training = compile_training
sys.exit(main(sys.argv[sys.argv.index("--") + 1:]))
