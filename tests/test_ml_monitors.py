"""Campaign monitors on the twin: drift between survey images, out-of-distribution descriptors,
and a stuck trajectory on a band without signal."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from autoscope.instruments.sim.config import SimConfig
from autoscope.instruments.sim.oracle import Oracle
from autoscope.instruments.sim.scenarios import make_microscope
from autoscope.tools.ml.base import FitReport
from autoscope.tools.ml.descriptors import (
    PatchFeaturizer,
    PatchSpec,
    candidate_grid,
    extract_patches,
    patches_at_nm,
)
from autoscope.tools.ml.gp import ExactGP
from autoscope.tools.ml.monitors import DriftMonitor, OODMonitor, StuckMonitor, estimate_shift
from autoscope.tools.ml.scalarizers import BandIntensity

STILL = SimConfig(drift_velocity_nm_per_s=(0.0, 0.0), drift_random_walk_nm_per_sqrt_s=0.0)
FOV_NM, PIXELS, DWELL_S = 600.0, 256, 4e-6


def _pair(velocity: tuple[float, float], wait_s: float = 120.0, seed: int = 4, repeat_pixels: int = PIXELS):
    """Two survey images of the same field ``wait_s`` apart; returns them and the oracle."""
    cfg = SimConfig(drift_velocity_nm_per_s=velocity, drift_random_walk_nm_per_sqrt_s=0.0)
    m = make_microscope("plasmonic", seed=seed, config=cfg)
    m.unblank_beam()
    a = m.acquire_image(FOV_NM, PIXELS, DWELL_S)
    m.blank_beam()
    m.wait(wait_s)
    m.unblank_beam()
    b = m.acquire_image(FOV_NM, repeat_pixels, DWELL_S)
    return a, b, Oracle(m)


def _true_shift(a, b, oracle) -> np.ndarray:
    """Drift between the images' mid-frame times (each scan line drifts on its own; the middle is the mean)."""
    ta, tb = (a.t_start_s + a.t_end_s) / 2, (b.t_start_s + b.t_end_s) / 2
    return np.array(oracle.drift_nm(tb)) - np.array(oracle.drift_nm(ta))


@pytest.mark.parametrize(
    ("velocity", "repeat_pixels"), [((0.05, -0.03), PIXELS), ((-0.08, 0.05), PIXELS), ((0.06, 0.04), 192)]
)
def test_estimated_shift_matches_the_injected_drift(velocity, repeat_pixels):
    a, b, oracle = _pair(velocity, repeat_pixels=repeat_pixels)
    dx, dy, conf = estimate_shift(a, b)
    true = _true_shift(a, b, oracle)
    err_px = (np.array([dx, dy]) - true) / a.pixel_size_nm
    assert np.all(np.abs(err_px) < 0.5), err_px
    assert np.hypot(*true) / a.pixel_size_nm > 2.0  # a real multi-pixel displacement
    assert conf > 0.3


def test_drift_monitor_fires_above_threshold_only_and_reaims_the_grid():
    a, b, _ = _pair((0.05, -0.03))
    a0, b0, _ = _pair((0.0, 0.0))
    mon = DriftMonitor(threshold_nm=2.0)
    assert mon.check(1, a0, b0) is None
    assert mon.total_shift_nm == (0.0, 0.0)
    ev = mon.check(2, a, b)
    assert ev is not None and ev.kind == "drift" and ev.step == 2 and ev.details["reliable"]
    dx, dy = ev.details["shift_nm"]
    assert np.hypot(dx, dy) > 2.0 and ev.details["confidence"] > 0.3
    assert mon.total_shift_nm == pytest.approx((dx, dy))
    # re-aimed candidates see in the repeat image what the originals saw in the reference
    grid = candidate_grid(a, 8, 12)
    ref = extract_patches(a.data, grid.rows, grid.cols, 12)
    after = patches_at_nm(b, grid.shifted(dx, dy).xy_nm, 12)
    before = patches_at_nm(b, grid.xy_nm, 12)
    err_after, err_before = np.abs(after - ref).mean(), np.abs(before - ref).mean()
    assert err_after < 0.8 * err_before
    # a field that no longer matches (another sample) is flagged unreliable, not corrected
    other = make_microscope("plasmonic", seed=9, config=STILL)
    other.unblank_beam()
    lost = mon.check(3, a, other.acquire_image(FOV_NM, PIXELS, DWELL_S))
    assert lost is not None and lost.details["reliable"] is False
    assert mon.total_shift_nm == pytest.approx((dx, dy))


def test_shift_needs_the_same_field():
    a, b, _ = _pair((0.0, 0.0), wait_s=1.0)
    with pytest.raises(ValueError, match="field of view"):
        estimate_shift(a, dataclasses.replace(b, fov_nm=2 * FOV_NM))


@pytest.fixture(scope="module")
def survey():
    """A plasmonic survey, its candidate descriptors, and the fitted featurizer."""
    m = make_microscope("plasmonic", seed=5, config=STILL)
    m.unblank_beam()
    img = m.acquire_image(1000.0, 256, 4e-6)
    grid = candidate_grid(img, 4, 8)
    fz = PatchFeaturizer(PatchSpec(window_px=16, pca_components=16))
    return m, img, grid, fz.fit(extract_patches(img.data, grid.rows, grid.cols, 16))


def _features(fz, img, grid):
    return fz.transform(extract_patches(img.data, grid.rows, grid.cols, 16))


