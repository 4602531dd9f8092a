"""The conditional GAN learns: proofs of learning under TensorFlow and JAX (the same checks), the
discriminator's reconstruction head and R1 penalty, resume and mixed precision (tests/test_gan.py has its
shapes, folders, sampling and fill)."""

import json

import numpy as np
import pytest

from core.errors import UserInputError
from core.gan.model import GanConfig, build_generator
from core.gan.patches import PatchSampler
from core.gan.sampling import generate
from core.gan.train import build_gan, train_gan, training_fields
from core.model.folders import GENERATOR, load_model_folder
from tests.gan_helpers import PAIR, TINY, compile_gan_eagerly
from tests.gan_helpers import events as _events


def _mean_colour(images):
    return np.asarray(images, np.float64).reshape(-1, 3).mean(0)


def _real_patches(data, config, subtype, n=128):
    train, _, _ = training_fields(data, config)
    return PatchSampler(train, config.image_size, [subtype]).patches(subtype, n, 0)[0]


LEARN = dict(name="learn", subtypes=PAIR, steps=150, lr_g=1e-3, lr_d=1e-3, **TINY)


def _assert_learned(data, run_dir):
    """Proof of learning: per-subtype mean-colour gap to the real patches shrinks, and by subtype;
    the discriminator's loss (the epoch's running mean) falls below its chance value (hinge: 2).
    The generator is loaded here, under TensorFlow, whichever backend trained it."""
    config = GanConfig(**LEARN)
    real = {s: _mean_colour(_real_patches(data, config, s)) for s in PAIR}
    untrained = build_generator(config)
    trained, card = load_model_folder(run_dir / "model", kind=GENERATOR)
    for subtype, other in (PAIR, PAIR[::-1]):
        before = np.linalg.norm(_mean_colour(generate(untrained, subtype, 64, size=16)) - real[subtype])
        after_colour = _mean_colour(generate(trained, subtype, 64, size=16))
        after = np.linalg.norm(after_colour - real[subtype])
        assert after < 0.5 * before, (subtype, before, after)
        assert after < np.linalg.norm(after_colour - real[other]), f"{subtype} looks like {other}"
    losses = [e["metrics"]["d_loss"] for e in _events(run_dir) if e["event"] == "step"]
    assert losses[0] > 1.95 and losses[-1] < 1.85, (losses[0], losses[-1])  # seen: 2.00 -> 1.71
    grids = sorted((run_dir / "samples").glob("step_*.png"))
    assert grids and grids[-1].name == "step_000150.png"
    return card


def test_short_training_learns_each_subtypes_colour_through_fit(synthetic_breakhis, tmp_path):
    train_gan(GanConfig(**LEARN), synthetic_breakhis, tmp_path / "run")
    assert _assert_learned(synthetic_breakhis, tmp_path / "run")["versions"]["keras_backend"] == "tensorflow"


_GAN_UNDER_JAX = """
import json, sys
import keras
from core.gan.model import GanConfig
from core.gan.train import train_gan
config = GanConfig(**json.loads(sys.argv[3]))
train_gan(config, sys.argv[1], sys.argv[2])
print(json.dumps({"backend": keras.backend.backend(), "tensorflow_loaded": "tensorflow" in sys.modules}))
"""


def test_the_same_training_under_jax_learns_by_the_same_checks(synthetic_breakhis, tmp_path):
    """The JAX train_step (stateless: both optimisers, the moving average and the seeds threaded
    through its state) in a process that cannot import TensorFlow, judged by the same checks."""
    from core.testing.jax_process import run_under_jax

    report = run_under_jax(_GAN_UNDER_JAX, synthetic_breakhis, tmp_path / "run", json.dumps(LEARN))
    assert report == {"backend": "jax", "tensorflow_loaded": False}
    card = _assert_learned(synthetic_breakhis, tmp_path / "run")
    assert card["versions"]["keras_backend"] == "jax" and card["training"]["steps"] == 150


def test_the_gan_is_a_keras_model_trained_by_fit():
    import keras

    config = GanConfig(**TINY)
    model = build_gan(config)
    assert isinstance(model, keras.Model) and model.adversarial_loss is not None
    real = np.random.default_rng(0).integers(0, 256, (16, 16, 16, 3)).astype(np.uint8)
    history = model.fit(real, np.zeros((16, 1), np.int32), batch_size=16, epochs=2, verbose=0)
    assert set(history.history) >= {"d_loss", "g_loss", "d_real", "d_fake"} and model.steps_done == 2
    assert history.history["d_rebuild"] == history.history["d_r1"] == [0.0, 0.0]  # neither on by default
    with pytest.raises(UserInputError, match="Unknown GAN loss"):
        model.compile(model.g_optimizer, model.d_optimizer, loss="l2")


