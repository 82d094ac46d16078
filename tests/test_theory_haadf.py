"""Probe physics and HAADF image simulation (theory/probe.py, theory/haadf.py, theory/abtem_backend.py)."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

from autoscope.instruments.sim.scenarios import build_sample
from autoscope.theory import structures as st
from autoscope.theory.abtem_backend import AbtemNotInstalled
from autoscope.theory.haadf import simulate_haadf
from autoscope.theory.probe import (
    ProbeSpec,
    probe_fwhm_nm,
    probe_intensity,
    wavelength_nm,
)

MO_Z17, S_Z17 = 42**1.7, 16**1.7
# MoS2 rect cell columns (sample frame, nm) of mos2_monolayer((1, 1))
MO_COLUMNS = [(0.0, 0.18244), (0.316, 0.18244), (0.158, 0.45611)]
S2_COLUMNS = [(0.158, 0.09122), (0.316, 0.36489), (0.0, 0.36489)]


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / math.sqrt((a * a).sum() * (b * b).sum()))


def _peak(img: np.ndarray, x_nm: float, y_nm: float, fov_nm: float, center: tuple[float, float]):
    """Sub-pixel peak (x, y) nm near a column and its height above the image minimum."""
    n = img.shape[0]
    p = fov_nm / n
    r0 = int(round((y_nm - center[1] + fov_nm / 2) / p - 0.5))
    c0 = int(round((x_nm - center[0] + fov_nm / 2) / p - 0.5))
    win = img[r0 - 1 : r0 + 2, c0 - 1 : c0 + 2]
    i, j = np.unravel_index(int(np.argmax(win)), win.shape)
    r0, c0 = r0 + i - 1, c0 + j - 1

    def vertex(a: float, b: float, c: float) -> float:
        return 0.5 * (a - c) / (a - 2 * b + c)

    dr = vertex(img[r0 - 1, c0], img[r0, c0], img[r0 + 1, c0])
    dc = vertex(img[r0, c0 - 1], img[r0, c0], img[r0, c0 + 1])
    x = center[0] - fov_nm / 2 + (c0 + dc + 0.5) * p
    y = center[1] - fov_nm / 2 + (r0 + dr + 0.5) * p
    return np.array([x, y]), float(img[r0, c0] - img.min())


# ----------------------------------------------------------------------------- probe
def test_relativistic_wavelength() -> None:
    assert wavelength_nm(80) == pytest.approx(0.0041757, rel=1e-4)  # Kirkland table: 0.04176 Å
    assert wavelength_nm(200) == pytest.approx(0.0025079, rel=1e-4)
    assert wavelength_nm(300) == pytest.approx(0.0019687, rel=1e-4)


def test_aberration_free_probe_is_an_airy_disc() -> None:
    for kv, mrad in [(80, 30), (200, 25)]:
        probe = ProbeSpec(voltage_kV=kv, convergence_mrad=mrad, source_fwhm_nm=0.0)
        airy = 1.029 * wavelength_nm(kv) / (2 * mrad * 1e-3)
        assert probe_fwhm_nm(probe) == pytest.approx(airy, rel=0.03)


def test_default_80kv_probe_fwhm_and_normalisation() -> None:
    probe = ProbeSpec()
    assert 0.08 <= probe_fwhm_nm(probe) <= 0.10
    img = probe_intensity(probe, 128, 0.01)
    assert img.sum() == pytest.approx(1.0)
    assert np.unravel_index(int(np.argmax(img)), img.shape) == (64, 64)


def test_defocus_and_spherical_aberration_spread_the_probe() -> None:
    peaks = [probe_intensity(ProbeSpec(defocus_nm=df, source_fwhm_nm=0), 128, 0.01).max() for df in (0, 2, 5)]
    assert peaks[0] > peaks[1] > peaks[2]
    # an uncorrected Cs = 1 mm at 30 mrad is far past the Scherzer aperture: the core collapses
    cs = probe_intensity(ProbeSpec(c3_mm=1.0, source_fwhm_nm=0), 128, 0.01).max()
    assert cs < 0.2 * peaks[0]


# ----------------------------------------------------------------------------- fast HAADF
def test_columns_sit_where_the_atoms_are_with_z17_contrast() -> None:
    s = st.mos2_monolayer((1, 1))
    fov, c = 0.8, (0.16, 0.3)
    img = simulate_haadf(s, fov_nm=fov, pixels=80, center_nm=c)
    mo = [_peak(img, x, y, fov, c) for x, y in MO_COLUMNS]
    s2 = [_peak(img, x, y, fov, c) for x, y in S2_COLUMNS]
    for (pos, _), want in zip(mo + s2, MO_COLUMNS + S2_COLUMNS, strict=True):
        assert np.hypot(*(pos - want)) < 0.004
    ratio = np.mean([h for _, h in mo]) / np.mean([h for _, h in s2])
    # Mo : S2 = 42^1.7 : 2·16^1.7 = 2.58, raised a little by the probe tails of the denser Mo sublattice
    assert ratio == pytest.approx(MO_Z17 / (2 * S_Z17), rel=0.12)
    flat = simulate_haadf(s, fov_nm=fov, pixels=80, center_nm=c, z_exponent=1.0)
    ratio1 = np.mean([_peak(flat, x, y, fov, c)[1] for x, y in MO_COLUMNS])
    ratio1 /= np.mean([_peak(flat, x, y, fov, c)[1] for x, y in S2_COLUMNS])
    assert ratio1 == pytest.approx(42 / 32, rel=0.12)


def test_image_follows_the_field_centre_and_is_periodic() -> None:
    s = st.mos2_monolayer((2, 1))
    a_nm, b_nm = s.lattice.abc[0] / 10, s.lattice.abc[1] / 10
    base = simulate_haadf(s, fov_nm=1.0, pixels=50, center_nm=(0.3, 0.2))
    moved = simulate_haadf(s, fov_nm=1.0, pixels=50, center_nm=(0.3 + a_nm, 0.2 + b_nm))
    # equal to the probe tails cut at the padded window's edge (< 1e-3 of the peak)
    np.testing.assert_allclose(moved, base, atol=1e-3 * base.max())
    shifted = simulate_haadf(s, fov_nm=1.0, pixels=50, center_nm=(0.3 + 0.06, 0.2))  # 3 pixels right
    np.testing.assert_allclose(shifted[:, :-3], base[:, 3:], atol=1e-3 * base.max())
    half = simulate_haadf(s, fov_nm=1.0, pixels=50, center_nm=(0.3 + a_nm / 4, 0.2))  # a/2: no translation
    assert np.abs(half - base).max() > 0.2 * base.max()


def test_coarse_pixels_sample_the_same_image_as_fine_ones() -> None:
    """A grid coarser than the probe band is oversampled internally; its pixels are point samples."""
    s = st.mos2_monolayer((2, 1))
    fine = simulate_haadf(s, fov_nm=2.0, pixels=100, center_nm=(0.1, 0.1))  # 0.02 nm
    coarse = simulate_haadf(s, fov_nm=2.0, pixels=20, center_nm=(0.1, 0.1))  # 0.1 nm
    np.testing.assert_allclose(coarse, fine[2::5, 2::5], rtol=1e-6, atol=1e-6 * fine.max())


def test_fast_model_matches_the_twins_tmd_image() -> None:
    """Same material, different optics (the twin: Gaussian probe) — the images must still agree."""
    sample = build_sample("tmd-defects", 2)
    x0, _, y0, _ = sample.extent_nm
    structure = sample.current_structure()
    structure.properties = {st.ORIGIN_KEY: [x0, y0]}
    w = next(d for d in sample.truth()["defects"] if d["type"] == "W_Mo")
    fov, n = 2.0, 100
    ax = (np.arange(n) + 0.5) * fov / n - fov / 2
    xx, yy = np.meshgrid(w["x_nm"] + ax, w["y_nm"] + ax)
    twin = sample.haadf(xx, yy, 0.09 / 2.3548)
    sim = simulate_haadf(structure, fov_nm=fov, pixels=n, center_nm=(w["x_nm"], w["y_nm"]))
    assert _ncc(twin, sim) > 0.98
    core = sim[35:65, 35:65]  # the W column is the brightest within 0.3 nm of the centre
    assert np.unravel_index(int(np.argmax(core)), core.shape) in {(14, 14), (14, 15), (15, 14), (15, 15)}


def test_bad_backends_and_options_are_refused() -> None:
    s = st.mos2_monolayer()
    with pytest.raises(ValueError, match="unknown backend"):
        simulate_haadf(s, fov_nm=1.0, pixels=16, backend="bloch")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="no options"):
        simulate_haadf(s, fov_nm=1.0, pixels=16, sampling_A=0.05)


def test_abtem_backend_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "abtem", None)  # as if not installed
    with pytest.raises(AbtemNotInstalled, match="pip install"):
        simulate_haadf(st.mos2_monolayer(), fov_nm=0.5, pixels=8, backend="abtem")


def test_fast_model_agrees_with_abtem_multislice() -> None:
    pytest.importorskip("abtem")
    s = st.mos2_monolayer((1, 1), vacuum_A=10.0)
    fov, n, c = 0.55, 16, (0.16, 0.3)
    fast = simulate_haadf(s, fov_nm=fov, pixels=n, center_nm=c)
    multi = simulate_haadf(
        s,
        fov_nm=fov,
        pixels=n,
        center_nm=c,
        backend="abtem",
        margin_nm=0.3,
        sampling_A=0.06,
        detector_mrad=(70.0, 180.0),
    )
    assert multi.shape == fast.shape
    assert 0.0 < multi.max() < 0.1  # a fraction of the beam: a Mo column scatters a few %
    heights = {}
    for name, img in (("fast", fast), ("abtem", multi)):
        mo = [_peak(img, x, y, fov, c) for x, y in MO_COLUMNS]
        s2 = [_peak(img, x, y, fov, c) for x, y in S2_COLUMNS]
        for (pos, _), want in zip(mo + s2, MO_COLUMNS + S2_COLUMNS, strict=True):
            assert np.hypot(*(pos - want)) < 0.02, name
        assert min(h for _, h in mo) > max(h for _, h in s2), name
        heights[name] = np.mean([h for _, h in mo]) / np.mean([h for _, h in s2])
    assert heights["abtem"] == pytest.approx(heights["fast"], rel=0.15)
    assert _ncc(fast, multi) > 0.97
