"""Is a generator's tissue like real tissue? Checks with goals, each of which can fail.

All of them compare patches at ONE physical scale (the GAN's microns per pixel, core.gan.patches):
real patches from fields the generator never saw (the held-out fields of the training patients,
core.gan.patches.holdout_split) against synthetic patches of the same size.

- two-sample: a small CNN trained to tell real from synthetic (core.gan.two_sample); accuracy on
  its scoring half with a 95 % interval and a p-value against 0.5. Goals: <= 0.75 per class
  (benign, malignant), <= 0.85 per subtype. The same test on real vs real (held-out fields vs
  training fields) is reported per class, to show what "indistinguishable" scores on this data.
- nuclei: hematoxylin blob count per patch (core.gan.nuclei, fixed detector), synthetic within
  +-30 % of real per subtype; the nuclei's mean radius is reported too.
- distances: stain, power spectrum, LBP (core.gan.distances), each <= 2x the real-vs-real floor.

`judge(generators, ...)` measures several generators on the very same real patches, so "new vs
current" is one run of one code path (`gan compare`).
"""

from __future__ import annotations

import numpy as np

from core.data.labels import CLASS_OF_SUBTYPE, SUBTYPES
from core.gan import nuclei
from core.gan.distances import classifier_free, upsampling_peaks
from core.gan.patches import Fields, PatchSampler
from core.gan.two_sample import MIN_PATCHES, two_sample_test

GOALS = {"two_sample_class": 0.75, "two_sample_subtype": 0.85, "nuclei_tolerance": 0.30, "distance_vs_floor": 2.0}


class RealPatches:
    """The real side of every check: per subtype, patches of held-out fields (the test set) and of
    training fields (the floor's second real set), drawn once so every generator meets the same."""

    def __init__(self, train: Fields, held: Fields, size: int, mpp: float, n: int, seed: int):
        self.size, self.mpp, self.n, self.seed = size, mpp, n, seed
        subtypes = [s for s in SUBTYPES if held.count(s) and train.count(s)]
        held_sampler, train_sampler = PatchSampler(held, size, subtypes), PatchSampler(train, size, subtypes)
        self.subtypes = held_sampler.subtypes
        self.held = {s: held_sampler.patches(s, n, seed) for s in self.subtypes}  # (patches, source paths)
        self.train = {s: train_sampler.patches(s, n, seed + 1)[0] for s in self.subtypes}
        self.images = {s: (held.count(s), train.count(s)) for s in self.subtypes}


def _two_sample_summary(result: dict, goal: float) -> dict:
    return {**result, "goal": goal, "meets_goal": result["accuracy"] <= goal}


def _by_class(subtypes) -> dict[str, list[str]]:
    classes = {}
    for subtype in subtypes:
        classes.setdefault(CLASS_OF_SUBTYPE[subtype], []).append(subtype)
    return classes


def subtype_meets_all(report: dict) -> bool:
    """A subtype's every goal: its two-sample test, its nuclei count and each distance."""
    return bool(report["two_sample"]["meets_goal"] and report["nuclei"]["within_tolerance"]
                and all(d["meets_goal"] for d in report["distances"].values()))


def judge_one(fakes: dict[str, np.ndarray], untrained: dict[str, np.ndarray], real: RealPatches) -> dict:
    """Every check for one generator's patches per subtype (fakes[subtype]: uint8 [n, S, S, 3])."""
    subtypes = [s for s in real.subtypes if s in fakes]
    report = {"subtypes": {}, "classes": {}}
    for subtype in subtypes:
        held, sources = real.held[subtype]
        fake = fakes[subtype]
        distances = classifier_free(held, real.train[subtype], fake, untrained[subtype], real.seed)
        for d in distances.values():
            d["meets_goal"] = d["synthetic"] <= GOALS["distance_vs_floor"] * d["real_vs_real"]
        count = nuclei.compare(held, fake, real.mpp, GOALS["nuclei_tolerance"])
        report["subtypes"][subtype] = {
            "two_sample": _two_sample_summary(two_sample_test(held, fake, sources, real.seed),
                                              GOALS["two_sample_subtype"]),
            "nuclei": count, "distances": distances,
            "upsampling_peaks": upsampling_peaks(held, fake, real.size),
            "held_out_images": real.images[subtype][0], "training_images": real.images[subtype][1]}
    for name, members in _by_class(subtypes).items():
        held = np.concatenate([real.held[s][0] for s in members])
        sources = [p for s in members for p in real.held[s][1]]
        fake = np.concatenate([fakes[s] for s in members])
        report["classes"][name] = {"subtypes": members, "two_sample": _two_sample_summary(
            two_sample_test(held, fake, sources, real.seed), GOALS["two_sample_class"])}
    judged = ([r["two_sample"]["meets_goal"] for r in report["classes"].values()]
              + [subtype_meets_all(r) for r in report["subtypes"].values()])
    report["meets_all_goals"] = bool(judged) and all(judged)  # nothing judged meets nothing (all([]) is True)
    return report


