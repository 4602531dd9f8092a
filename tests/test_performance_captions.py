"""What the Model performance page says beside its figures (core.app.performance): the baselines only where
they were scored, the referral's in-sample figures, per-stage and per-magnification intervals, the uncertainty flag."""

from core.app import performance

HELD_OUT = {"data": {"split": "test", "protocol": "patient-wise", "images": 43, "cases": 7},
            "intervals": {"image": {}, "patient": {}}}


def test_the_baselines_are_named_only_where_they_were_scored():
    """A single-split fields run had no baselines; its page still said 'next to the baselines' and how they
    were fitted, with only a model column."""
    baselines = {"colour_texture": {"name": "colour/texture", "intervals": {}}}
    assert performance.intervals_title({**HELD_OUT, "baselines": baselines}).endswith("next to the baselines")
    assert "baseline" not in performance.intervals_title(HELD_OUT)
    caption = performance.intervals_caption(HELD_OUT)
    assert "no baseline was scored" in caption and "the baselines are" not in caption
    assert "same test cases" in performance.intervals_caption({**HELD_OUT, "baselines": baselines})
