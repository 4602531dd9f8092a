"""What the GAN gallery page shows, without Streamlit: real and synthetic patches at one scale, a
field-size synthetic image, and the measured checks (quality/quality.json) as plain sentences.

The page must not let pictures speak louder than the numbers: `verdict` says in words whether the
generator met the goals of core.gan.checks, on what data, so a stakeholder reads that before
looking at the images.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np

from core.data.labels import SUBTYPES_BY_CLASS, pretty
from core.gan.checks import GOALS, scored_text, subtype_meets_all
from core.jsonfile import read_json
from core.paths import SAMPLES_DIR

QUALITY_FILE = Path("quality") / "quality.json"
ABLATION_FILE = Path("quality") / "ablation.json"  # written by `gan ablation` (core.gan.ablation)


def real_patches(generator, subtype: str, n: int, samples_dir=SAMPLES_DIR, seed: int = 0) -> np.ndarray | None:
    """n patches of the bundled real samples of a subtype at the generator's judged scale and size
    (None when there is no usable sample of it): the same tissue area as the synthetic patches."""
    from core.data.breakhis import index_folder
    from core.gan.patches import PatchSampler, load_fields
    from core.gan.quality import judged_config

    if not Path(samples_dir).is_dir():
        return None
    config = judged_config(generator.card)
    images = index_folder(samples_dir).images
    fields = load_fields(images[images["subtype"] == subtype], config.mpp, config.image_size)
    if not fields.count(subtype):
        return None
    return PatchSampler(fields, config.image_size, [subtype]).patches(subtype, n, seed)[0]


def synthetic_patches(generator, subtype: str, n: int, seed: int = 0) -> np.ndarray:
    from core.gan.quality import judged_config

    config = judged_config(generator.card)
    return generator.patches(subtype, n, config.image_size, config.mpp, seed)


def sample_zip(batches: dict[str, np.ndarray], card: dict, seed: int) -> bytes:
    """The page's download: SYN_ PNGs that each say in their text chunks that they are synthetic, and a
    README.txt saying so with the generator's figures, since a renamed file or a lone PNG loses the prefix."""
    from core.data.breakhis import synthetic_name
    from core.gan.sampling import save_synthetic_png

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("README.txt", zip_readme(batches, card, seed) + "\n")
        for subtype, images in batches.items():
            for i, image in enumerate(images):
                png = io.BytesIO()
                save_synthetic_png(image, png, card["name"])
                archive.writestr(synthetic_name(subtype, card["name"], seed, i), png.getvalue())
    return buffer.getvalue()


def zip_readme(batches: dict[str, np.ndarray], card: dict, seed: int) -> str:
    """README.txt of a download: synthetic, by which generator, trained on what, and what its checks measured."""
    from core.gan.sampling import synthetic_statement

    training, quality = card.get("training") or {}, card.get("quality") or {}
    accuracy = quality.get("two_sample_accuracy") or {}
    classes = ", ".join(f"{name} {accuracy[name]:.2f}" for name in ("benign", "malignant") if name in accuracy)
    measured = (f"Its measured checks (quality/quality.json): real and synthetic patches told apart with accuracy "
                f"{classes} (0.5 = indistinguishable; goal <= {GOALS['two_sample_class']} per class); all goals met: "
                f"{'yes' if quality.get('meets_all_goals') else 'no'}." if classes else
                "Its quality has not been measured (`python -m core gan evaluate`).")
    counts = ", ".join(f"{pretty(s)} {len(b)}" for s, b in batches.items())
    size = next(iter(batches.values())).shape[1:3] if batches else (0, 0)
    return "\n".join([
        "SYNTHETIC IMAGES - NOT PATIENT TISSUE", "",
        synthetic_statement(card["name"]),
        f"Every PNG here was drawn by that generator (seed {seed}); each says so in its PNG text (Description, "
        "Comment), and its SYN_ file name keeps it out of any real image set the app indexes.",
        f"Files: {sum(len(b) for b in batches.values())} patches of {size[1]} x {size[0]} px ({counts}).",
        f"The generator (its card): {training.get('steps', '?')} training steps on "
        f"{sum((training.get('images_by_subtype') or {}).values())} real images from "
        f"'{training.get('data_source', '?')}' (split: {training.get('split', '?')}).",
        measured])