def real_vs_real(real: RealPatches) -> dict:
    """The two-sample test of held-out vs training-field patches per class: the score of two real sets."""
    out = {}
    for name, members in _by_class(real.subtypes).items():
        held = np.concatenate([real.held[s][0] for s in members])
        other = np.concatenate([real.train[s] for s in members])
        out[name] = two_sample_test(held, other, [p for s in members for p in real.held[s][1]], real.seed)
    return out


def judge(generators: dict, untrained, real: RealPatches) -> dict:
    """Each generator (name -> core.gan.sampling.Generator) on the same real patches; `untrained`
    is a Generator with random weights (every distance's ceiling). A subtype without a held-out
    field and a training field is listed under "not_judged"."""
    draw = lambda g, s: g.patches(s, real.n, real.size, real.mpp, real.seed)  # noqa: E731
    ceiling = {s: draw(untrained, s) for s in real.subtypes}
    result = {"scale": {"mpp": real.mpp, "patch_px": real.size}, "patches_per_set": real.n, "seed": real.seed,
              "goals": GOALS, "real_vs_real": real_vs_real(real), "generators": {},
              "real_set": "patches of the training patients' held-out fields (kept out of the texture GAN's training)"}
    for name, generator in generators.items():
        fakes = {s: draw(generator, s) for s in real.subtypes if s in generator.subtypes}
        result["generators"][name] = {"name": generator.name, **judge_one(fakes, ceiling, real),
                                      "not_judged": [s for s in generator.subtypes if s not in real.subtypes]}
    return result


def scored_text(t: dict) -> str:
    """"n=16", or "n=4, too few" for a scoring half under MIN_PATCHES (core.gan.two_sample)."""
    return f"n={t.get('n_scored', '?')}" + (f", too few (< {MIN_PATCHES})" if t.get("too_few_scored") else "")


def accuracy_text(t: dict) -> str:
    return f"{t['accuracy']:.3f} [{t['ci95'][0]:.2f}, {t['ci95'][1]:.2f}] {scored_text(t)}"


def format_judgement(result: dict) -> str:
    """A Markdown table per check, one column per generator."""
    names = list(result["generators"])
    reports = [result["generators"][n] for n in names]
    head = "| | " + " | ".join(f"{n} ({result['generators'][n]['name']})" for n in names) + " |"
    rule = "|---" * (len(names) + 1) + "|"
    scale = result["scale"]
    lines = [f"Real set: {result['real_set']}; {scale['patch_px']}-px patches at {scale['mpp']} um/px, "
             f"{result['patches_per_set']} per set and subtype, seed {result['seed']}.", "",
             "Two-sample test accuracy (0.5 = indistinguishable), 95 % interval, n patches scored (real and "
             "synthetic; the other half trained the critic); goal <= "
             f"{GOALS['two_sample_class']} per class, <= {GOALS['two_sample_subtype']} per subtype", "", head, rule]

    def cell(t):
        return f"{accuracy_text(t)} {'ok' if t['meets_goal'] else 'FAIL'}"

    for name, rr in result["real_vs_real"].items():
        lines.append(f"| {name}: real vs real | " + " | ".join(accuracy_text(rr) for _ in names) + " |")
    for name in reports[0]["classes"]:
        lines.append(f"| {name} | " + " | ".join(cell(r["classes"][name]["two_sample"]) if name in r["classes"]
                                                 else "n/a" for r in reports) + " |")
    subtypes = list(reports[0]["subtypes"])
    for s in subtypes:
        lines.append(f"| {s} | " + " | ".join(cell(r["subtypes"][s]["two_sample"]) if s in r["subtypes"] else "n/a"
                                              for r in reports) + " |")
    lines += ["", f"Nuclei per patch, synthetic (real); goal within +-{GOALS['nuclei_tolerance']:.0%}; mean radius um",
              "", head, rule]
    for s in subtypes:
        def nuc(r):
            c = r["subtypes"][s]["nuclei"]
            return (f"{c['synthetic_per_patch']:.1f} ({c['real_per_patch']:.1f}) "
                    f"{'ok' if c['within_tolerance'] else 'FAIL'}; r {nuclei.radius_text(c['synthetic_radius_um'])} "
                    f"({nuclei.radius_text(c['real_radius_um'])})")
        lines.append(f"| {s} | " + " | ".join(nuc(r) if s in r["subtypes"] else "n/a" for r in reports) + " |")
    lines += ["", f"Distance / real-vs-real floor; goal <= {GOALS['distance_vs_floor']}", "", head, rule]
    for s in subtypes:
        for metric in reports[0]["subtypes"][s]["distances"]:
            def ratio(r):
                d = r["subtypes"][s]["distances"][metric]
                return f"{d['synthetic'] / max(d['real_vs_real'], 1e-12):.2f} {'ok' if d['meets_goal'] else 'FAIL'}"
            lines.append(f"| {s} {metric} | " + " | ".join(ratio(r) if s in r["subtypes"] else "n/a"
                                                           for r in reports) + " |")
    lines += ["", "All goals met: " + ", ".join(f"{n}: {r['meets_all_goals']}" for n, r in zip(names, reports))]
    return "\n".join(lines)
