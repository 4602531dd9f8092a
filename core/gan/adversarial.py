"""The GAN as one keras.Model: generator, discriminator, the generator's moving average, and the
training step that updates D, then G, then the average.

The step is written once, in keras.ops (losses, DiffAugment, the random crop of a larger canvas,
the moving average, the metrics); only the gradient bookkeeping is per backend, as in Keras' own
trainers. TensorFlow records a GradientTape and applies each optimiser. JAX has no tape and no
mutable state inside jit, so its train_step has Keras' stateless shape (state in, state out): the
same stateful code runs inside a keras.StatelessScope over the state's values, and
jax.value_and_grad differentiates it with respect to one network's weights at a time. The shape
follows keras-io's DCGAN (train_step + fit) and its JAX custom-train-step guide; Keras threads one
optimiser's state through a JAX fit, so the discriminator's optimiser state rides with the
model's non-trainable state (the `non_trainable_variables` override below).
"""

from __future__ import annotations

import keras
from keras import ops

from core.errors import UserInputError
from core.gan.augment import diff_augment
from core.gan.model import UPSCALE, noise_channels

MARGIN = 1  # noise cells drawn beyond a training patch on each side; the patch is a random crop of the larger canvas
# d_rebuild: the reconstruction's L1; d_r1: mean squared gradient norm of D at real patches (each 0 when off)
METRICS = ("d_loss", "g_loss", "d_real", "d_fake", "d_rebuild", "d_r1")


def _hinge(d_real, d_fake):
    return ops.mean(ops.relu(1.0 - d_real)) + ops.mean(ops.relu(1.0 + d_fake)), -ops.mean(d_fake)


def _non_saturating(d_real, d_fake):
    return ops.mean(ops.softplus(-d_real)) + ops.mean(ops.softplus(d_fake)), ops.mean(ops.softplus(-d_fake))


ADVERSARIAL_LOSSES = {"hinge": _hinge, "non_saturating": _non_saturating}  # -> (discriminator, generator) loss