def _read_report(folder, file: Path, valid, problem: str) -> dict | None:
    """A measured report in the generator folder: None when there is none; a damaged one raises
    ValueError (`problem` when it is JSON of another kind) or OSError."""
    path = Path(folder) / file
    if not path.is_file():
        return None
    report = read_json(path)
    if not isinstance(report, dict) or not valid(report):
        raise ValueError(problem)
    return report


def load_quality(folder) -> dict | None:
    """The folder's measured checks, None when not measured (a damaged file raises ValueError or OSError)."""
    return _read_report(folder, QUALITY_FILE, lambda report: "generators" in report,
                        "a report of an earlier `gan evaluate`, without the checks of core.gan.checks")


def verdict(quality: dict) -> tuple[bool, str]:
    """(all goals met, one paragraph saying what the numbers say)."""
    report = next(iter(quality["generators"].values()))
    classes = report["classes"]
    worst = max(r["two_sample"]["accuracy"] for r in classes.values())
    failed = [pretty(s) for s, r in report["subtypes"].items() if not r["two_sample"]["meets_goal"]]
    nuclei_off = [pretty(s) for s, r in report["subtypes"].items() if not r["nuclei"]["within_tolerance"]]
    scale = quality["scale"]
    text = (f"Measured on {quality['patches_per_set']} real patches per subtype from held-out fields "
            f"({scale['patch_px']} px at {scale['mpp']} um/px). A classifier tells synthetic from real tissue with "
            f"accuracy up to {worst:.2f} per class (0.5 = indistinguishable; goal <= {GOALS['two_sample_class']}). "
            f"Subtypes above their goal ({GOALS['two_sample_subtype']}): {', '.join(failed) or 'none'}. "
            f"Nuclei count off by more than {GOALS['nuclei_tolerance']:.0%}: {', '.join(nuclei_off) or 'none'}.")
    if quality.get("saw_held_out_fields"):
        text += " This generator trained on some of these held-out fields, which flatters it."
    return bool(report["meets_all_goals"]), text


def training_time(training: dict) -> str:
    """", in N s over K sessions (the last on BACKEND, G GPUs / C CPUs)" from a card's training block
    (core.gan.sessions); "" for a card from before runs kept their sessions."""
    sessions = training.get("sessions")
    if not isinstance(sessions, list) or not sessions or not isinstance(training.get("seconds"), (int, float)):
        return ""
    where = sessions[-1].get("machine") if isinstance(sessions[-1], dict) else None
    gpus = len(where.get("gpus") or []) if isinstance(where, dict) else 0
    last = (f" (the last on {where.get('backend')}, {gpus} GPU{'s' * (gpus != 1)} / {where.get('cpus')} CPUs)"
            if isinstance(where, dict) else "")
    return f", in {training['seconds']:,.1f} s over {len(sessions)} session{'s' * (len(sessions) > 1)}{last}"


def _split_text(t: dict) -> str:
    """The critic's halves: by source image, or by patch where one real image was left (a 1.00 that says little)."""
    if t.get("split") != "by patch":
        return t.get("split", "?")
    images = t.get("real_images") or 1
    return f"by patch ({images} real image{'s' * (images != 1)}): not a fair test"


def _two_sample_columns(t: dict, goal: float, held_out: int) -> dict:
    """The columns every row shares: the two-sample test, its own goal, split and data size."""
    return {"two-sample accuracy": round(t["accuracy"], 3), "95% interval": f"{t['ci95'][0]:.2f}-{t['ci95'][1]:.2f}",
            "two-sample goal": f"<= {t.get('goal', goal)}", "two-sample goal met": bool(t["meets_goal"]),
            "patches scored": scored_text(t),
            "real images scored (held out)": f"{t.get('real_images') or '?'} ({held_out})",
            "critic's split": _split_text(t)}