def test_ood_monitor_passes_held_out_patches_and_flags_other_data(survey):
    m, img, grid, fz = survey
    x = _features(fz, img, grid)
    perm = np.random.default_rng(0).permutation(len(grid))
    train, held = perm[: int(0.7 * len(perm))], perm[int(0.7 * len(perm)) :]
    mon = OODMonitor().fit(x[train])
    held_scores = mon.score(x[held])
    assert np.mean(held_scores > 1) < 0.05 and mon.check(1, x[held]) is None
    # the same field again: shot noise only
    assert mon.check(2, _features(fz, m.acquire_image(1000.0, 256, 4e-6), grid)) is None
    # the same field at a tenth and ten times the dose
    for step, dwell in ((3, 4e-7), (4, 4e-5)):
        ev = mon.check(step, _features(fz, m.acquire_image(1000.0, 256, dwell), grid))
        assert ev is not None and ev.kind == "ood" and ev.details["ood_fraction"] > 0.6
        assert ev.details["median_score"] > 1.0
    # another scenario: an atomic-resolution MoS2 image
    tmd = make_microscope("tmd-defects", seed=1, config=STILL)
    tmd.unblank_beam()
    ev = mon.check(5, _features(fz, tmd.acquire_image(8.0, 256, 8e-6), grid))
    assert ev is not None and ev.details["ood_fraction"] > 0.9
    # a plasmonic sample on another support film (SiN instead of carbon)
    sin = make_microscope("plasmonic", seed=1, config=STILL)
    assert Oracle(sin).truth()["substrate"] != Oracle(m).truth()["substrate"]
    sin.unblank_beam()
    assert mon.check(6, _features(fz, sin.acquire_image(1000.0, 256, 4e-6), grid)) is not None


@pytest.fixture
def one_torch_thread():
    """Small GP fits are latency-bound: one thread avoids spin-waiting on a busy 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("seed", [5, 8])
def test_stuck_monitor_fires_on_an_empty_band_not_on_the_dipole_band(seed, one_torch_thread):
    m = make_microscope("plasmonic", seed=seed, config=STILL)
    m.unblank_beam()
    img = m.acquire_image(1000.0, 256, 4e-6)
    grid = candidate_grid(img, 6, 8)
    x = PatchFeaturizer(PatchSpec(window_px=16, pca_components=8)).fit_transform(
        extract_patches(img.data, grid.rows, grid.cols, 16)
    )
    scalarizers = {
        # the negative-loss side holds only the smooth zero-loss tail; a linear background removes it
        "empty": BandIntensity(lo_eV=-1.9, hi_eV=-1.4, background="linear"),
        "dipole": BandIntensity(lo_eV=1.0, hi_eV=2.3),
    }
    monitors = {k: StuckMonitor(window=15) for k in scalarizers}
    models = {k: ExactGP(max_iter=100, warm_iter=20) for k in scalarizers}
    ys: dict[str, list[float]] = {k: [] for k in scalarizers}
    events: dict[str, list] = {k: [] for k in scalarizers}
    order = np.random.default_rng(seed).choice(len(grid), 40, replace=False)
    for step, i in enumerate(order):
        spec = m.acquire_spectrum(*grid.xy_nm[i], 0.05, -2.0, 6.0)
        for k, scalarize in scalarizers.items():
            ys[k].append(scalarize(spec))
            report = models[k].fit(x[order[: step + 1]], np.array(ys[k])) if step >= 4 else None
            ev = monitors[k].update(step, ys[k][-1], report, y_sd=scalarize.uncertainty(spec))
            if ev is not None:
                events[k].append(ev)
    assert len(events["empty"]) == 1  # fires once per episode, not at every later step
    ev = events["empty"][0]
    assert ev.kind == "stuck" and ev.details["snr"] < 1.0 and ev.step <= 20
    assert events["dipole"] == []
    # the model-only rule agrees here: the GP sees far more signal in the dipole band
    assert monitors["dipole"]._snr[-1][1] > 100 * monitors["empty"]._snr[-1][1]


def test_stuck_rule_without_a_model_and_rearming():
    rng = np.random.default_rng(1)
    mon = StuckMonitor(window=10, noise_sd=1.0)
    fired = [s for s in range(40) if mon.update(s, float(rng.normal()), None) is not None]
    assert len(fired) == 1 and fired[0] >= 10
    # a real trend (spread well above the noise, and gains) never counts as stuck
    trend = StuckMonitor(window=10)
    assert all(trend.update(s, 0.5 * s + float(rng.normal()), None, y_sd=1.0) is None for s in range(40))
    # once the scalarizer has seen signal, a quiet stretch of exploration is not stuck ...
    steps = StuckMonitor(window=10)
    ys = [0.0] * 20 + [5.0 * (s % 2) for s in range(20)] + [0.0] * 20
    events = [s for s, y in enumerate(ys) if steps.update(s, y + float(rng.normal()), None, y_sd=1.0)]
    assert len(events) == 1 and 10 <= events[0] < 20
    # ... until a new episode (new scalarizer, region or plan) stalls on noise again
    steps.reset()
    again = [s for s in range(30) if steps.update(s, float(rng.normal()), None, y_sd=1.0)]
    assert len(again) == 1
    # a confident model is never stuck; reset starts over
    mon.reset()
    confident = FitReport(
        n_observations=20,
        iterations=5,
        fit_s=0.01,
        neg_log_marginal_likelihood=0.0,
        outputscale=1.0,
        noise=0.05,
    )
    assert all(mon.update(s, float(rng.normal()), confident) is None for s in range(30))
    with pytest.raises(ValueError, match="window"):
        StuckMonitor(window=1)