_REBUILD = """
import json, sys
import keras
import numpy as np
from core.gan.model import GanConfig
from core.gan.train import build_gan
config = GanConfig(image_size=32, width=32, d_width=8, latent_dim=8, batch_size=16, mpp=4.0, holdout=0.0,
                   reconstruction=1.0)
model = build_gan(config)
y, x = np.mgrid[0:32, 0:32]
rng = np.random.default_rng(0)  # broad bands of random angle and colour: a rebuild can learn them
angles, colours = rng.uniform(0, np.pi, 64), rng.uniform(0, 1, (64, 1, 1, 3))
waves = 0.5 + 0.5 * np.sin((np.cos(angles)[:, None, None] * x + np.sin(angles)[:, None, None] * y) * 0.15)
real = (255 * waves[..., None] * colours).astype(np.uint8)
history = model.fit(real, np.zeros((64, 1), np.int32), batch_size=16, epochs=30, verbose=0).history
print(json.dumps({"backend": keras.backend.backend(), "rebuild": [float(v) for v in history["d_rebuild"]],
                  "rebuilt": list(model.discriminator([real[:2] / 127.5 - 1.0, np.zeros((2, 1), np.int32)])[1].shape)}))
"""


def test_the_discriminator_learns_to_rebuild_real_patches(capsys):
    """FastGAN's self-supervision: with --reconstruction, D also rebuilds each real patch it sees at
    half size from its coarsest features, and that L1 falls as it trains (the JAX step carries the
    head in the R1 test below)."""
    exec(compile(_REBUILD, "rebuild", "exec"), {})
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["backend"] == "tensorflow" and report["rebuilt"] == [2, 16, 16, 3]
    first, last = np.mean(report["rebuild"][:2]), np.mean(report["rebuild"][-10:])
    assert last < 0.7 * first, report["rebuild"]


_R1 = """
import json
import keras
import numpy as np
from core.gan.model import GanConfig
from core.gan.train import build_gan
real = np.random.default_rng(0).integers(0, 256, (64, 16, 16, 3)).astype(np.uint8)
norms, rebuild = {}, []
for weight in (1e-4, 10.0):  # with the reconstruction head on too: both regularisers in one step
    keras.utils.set_random_seed(0)
    config = GanConfig(image_size=16, width=32, d_width=8, latent_dim=8, batch_size=16, mpp=4.0, holdout=0.0, r1=weight,
                       reconstruction=1.0)
    history = build_gan(config).fit(real, np.zeros((64, 1), np.int32), batch_size=16, epochs=15, verbose=0).history
    norms[str(weight)] = [float(v) for v in history["d_r1"]]
    rebuild += [float(v) for v in history["d_rebuild"]]
print(json.dumps({"backend": keras.backend.backend(), "d_r1": norms, "d_rebuild": rebuild}))
"""


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_the_r1_penalty_flattens_the_discriminator_at_real_patches(backend, capsys):
    """--r1: the same run with a strong penalty ends with a smaller gradient of D at real patches than
    with a negligible one (D's gradient norm grows as it learns), under either backend's step, with
    the reconstruction head in the same step (its loss is reported, finite and non-zero)."""
    if backend == "jax":
        from core.testing.jax_process import run_under_jax

        report = run_under_jax(_R1)
    else:
        exec(compile(_R1, "r1", "exec"), {})
        report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    weak, strong = report["d_r1"]["0.0001"], report["d_r1"]["10.0"]
    assert report["backend"] == backend and weak[-1] > 10 * weak[0]  # unpenalised, D steepens
    assert np.mean(strong[-3:]) < 0.7 * np.mean(weak[-3:]), report
    assert all(0.0 < value < 2.0 for value in report["d_rebuild"])


def test_cancel_then_resume_continues_the_step_count(synthetic_breakhis, tmp_path, monkeypatch):
    import itertools

    compile_gan_eagerly(monkeypatch)  # bookkeeping over 6 steps (tests/gan_helpers.py)
    out = tmp_path / "run"
    config = GanConfig(name="resume", subtypes=("adenosis",), steps=6, **TINY)
    calls = itertools.count()
    train_gan(config, synthetic_breakhis, out, stop=lambda: next(calls) >= 3)  # checked after each step: 4
    with pytest.raises(UserInputError, match="--resume"):
        train_gan(config, synthetic_breakhis, out)
    model_dir = train_gan(GanConfig(steps=6), synthetic_breakhis, out, resume=True)
    events = _events(out)
    assert [e["step"] for e in events if e["event"] == "start"] == [0, 4]
    assert len([e for e in events if e["event"] == "step"]) == 6  # 4 + 2 steps, none repeated
    assert [e["status"] for e in events if e["event"] == "end"] == ["cancelled", "completed"]
    _, card = load_model_folder(model_dir, kind=GENERATOR)
    assert card["training"]["steps"] == 6 and card["training"]["resumed_from_step"] == 4
    assert card["subtypes"] == ["adenosis"]  # the configuration came from the run folder


def test_mixed_precision_path_trains_and_saves_float32(synthetic_breakhis, tmp_path):
    config = GanConfig(name="mixed", subtypes=("adenosis",), steps=2, precision="mixed_float16", **TINY)
    generator, card = load_model_folder(train_gan(config, synthetic_breakhis, tmp_path / "run"), kind=GENERATOR)
    assert card["precision"] == "mixed_float16"
    assert all(w.dtype == "float32" for w in generator.weights)
    assert generator.layers[-1].compute_dtype == "float32"