def check_rows(quality: dict) -> list[dict]:
    """One table row per class and subtype, each with its split and data size. "two-sample goal met" is the
    two-sample test alone in every row (what docs/gan.md counts); "all checks met" is every goal of the set:
    a subtype's two-sample, nuclei and distances, a class's two-sample and all of its subtypes'."""
    report = next(iter(quality["generators"].values()))
    subtypes = report["subtypes"]
    rows = []
    for name, r in report["classes"].items():
        members = [s for s in r.get("subtypes", SUBTYPES_BY_CLASS.get(name, ())) if s in subtypes]
        rows.append({"set": f"{name} (class)", **_two_sample_columns(
            r["two_sample"], GOALS["two_sample_class"], sum(subtypes[s]["held_out_images"] for s in members)),
            "all checks met": bool(r["two_sample"]["meets_goal"] and all(subtype_meets_all(subtypes[s])
                                                                         for s in members))})
    for subtype, r in subtypes.items():
        n = r["nuclei"]
        # Text, as the class rows' "per subtype": a column of floats and strings is not one Arrow type.
        distances = {f"{k.replace('_', ' ')} / floor": f"{d['synthetic'] / max(d['real_vs_real'], 1e-12):.2f}"
                     for k, d in r["distances"].items()}
        rows.append({"set": pretty(subtype), **_two_sample_columns(r["two_sample"], GOALS["two_sample_subtype"],
                                                                   r["held_out_images"]),
                     "nuclei / patch (real)": f"{n['synthetic_per_patch']:.1f} ({n['real_per_patch']:.1f})",
                     **distances, "all checks met": subtype_meets_all(r)})
    columns = [key for key in dict.fromkeys(key for row in rows for key in row) if key != "all checks met"]
    columns.append("all checks met")  # the verdict over every column before it; nuclei and distances per subtype:
    return [{key: row.get(key, "per subtype") for key in columns} for row in rows]  # no bare "None" in class rows


def checks_caption(quality: dict) -> str:
    """What the checks table's protocol is, row by row, and what its two verdict columns count."""
    report = next(iter(quality["generators"].values()))
    by_patch = [pretty(s) for s, r in report["subtypes"].items() if r["two_sample"].get("split") == "by patch"]
    met = [pretty(s) for s, r in report["subtypes"].items() if r["two_sample"]["meets_goal"]]
    one_image = (f" Where a subtype had one real image left ({', '.join(by_patch)}), the halves are split by patch: "
                 "the critic sees patches of the same field in both, so that row is not a fair test." if by_patch else "")
    return (f"Real set: {quality['real_set']}. Two-sample test: a small CNN trained on half the patches, accuracy on "
            "the other half (patches scored: real and synthetic, in that half; real images scored: the real images "
            "those patches came from, of the images held out). The halves are split by source image where there are "
            f"two or more.{one_image} \"Two-sample goal met\" is that test alone, in every row (subtypes meeting it: "
            f"{len(met)} of {len(report['subtypes'])}, the count docs/gan.md reports); \"all checks met\" adds a "
            f"subtype's nuclei (within +-{GOALS['nuclei_tolerance']:.0%}) and distances (divided by the real-vs-real "
            f"floor, goal <= {GOALS['distance_vs_floor']:g}), and for a class every one of its subtypes' checks.")


def load_ablation(folder) -> dict | None:
    """The generator's last GAN-fill ablation (None when never run; a damaged file raises ValueError
    or OSError)."""
    return _read_report(folder, ABLATION_FILE, lambda report: set(report.get("runs", {})) == {"none", "synthetic"},
                        "not the result of `gan ablation` (no 'none' and 'synthetic' runs)")


