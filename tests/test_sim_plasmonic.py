"""Plasmonic scenario: structure, HAADF contrast and position-dependent low-loss EELS."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from autoscope.instruments.sim.config import SimConfig
from autoscope.instruments.sim.oracle import Oracle
from autoscope.instruments.sim.plasmonic import (
    PlasmonicSample,
    depolarisation_oblate,
    depolarisation_prolate,
    rod_dipole_energy_eV,
)
from autoscope.instruments.sim.scenarios import build_sample, make_microscope

STILL = SimConfig(drift_velocity_nm_per_s=(0.0, 0.0), drift_random_walk_nm_per_sqrt_s=0.0, line_jitter_px=0.0)


def _scope(seed: int, current_pA: float | None = None):
    cfg = STILL if current_pA is None else STILL.model_copy(update={"current_pA": current_pA})
    m = make_microscope("plasmonic", seed=seed, config=cfg)
    m.unblank_beam()
    return m


def _rods(truth: dict) -> list[dict]:
    return [p for p in truth["particles"] if p["kind"] == "rod"]


def _axis(p: dict) -> np.ndarray:
    a = math.radians(p["orientation_deg"])
    return np.array([math.cos(a), math.sin(a)])


def _beyond_tip(p: dict, gap_nm: float = 4.0) -> np.ndarray:
    return np.array(p["center_nm"]) + _axis(p) * (p["size_nm"] / 2 + gap_nm)


def _beside_centre(p: dict, gap_nm: float = 4.0) -> np.ndarray:
    u = _axis(p)
    return np.array(p["center_nm"]) + np.array([-u[1], u[0]]) * (p["width_nm"] / 2 + gap_nm)


def _peak_eV(spec, lo: float, hi: float) -> float:
    """Energy of the largest background-subtracted peak in [lo, hi] (counts smoothed over 5 channels)."""
    e = spec.energy_eV
    sel = (e >= lo) & (e <= hi)
    y = np.convolve(spec.counts, np.ones(5) / 5, mode="same")[sel]
    es = e[sel]
    y = y - np.interp(es, [es[0], es[-1]], [y[0], y[-1]])  # straight-line background
    return float(es[np.argmax(y)])


def test_structure_is_seeded_physical_and_serialisable():
    a, b, c = build_sample("plasmonic", 11), build_sample("plasmonic", 11), build_sample("plasmonic", 12)
    assert isinstance(a, PlasmonicSample)
    ta = a.truth()
    assert json.dumps(ta, sort_keys=True) == json.dumps(b.truth(), sort_keys=True)
    assert json.dumps(ta, sort_keys=True) != json.dumps(c.truth(), sort_keys=True)
    json.dumps(ta)
    parts = ta["particles"]
    assert {p["kind"] for p in parts} == {"rod", "triangle", "cube"}
    x0, x1, y0, y1 = a.extent_nm
    for i, p in enumerate(parts):
        (x, y), r = p["center_nm"], p["bound_radius_nm"]
        assert x0 < x - r and x + r < x1 and y0 < y - r and y + r < y1
        for q in parts[i + 1 :]:
            assert math.dist(p["center_nm"], q["center_nm"]) > r + q["bound_radius_nm"]
        for mode in p["modes"]:
            assert 0.5 < mode["energy_eV"] < ta["surface_plasmon_eV"] and mode["hot_spots_nm"]
    assert ta["bulk_plasmon_eV"] == pytest.approx(3.8)


def test_haadf_is_z_contrast_with_probe_blur():
    s = build_sample("plasmonic", 3)
    cube = next(p for p in s.truth()["particles"] if p["kind"] == "cube")
    tri = next(p for p in s.truth()["particles"] if p["kind"] == "triangle")
    cx, cy = cube["center_nm"]
    sub = s.haadf(np.array([-499.0]), np.array([-499.0]), 0.4)[0]
    on_cube = s.haadf(np.array([cx]), np.array([cy]), 0.4)[0]
    on_tri = s.haadf(np.array(tri["center_nm"][:1]), np.array(tri["center_nm"][1:]), 0.4)[0]
    assert on_cube > on_tri > 3 * sub > 0  # thick Ag > thin Ag prism > light support film
    # across the cube's edge the profile sharpens as the probe shrinks
    x = cx + np.linspace(0.0, cube["size_nm"], 400)
    y = np.full_like(x, cy)

    def edge_width(sigma: float) -> float:
        prof = s.haadf(x, y, sigma)
        lo, hi = prof.min(), prof.max()
        inside = np.flatnonzero((prof > lo + 0.1 * (hi - lo)) & (prof < lo + 0.9 * (hi - lo)))
        return float(np.ptp(x[inside])) if inside.size else 0.0

    assert edge_width(2.0) > 2.0 * edge_width(0.5)


def test_rod_tip_shows_the_dipole_that_the_side_does_not():
    m = _scope(seed=5)
    rod = max(_rods(Oracle(m).truth()), key=lambda p: p["size_nm"])
    e1 = rod["modes"][0]["energy_eV"]
    tip = m.acquire_spectrum(*_beyond_tip(rod), 0.05, -1.0, 4.0)
    side = m.acquire_spectrum(*_beside_centre(rod), 0.05, -1.0, 4.0)
    window = np.abs(tip.energy_eV - e1) < 0.15
    ref = np.abs(tip.energy_eV) < 0.3  # zero-loss normalisation
    i_tip = tip.counts[window].sum() / tip.counts[ref].sum()
    i_side = side.counts[window].sum() / side.counts[ref].sum()
    assert i_tip > 4.0 * i_side
    assert _peak_eV(tip, e1 - 0.5, e1 + 0.5) == pytest.approx(e1, abs=0.1)


def test_longer_rods_have_lower_dipole_energy():
    energies = [rod_dipole_energy_eV(length, 20.0, 1.8) for length in (40, 60, 100, 160, 240)]
    assert np.all(np.diff(energies) < 0)
    assert rod_dipole_energy_eV(20.0, 20.0, 1.0) == pytest.approx(8.9 / math.sqrt(5.45 + 2.0))  # sphere
    assert depolarisation_prolate(1.0) == pytest.approx(1 / 3) == depolarisation_oblate(1.0)
    assert depolarisation_prolate(5.0) < 1 / 3 < 0.5 * (1 - depolarisation_prolate(5.0))

    m = _scope(seed=5)
    rods = sorted(_rods(Oracle(m).truth()), key=lambda p: p["size_nm"] / p["width_nm"])
    truth_e = [p["modes"][0]["energy_eV"] for p in rods]
    assert np.all(np.diff(truth_e) < 0)
    short, long_ = rods[0], rods[-1]
    measured = []
    for rod in (short, long_):
        e1 = rod["modes"][0]["energy_eV"]
        m.move_stage(*rod["center_nm"])
        spec = m.acquire_spectrum(*_beyond_tip(rod), 0.05, -1.0, 4.0)
        measured.append(_peak_eV(spec, e1 - 0.5, e1 + 0.5))
    assert measured[1] < measured[0] - 0.2


def test_aloof_signal_decays_with_distance():
    m = _scope(seed=2)
    o = Oracle(m)
    rod = max(_rods(o.truth()), key=lambda p: p["size_nm"])
    e = np.arange(-1.0, 4.0, 0.025)
    window = np.abs(e - rod["modes"][0]["energy_eV"]) < 0.1
    signal = [o.true_spectrum(*_beyond_tip(rod, gap), e)[window].sum() for gap in (2, 5, 10, 20, 40, 80)]
    assert np.all(np.diff(signal) < 0)
    assert signal[-1] < 0.2 * signal[0]


def test_oracle_spectrum_is_the_mean_of_noisy_spectra():
    m = _scope(seed=9, current_pA=5.0)
    o = Oracle(m)
    tri = next(p for p in o.truth()["particles"] if p["kind"] == "triangle")
    corner = np.array(tri["modes"][0]["hot_spots_nm"][0])
    spot = corner + 3.0 * (corner - tri["center_nm"]) / np.linalg.norm(corner - tri["center_nm"])
    m.move_stage(*tri["center_nm"])
    n, dwell = 40, 0.01
    energy = -1.0 + 0.025 * np.arange(240)  # the window's channels
    counts, expected = [], []
    for _ in range(n):
        per_e = o.true_spectrum(*spot, energy)  # the (slowly damaged) state this exposure sees
        s = m.acquire_spectrum(*spot, dwell, -1.0, 5.0)
        np.testing.assert_allclose(s.energy_eV, energy)
        expected.append(s.dose_e * per_e)
        counts.append(s.counts)
    mean_counts, mean_exp = np.mean(counts, axis=0), np.mean(expected, axis=0)
    var = (mean_exp + m.config.spectrum_read_noise_counts**2) / n
    chi2 = float(np.mean((mean_counts - mean_exp) ** 2 / var))
    assert 0.8 < chi2 < 1.25
    peak = mean_exp > 50
    np.testing.assert_allclose(mean_counts[peak], mean_exp[peak], rtol=0.05)
