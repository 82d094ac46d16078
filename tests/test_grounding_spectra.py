"""Peaks and edges of survey spectra (``tools/grounding/spectra.py``) against the twin's truth.

The oracle is read here only, to place the probe and to score; the code under test sees the
spectrum record alone.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from autoscope.instruments.records import SpectrumRecord
from autoscope.instruments.sim.oracle import Oracle
from autoscope.instruments.sim.scenarios import make_microscope
from autoscope.tools.grounding.spectra import find_edges, find_peaks


def _scope(name: str, seed: int):
    scope = make_microscope(name, seed=seed)
    truth = Oracle(scope).truth()
    scope.unblank_beam()
    return scope, truth


def _record(
    counts: np.ndarray, offset_eV: float, dispersion_eV: float, dose_e: float = 1e7
) -> SpectrumRecord:
    return SpectrumRecord(
        counts=counts,
        energy_offset_eV=offset_eV,
        dispersion_eV=dispersion_eV,
        x_nm=0.0,
        y_nm=0.0,
        dwell_s=0.1,
        current_pA=10.0,
        dose_e=dose_e,
        dose_e_per_A2=1.0,
        t_start_s=0.0,
        t_end_s=0.1,
    )


def _elements(edges) -> set[str]:
    return {ed.element for ed in edges if ed.element}


# ---------------------------------------------------------------------- low loss
def test_rod_tip_shows_the_dipole_plasmon():
    errors = []
    for seed in (0, 1, 2):
        scope, truth = _scope("plasmonic", seed)
        for p in truth["particles"]:
            if p["kind"] != "rod" or p["size_nm"] / p["width_nm"] < 3.0:
                continue
            dipole = next(m for m in p["modes"] if m["name"] == "dipole")
            tip = np.asarray(dipole["hot_spots_nm"][0])
            out = tip - np.asarray(p["center_nm"])
            x, y = tip + 3.0 * out / np.linalg.norm(out)
            window = (-1.0, 4.0) if seed % 2 else (-1.0, 6.0)
            peaks = find_peaks(scope.acquire_spectrum(x, y, 0.02 + 0.015 * seed, *window))
            assert peaks, f"no peak at the tip of rod {p['id']} (seed {seed})"
            assert all(q.snr >= 5 and q.energy_eV > 0.6 for q in peaks) and len(peaks) <= 6
            assert [q.snr for q in peaks] == sorted((q.snr for q in peaks), reverse=True)
            near = min(peaks, key=lambda q: abs(q.energy_eV - dipole["energy_eV"]))
            errors.append(abs(near.energy_eV - dipole["energy_eV"]))
            assert 0.2 < near.width_eV < 1.5 and near.height > 0
    assert len(errors) >= 12
    assert max(errors) < 0.1, errors


def test_bare_film_shows_no_surface_plasmon():
    for seed in (0, 1, 2):
        scope, truth = _scope("plasmonic", seed)
        rng = np.random.default_rng(seed)
        done = 0
        while done < 4:
            x, y = rng.uniform(-450.0, 450.0, 2)
            clearance = min(
                math.hypot(x - p["center_nm"][0], y - p["center_nm"][1]) - p["bound_radius_nm"]
                for p in truth["particles"]
            )
            if clearance <= 110.0:
                continue
            done += 1
            peaks = find_peaks(scope.acquire_spectrum(x, y, 0.05, -1.0, 6.0))
            assert not [q for q in peaks if q.energy_eV < 3.5], (seed, x, y, peaks)


def test_metal_shows_the_bulk_plasmon():
    scope, truth = _scope("plasmonic", 0)
    cubes = [p for p in truth["particles"] if p["kind"] == "cube"][:3]
    for p in cubes:
        peaks = find_peaks(scope.acquire_spectrum(*p["center_nm"], 0.05, -1.0, 6.0))
        assert abs(peaks[0].energy_eV - 3.8) < 0.1, peaks


def test_window_kinds_and_garbled_channels():
    e = np.arange(1800) * 0.25 + 130.0
    rng = np.random.default_rng(0)
    core = _record(rng.poisson(2e4 * (e / 130.0) ** -3).astype(float), 130.0, 0.25)
    assert find_peaks(core) == []
    scope, _ = _scope("plasmonic", 0)
    low = scope.acquire_spectrum(0.0, 0.0, 0.02, -1.0, 4.0)
    assert find_edges(low) == []
    counts = low.counts.copy()
    counts[100:140] = np.nan
    find_peaks(_record(counts, low.energy_offset_eV, low.dispersion_eV, low.dose_e))
    counts = core.counts.copy()
    counts[900:1000] = np.nan
    find_edges(_record(counts, 130.0, 0.25))
    assert find_edges(_record(np.zeros(1800), 130.0, 0.25)) == []


def test_synthetic_edge_on_a_power_law():
    e = np.arange(1200) * 0.125 + 430.0
    bg = 3e3 * (e / 430.0) ** -3.2
    step = 0.5 * (1 + np.tanh((e - 480.0) / 0.3)) * 0.4 * bg[np.searchsorted(e, 480.0)] * (e / 480.0) ** -2
    for seed in range(5):
        rng = np.random.default_rng(seed)
        plain = find_edges(_record(rng.poisson(bg) + rng.normal(0, 1, e.size), 430.0, 0.125))
        assert plain == [], plain
        edges = find_edges(_record(rng.poisson(bg + step).astype(float), 430.0, 0.125))
        assert len(edges) == 1 and abs(edges[0].onset_eV - 480.0) < 1.5, edges
        assert 1.25 < edges[0].jump_ratio < 1.45 and edges[0].snr > 20 and edges[0].element is None


# --------------------------------------------------------------------- core loss
@pytest.fixture(scope="module")
def tmd():
    return [_scope("tmd-defects", seed) for seed in (0, 1)]


def _sites(truth, kind: str) -> np.ndarray:
    return np.array([(d["x_nm"], d["y_nm"]) for d in truth["defects"] if d["type"] == kind]).reshape(-1, 2)


def _far(points: np.ndarray, others: np.ndarray, distance_nm: float) -> np.ndarray:
    if not len(others):
        return points
    d = np.hypot(points[:, None, 0] - others[None, :, 0], points[:, None, 1] - others[None, :, 1])
    return points[d.min(axis=1) > distance_nm]


def test_every_column_shows_sulphur_and_molybdenum(tmd):
    n = n_mo = 0
    for seed, (scope, truth) in enumerate(tmd):
        sample = scope._sample  # column positions only, to place the probe
        cols = np.concatenate([sample.column_positions_nm("metal"), sample.column_positions_nm("chalcogen")])
        cols = _far(cols, _sites(truth, "W_Mo"), 1.0)
        rng = np.random.default_rng(10 + seed)
        for x, y in cols[rng.choice(len(cols), 8, replace=False)]:
            edges = find_edges(scope.acquire_spectrum(x, y, 0.5, 130.0, 580.0))
            s = [ed for ed in edges if ed.element == "S"]
            assert len(s) == 1 and abs(s[0].onset_eV - 165.0) < 2.5 and s[0].jump_ratio > 1.5, edges
            assert all(ed.snr >= 5 for ed in edges) and len(edges) <= 6
            n += 1
            n_mo += any(ed.element == "Mo" and ed.edge == "M4,5" for ed in edges)
    assert n_mo >= 0.8 * n, (n_mo, n)


def test_oxygen_only_on_oxygen_sites(tmd):
    for seed, (scope, truth) in enumerate(tmd):
        oxygen = _sites(truth, "O_S")
        for x, y in oxygen:
            o = [
                ed for ed in find_edges(scope.acquire_spectrum(x, y, 0.5, 130.0, 580.0)) if ed.element == "O"
            ]
            assert len(o) == 1 and abs(o[0].onset_eV - 532.0) < 3.0, (seed, x, y, o)
        chalcogen = scope._sample.column_positions_nm("chalcogen")
        defects = np.array([(d["x_nm"], d["y_nm"]) for d in truth["defects"]])
        pristine = _far(_far(chalcogen, defects, 0.7), oxygen, 1.5)
        rng = np.random.default_rng(20 + seed)
        for x, y in pristine[rng.choice(len(pristine), 6, replace=False)]:
            edges = find_edges(scope.acquire_spectrum(x, y, 0.5, 130.0, 580.0))
            assert "O" not in _elements(edges), (seed, x, y, edges)


def test_titanium_valence_shifts_the_onset_across_the_interface():
    shifts = {0.1: [], 0.5: []}
    for seed in (0, 1):
        scope, truth = _scope("oxide-interface", seed)
        prof = truth["interface_profile"]
        rng = np.random.default_rng(seed)
        for rep in range(4):
            dwell = 0.1 if rep == 0 else 0.5
            y = rng.uniform(-10.0, 10.0)
            x_i = float(np.interp(y, prof["y_nm"], prof["interface_x_nm"]))
            onset = {}
            for side, x in (
                ("LaTiO3", x_i - rng.uniform(4.0, 10.0)),
                ("SrTiO3", x_i + rng.uniform(4.0, 10.0)),
            ):
                edges = find_edges(scope.acquire_spectrum(x, y, dwell, 430.0, 580.0))
                ti = [ed for ed in edges if ed.element == "Ti"]
                o = [ed for ed in edges if ed.element == "O"]
                assert len(ti) == 1 and 454.0 <= ti[0].onset_eV <= 458.0, (side, edges)
                assert len(o) == 1 and abs(o[0].onset_eV - 530.0) < 2.5, (side, edges)
                assert len(edges) == 2, edges
                onset[side] = ti[0].onset_eV
            shifts[dwell].append(onset["SrTiO3"] - onset["LaTiO3"])
    assert all(1.0 <= d <= 3.0 for d in shifts[0.5]), shifts
    assert all(d > 0.0 for d in shifts[0.1]), shifts
