"""Issue 26 probe (archived, not part of the project): is the bundled generator's excess power at the
highest frequencies (the real patches were antialiased when resampled to the GAN's 1.5625 um/px; the
generator's output never is) what the checks tell it apart by? The same generator judged with and
without a fixed binomial low-pass ([1, 2, 1] / 4 per axis, reflect padding) on its patches, on the
same real patches, in one `judge` run (the code path of `gan compare`); prints the per-class and
per-subtype two-sample accuracies, nuclei, distances and periodic peaks of both, and writes the JSON.

    PYTHONPATH=. python experiments/i26/output_blur_probe.py models/gan-default ../shared/breakhis/real OUT.json [N=128]
"""
import json, sys
import numpy as np
from core.gan.checks import format_judgement, judge
from core.gan.quality import judged_config, real_patches_for, untrained_generator
from core.gan.sampling import Generator


def binomial(images: np.ndarray) -> np.ndarray:
    x = np.pad(np.asarray(images, np.float32), ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    x = (x[:, :-2] + 2 * x[:, 1:-1] + x[:, 2:]) / 4
    x = (x[:, :, :-2] + 2 * x[:, :, 1:-1] + x[:, :, 2:]) / 4
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


class Blurred:
    def __init__(self, generator):
        self.generator, self.name, self.subtypes = generator, generator.name + "+binomial", generator.subtypes

    def patches(self, subtype, n, size, mpp, seed=0):
        return binomial(self.generator.patches(subtype, n, size, mpp, seed))


model, data, out = sys.argv[1], sys.argv[2], sys.argv[3]
n = int(sys.argv[4]) if len(sys.argv) > 4 else 128
generator = Generator.load(model)
real = real_patches_for(generator.card, data, n, 1)
result = judge({"bundled": generator, "bundled+binomial": Blurred(generator)},
               untrained_generator(judged_config(generator.card)), real)
print(format_judgement(result))
for name, report in result["generators"].items():
    peaks = {s: max(v["prominence"] for v in r["upsampling_peaks"].values()) for s, r in report["subtypes"].items()}
    print(name, "max prominence per subtype", json.dumps({s: round(p, 2) for s, p in peaks.items()}))
json.dump(result, open(out, "w"), default=float, indent=1)