class TextureGAN(keras.Model):
    """Generator, discriminator and the generator's moving average; one step updates D, then G.

    The generator draws a canvas MARGIN noise cells larger than the patch on every side and the
    discriminator sees a random patch-size crop of it, so patch borders are trained like interiors:
    a field-size canvas from the same network then has no seams or frame.
    """

    def __init__(self, config, generator, discriminator, ema_generator, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        self.generator, self.discriminator, self.ema_generator = generator, discriminator, ema_generator
        self.ema_generator.trainable = False
        self.ema_generator.set_weights(self.generator.get_weights())
        self.seed_generator = keras.random.SeedGenerator(config.seed)  # noise, crops and augmentation
        self.d_optimizer = None
        self.built = True  # its networks are built Functional models
        self.trackers = {name: keras.metrics.Mean(name=name) for name in METRICS}

    def compile(self, g_optimizer, d_optimizer, loss: str = "hinge", **kwargs):
        # The generator's optimiser is the model's `optimizer`: what Keras callbacks read a learning rate from.
        super().compile(optimizer=g_optimizer, **kwargs)
        if loss not in ADVERSARIAL_LOSSES:
            raise UserInputError(f"Unknown GAN loss {loss!r}; choose one of {list(ADVERSARIAL_LOSSES)}")
        self.g_optimizer, self.d_optimizer, self.adversarial_loss = g_optimizer, d_optimizer, ADVERSARIAL_LOSSES[loss]
        self.g_optimizer.build(self.generator.trainable_variables)
        self.d_optimizer.build(self.discriminator.trainable_variables)

    @property
    def non_trainable_variables(self):
        # A JAX fit carries (trainable, non-trainable, model.optimizer, metrics) state through each step
        # and writes it back at the end; the second optimiser's state has to be in one of them.
        extra = list(self.d_optimizer.variables) if self.d_optimizer is not None else []
        return super().non_trainable_variables + extra

    @property
    def metrics(self):
        return list(self.trackers.values())

    @property
    def steps_done(self) -> int:
        return int(ops.convert_to_numpy(self.g_optimizer.iterations))

    def resume_randomness(self, step: int):
        """A resumed run draws fresh randomness: the seed stream jumps to a point set by the step
        (the seed generator's state is not saved in a checkpoint)."""
        self.seed_generator.state.assign(ops.convert_to_tensor([self.config.seed, step << 16],
                                                               dtype=self.seed_generator.state.dtype))

    def call(self, inputs, training=False):
        return self.ema_generator(inputs, training=training)

    # ---------------------------------------------------------------- the step, once, in keras.ops
    def _fakes(self, labels):
        """Generated patches: a canvas with MARGIN extra cells, cropped at a random offset."""
        size, batch = self.config.image_size, ops.shape(labels)[0]
        cells = size // UPSCALE + 2 * MARGIN
        noise = keras.random.normal((batch, cells, cells, noise_channels(self.config)), seed=self.seed_generator)
        canvas = ops.cast(self.generator([noise, labels], training=True), "float32")
        offset = keras.random.randint((2,), 0, 2 * MARGIN * UPSCALE + 1, seed=self.seed_generator, dtype="int32")
        return ops.slice(canvas, (0, offset[0], offset[1], 0), (batch, size, size, 3))

    def _outputs(self, images, labels, training: bool):
        """D's (score as float32, the half-size rebuild or None without the reconstruction head)."""
        out = self.discriminator([images, labels], training=training)
        score, rebuilt = out if isinstance(out, (list, tuple)) else (out, None)
        return ops.cast(score, "float32"), rebuilt

    def _discriminate(self, images, labels):
        """D on augmented images: (score, the half-size rebuild or None, the augmented images)."""
        seen = diff_augment(images, self.seed_generator)
        return *self._outputs(seen, labels, training=True), seen

    def _score(self, images, labels):
        return self._discriminate(images, labels)[0]

    def _discriminator_loss(self, real, labels):
        d_real, rebuilt, seen = self._discriminate(real, labels)
        d_fake = self._score(self._fakes(labels), labels)
        loss, rebuild, r1 = self.adversarial_loss(d_real, d_fake)[0], ops.zeros(()), ops.zeros(())
        if rebuilt is not None:  # FastGAN's self-supervision, on real patches only: what D saw, at half size
            target = ops.average_pool(seen, 2, 2, padding="valid")
            rebuild = ops.mean(ops.abs(ops.cast(rebuilt, "float32") - target))
            loss = loss + self.config.reconstruction * rebuild
        if self.config.r1:  # R1: D flat around the real data, so it cannot push G with steep, spurious gradients
            gradient = ops.cast(self._input_gradient(seen, labels), "float32")
            r1 = ops.mean(ops.sum(ops.square(gradient), axis=(1, 2, 3)))
            loss = loss + 0.5 * self.config.r1 * r1
        return loss, (d_real, d_fake, rebuild, r1)

    def _input_gradient(self, images, labels):
        """d(sum of D's scores)/d(images): the one place the step needs a gradient inside its loss, so
        the one per-backend piece of it (a nested tape; jax.grad). D runs in inference mode here, so
        spectral norm's power iteration is not stepped twice."""
        def total(x):
            return ops.sum(self._outputs(x, labels, training=False)[0])

        if keras.backend.backend() == "jax":
            import jax

            return jax.grad(total)(images)
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(images)
            value = total(images)
        return tape.gradient(value, images)

    def _generator_loss(self, labels, d_real):
        return self.adversarial_loss(d_real, self._score(self._fakes(labels), labels))[1], ()

    def _after_step(self, d_loss, g_loss, d_real, d_fake, d_rebuild, d_r1):
        """The moving average of the generator, then the metrics."""
        # Warm-up (as in TF's ExponentialMovingAverage num_updates): early on the average follows fast.
        iterations = ops.cast(self.g_optimizer.iterations, "float32")
        decay = ops.minimum(self.config.ema, (1.0 + iterations) / (10.0 + iterations))
        for average, weight in zip(self.ema_generator.weights, self.generator.weights):
            average.assign(decay * average + (1.0 - decay) * ops.cast(weight, average.dtype))
        for name, value in zip(METRICS, (d_loss, g_loss, ops.mean(d_real), ops.mean(d_fake), d_rebuild, d_r1)):
            self.trackers[name].update_state(value)
        return {name: tracker.result() for name, tracker in self.trackers.items()}

    def train_step(self, *args):
        if keras.backend.backend() == "jax":
            return self._jax_train_step(*args)
        return self._tensorflow_train_step(*args)

    # ---------------------------------------------------------------- gradients, per backend
    def _tensorflow_train_step(self, data):
        import tensorflow as tf

        def update(network, optimizer, loss):
            with tf.GradientTape() as tape:
                value, aux = loss()
                scaled = optimizer.scale_loss(value)
            optimizer.apply(tape.gradient(scaled, network.trainable_variables), network.trainable_variables)
            return value, aux

        real, labels = data
        real = ops.cast(real, "float32") / 127.5 - 1.0  # uint8 patches -> [-1, 1]
        d_loss, (d_real, d_fake, *extras) = update(self.discriminator, self.d_optimizer,
                                                   lambda: self._discriminator_loss(real, labels))
        g_loss, _ = update(self.generator, self.g_optimizer, lambda: self._generator_loss(labels, d_real))
        return self._after_step(d_loss, g_loss, d_real, d_fake, *extras)

    def _jax_train_step(self, state, data):
        import jax

        groups = (self.trainable_variables, self.non_trainable_variables, self.optimizer.variables,
                  self.metrics_variables)  # the order of a JAX fit's state
        variables = [v for group in groups for v in group]
        values = dict(zip(map(id, variables), (x for part in state for x in part)))
        trainable = {id(v) for v in self.trainable_variables}

        def stateless(fn, values):
            """Run stateful Keras code on `values`; returns (its result, every variable's value after)."""
            with keras.StatelessScope(state_mapping=[(v, values[id(v)]) for v in variables]) as scope:
                result = fn()
            return result, {id(v): scope.get_current_value(v) for v in variables}

        def update(network, optimizer, loss, values):
            weights = network.trainable_variables

            def of_weights(weight_values, values):
                values = {**values, **dict(zip(map(id, weights), weight_values))}
                (value, aux), after = stateless(loss, values)
                # As Keras' stateless_call: what a forward pass assigns to trainable weights is dropped.
                return value, (aux, {k: x for k, x in after.items() if k not in trainable})

            grad = jax.value_and_grad(of_weights, has_aux=True)
            (value, (aux, after)), grads = grad([values[id(w)] for w in weights], values)
            values = {**values, **after}
            new_weights, new_state = optimizer.stateless_apply([values[id(v)] for v in optimizer.variables], grads,
                                                               [values[id(w)] for w in weights])
            values.update(zip(map(id, weights), new_weights))
            values.update(zip(map(id, optimizer.variables), new_state))
            return value, aux, values

        real, labels = data
        real = ops.cast(real, "float32") / 127.5 - 1.0
        d_loss, (d_real, d_fake, *extras), values = update(self.discriminator, self.d_optimizer,
                                                           lambda: self._discriminator_loss(real, labels), values)
        g_loss, _, values = update(self.generator, self.g_optimizer, lambda: self._generator_loss(labels, d_real),
                                   values)
        logs, values = stateless(lambda: self._after_step(d_loss, g_loss, d_real, d_fake, *extras), values)
        return logs, tuple([values[id(v)] for v in group] for group in groups)