def no_ablation_text(card: dict, folder) -> str:
    """Why there is no GAN-fill ablation, and what would give one. A generator trained on every patient
    (--split none) cannot have one: the ablation scores patients neither arm's generator saw."""
    if card.get("training", {}).get("split") == "none":
        return ("Whether this generator's images help a classifier cannot be measured with it: it learnt from every "
                "patient, so no patient is left that it has not seen to score a classifier on. Measure it with a "
                "generator trained on one split's training patients (`python -m core gan train --split patient-wise "
                "...`, then `python -m core gan ablation`).")
    return ("Whether this generator's images help a classifier has not been measured: run `python -m core gan "
            f"ablation --gan {folder} --data DIR --out runs/ablation-NAME --pipeline fields`.")


def _macro_f1(run: dict) -> dict:
    """An arm's subtype macro-F1 as {"value", "low", "high", "text"} (low/high None without an interval; value
    None, "n/a", where the scored patients lack a class: core.evaluation.intervals.not_applicable_figures)."""
    block = run.get("headline", {}).get("subtype_macro_f1") or {"value": run["macro_f1"], "low": None, "high": None}
    if block.get("value") is None:
        return {**block, "text": "n/a"}
    text = f"{block['value']:.2f}" + (f" [{block['low']:.2f}, {block['high']:.2f}]" if block.get("low") is not None else "")
    return {**block, "text": text}


def _difference(before: dict, after: dict) -> tuple[bool, str]:
    """(helped, the words): a difference is claimed only where the two intervals are apart."""
    if before.get("value") is None or after.get("value") is None:
        reason = before.get("not_applicable") or after.get("not_applicable")
        return False, "No difference can be measured: the macro-F1 is n/a" + (f" ({reason})." if reason else ".")
    if before.get("low") is None or after.get("low") is None:
        return after["value"] > before["value"], ("Higher with it" if after["value"] > before["value"]
                                                  else "Not higher with it") + " (no interval was measured)."
    if after["low"] > before["high"]:
        return True, "It helped on this split (the intervals are apart)."
    if after["high"] < before["low"]:
        return False, "It hurt on this split (the intervals are apart)."
    return False, (f"No difference is shown: the intervals overlap (macro-F1 "
                   f"{'higher' if after['value'] > before['value'] else 'not higher'} with it).")


def ablation_sentence(result: dict) -> tuple[bool, str]:
    """(GAN fill measurably raised the subtype macro-F1, what the ablation measured, in words)."""
    none, filled = result["runs"]["none"], result["runs"]["synthetic"]
    before, after = _macro_f1(none), _macro_f1(filled)
    where = none.get("evaluated_on") or f"the test split ({none.get('test_images', '?')} images)"
    pipeline = "the field recipe" if result.get("options", {}).get("pipeline") == "fields" else "the classifier"
    parts = []
    for s in result["filled_subtypes"]:
        a, b = none.get("subtype_f1", {}).get(s, {}), filled.get("subtype_f1", {}).get(s, {})
        if a.get("value") is not None and b.get("value") is not None:
            parts.append(f"{pretty(s)} {a['value']:.2f} -> {b['value']:.2f} "
                         f"({a['patients']} patient{'s' if a['patients'] != 1 else ''})")
    helped, verdict = _difference(before, after)
    text = (f"Does GAN fill help? Measured: {pipeline} trained twice on the same split, without and with this "
            f"generator's images topping up {', '.join(pretty(s) for s in result['filled_subtypes'])}, scored on "
            f"{where}: subtype macro-F1 {before['text']} without, {after['text']} with"
            + (f"; F1 of the filled subtypes: {'; '.join(parts)}" if parts else "") + ". " + verdict)
    if result.get("gan_leak"):  # run with --allow-gan-leak: the scored patients may be ones the generator saw
        text += (f" Caution: it was run despite a leak ({result['gan_leak']}), which flatters GAN fill; "
                 "no benefit is claimed.")
        helped = False
    return helped, text
