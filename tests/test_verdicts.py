"""The verdict statistics: intervals that cover, decisions that follow the interval, and the
discriminating allocation — on simulated data whose truth is known exactly."""

from __future__ import annotations

import numpy as np
import pytest

from autoscope.tools.predictions import Contrast, LocalizedAt, Shift, Trend, Uniform, effect
from autoscope.tools.verdicts import class_estimates, judge, next_stratum


def _draws(rng, mean, sd, n):
    return rng.normal(mean, sd, n)


def test_the_localized_interval_covers_the_true_effect_at_its_level():
    rng = np.random.default_rng(0)
    p = LocalizedAt(at="rod_tip", versus="substrate", min_ratio=2.0)
    true = effect(p, {"rod_tip": 3.0, "substrate": 1.0})
    hits = []
    for _ in range(600):
        e, _ = judge(p, {"rod_tip": _draws(rng, 3.0, 2.0, 8), "substrate": _draws(rng, 1.0, 0.3, 12)})
        hits.append(e.ci_low <= true <= e.ci_high)
    assert 0.92 <= np.mean(hits) <= 0.98, f"coverage {np.mean(hits):.3f}"


@pytest.mark.parametrize(("tip", "sd", "expected"), [(6.0, 1.0, "supported"), (1.2, 0.5, "refuted")])
def test_a_clear_effect_is_decided_and_a_boundary_one_is_rarely_supported(tip, sd, expected):
    rng = np.random.default_rng(1)
    p = LocalizedAt(at="rod_tip", versus="substrate", min_ratio=2.0)
    outs = [
        judge(p, {"rod_tip": _draws(rng, tip, sd, 10), "substrate": _draws(rng, 1.0, 0.2, 10)})[0].outcome
        for _ in range(200)
    ]
    assert outs.count(expected) / len(outs) > 0.95
    # exactly at the threshold (θ = 0) a supported verdict is an error: at most the interval's one tail
    at_boundary = [
        judge(p, {"rod_tip": _draws(rng, 2.0, 1.0, 10), "substrate": _draws(rng, 1.0, 0.2, 10)})[0].outcome
        for _ in range(400)
    ]
    assert at_boundary.count("supported") / 400 < 0.05


def test_too_few_spectra_are_inconclusive_and_say_why():
    p = Contrast(a="bright_side", b="dim_side", min_ratio=1.5)
    e, ests = judge(p, {"bright_side": [1.0], "dim_side": [0.4, 0.5, 0.6]})
    assert e.outcome == "inconclusive" and "bright_side" in e.reason
    assert ests["bright_side"].n == 1 and ests["bright_side"].sd is None


def test_a_shift_uses_trimmed_means_and_ignores_an_outlying_onset():
    rng = np.random.default_rng(2)
    a = list(rng.normal(455.0, 0.1, 15)) + [449.0]  # one onset found on a noise excursion
    b = list(rng.normal(456.9, 0.1, 16))
    p = Shift(a="bright_side", b="dim_side", direction="up", min_shift_eV=0.5)
    e, ests = judge(p, {"bright_side": a, "dim_side": b}, energy=True)
    assert e.outcome == "supported"
    assert ests["bright_side"].mean == pytest.approx(455.0, abs=0.1)
    assert 1.3 < e.estimate < 1.5 and e.ci_high - e.ci_low < 0.3
    plain = class_estimates({"a": a})["a"]
    assert plain.mean < 454.7  # the plain mean is pulled by the outlier


def test_uniform_is_supported_inside_the_band_and_refuted_outside():
    rng = np.random.default_rng(3)
    p = Uniform(over=["rod_tip", "substrate", "cube_corner"], max_ratio=1.5)
    same = {c: _draws(rng, 1.0, 0.05, 15) for c in p.over}
    assert judge(p, same)[0].outcome == "supported"
    apart = {**same, "rod_tip": _draws(rng, 3.0, 0.1, 15)}
    assert judge(p, apart)[0].outcome == "refuted"
    e = judge(
        Uniform(over=["bright_side", "dim_side"], max_shift_eV=0.3),
        {"bright_side": [455.0, 455.1, 454.9] * 3, "dim_side": [457.0, 457.1, 456.9] * 3},
        energy=True,
    )[0]
    assert e.outcome == "refuted"


def test_a_trend_follows_the_sign_of_spearman_rho():
    ar = np.array([2.5, 3.0, 3.8, 4.5, 5.2, 6.0, 6.8])
    energy = 2.6 - 0.2 * ar + np.random.default_rng(4).normal(0, 0.02, ar.size)
    down = Trend(over="rod_tip", covariate="aspect_ratio", sign="decreasing")
    up = down.model_copy(update={"sign": "increasing"})
    feats = list(zip(ar, energy, strict=True))
    assert judge(down, {}, features=feats)[0].outcome == "supported"
    assert judge(up, {}, features=feats)[0].outcome == "refuted"
    assert judge(down, {}, features=feats[:3])[0].outcome == "inconclusive"  # too few features


def test_the_discriminating_allocation_feeds_the_noisier_stratum():
    p = LocalizedAt(at="rod_tip", versus="substrate", min_ratio=2.0)
    data = {"rod_tip": [1.0, 5.0, 9.0, 3.0], "substrate": [1.0, 1.01, 0.99, 1.0]}
    assert next_stratum(p, data, {"rod_tip": 10, "substrate": 10}) == "rod_tip"
    assert next_stratum(p, data, {"rod_tip": 4, "substrate": 10}) == "substrate"  # rod_tip is full
    assert next_stratum(p, {"rod_tip": [1.0], "substrate": [1.0, 2.0]}, {"rod_tip": 5, "substrate": 5}) == (
        "rod_tip"
    )
