"""How fast generators draw field-size images on this machine (issue 26's goal: 64 in <= 10 s on 2 CPU cores).

    python bench/gan_sample.py [--model DIR ...] [--n 64] [--out bench/results/gan_sample.json] [--smoke]

For the bundled generator (models/gan-default), any --model folders, and the texture GAN at its
default settings with and without fine noise (built untrained: drawing costs the same whatever
the weights), each draws n field-size images of one subtype through `Generator.fields` (the
gallery's and `gan sample`'s path: noise, batches of 16, uint8). Baseline in the same run: the
bare network call on the same noise in one batch, without the sampling code around it. Best of
`--rounds` after one warm-up; seconds, images per second and the ratio to the baseline.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from common import add_smoke, emit  # noqa: E402 - bench/common.py (the script's own folder)

from core.gan.model import GanConfig, build_generator  # noqa: E402
from core.gan.sampling import Generator, field_px  # noqa: E402
from core.paths import DEFAULT_GENERATOR_DIR  # noqa: E402

GOAL_S, GOAL_N = 10.0, 64


def _best(fn, rounds: int) -> float:
    fn()  # warm-up: graph tracing and first allocations
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(generator: Generator, n: int, rounds: int) -> dict:
    subtype = generator.subtypes[0]
    [noise] = generator.field_noise(n, seed=0, chunk=n)  # all n in one chunk: the bench times one call
    labels = np.zeros((n, 1), np.int32)
    sampled = _best(lambda: generator.fields(subtype, n, seed=0, noise=noise), rounds)
    bare = _best(lambda: np.asarray(generator.network([noise, labels], training=False)), rounds)
    image = generator.fields(subtype, 1, seed=0)[0]
    return {"field_px": [int(image.shape[1]), int(image.shape[0])], "n": n, "seconds": round(sampled, 3),
            "images_per_s": round(n / sampled, 1), "bare_forward_s": round(bare, 3),
            "ratio_to_bare": round(sampled / bare, 2), "meets_goal": bool(sampled * GOAL_N / n <= GOAL_S)}


def _texture(fine_noise: bool, smoke: bool) -> Generator:
    config = GanConfig(fine_noise=fine_noise, **(dict(width=16, latent_dim=8) if smoke else {}))
    card = {"name": f"texture{'-fine-noise' if fine_noise else ''}-untrained", "subtypes": list(config.subtypes),
            "mpp": config.mpp, "image_size": config.image_size}
    return Generator(build_generator(config), card)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, nargs="*", default=[], help="generator folders to add")
    parser.add_argument("--n", type=int, default=GOAL_N, help="field-size images per draw")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "gan_sample.json")
    add_smoke(parser)
    args = parser.parse_args(argv)
    n, rounds = (4, 1) if args.smoke else (args.n, args.rounds)
    generators = [_texture(False, args.smoke), _texture(True, args.smoke)]
    folders = [] if args.smoke else [DEFAULT_GENERATOR_DIR, *args.model]
    generators += [Generator.load(folder) for folder in folders]
    results = {g.name: measure(g, n, rounds) for g in generators}
    return emit({"bench": "gan_sample", "goal": f"{GOAL_N} field-size images in <= {GOAL_S:.0f} s",
                 "field_px_200x": list(field_px(GanConfig().mpp)), "generators": results,
                 "meets_goal": all(r["meets_goal"] for r in results.values())}, args.out, args.smoke)


if __name__ == "__main__":
    raise SystemExit(main())
