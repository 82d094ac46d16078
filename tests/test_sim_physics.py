"""The digital twin's instrument physics: noise, drift, dose, damage, clock, faults, validation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from autoscope.instruments import protocols
from autoscope.instruments.errors import BeamBlanked, ConnectionLost, InstrumentTimeout, InvalidRequest
from autoscope.instruments.integrity import frame_is_corrupt
from autoscope.instruments.records import NM2_TO_A2, Detector, electrons
from autoscope.instruments.sim.config import SimConfig
from autoscope.instruments.sim.oracle import Oracle
from autoscope.instruments.sim.sample import Sample
from autoscope.instruments.sim.scenarios import (
    DEFAULT_SCENARIO,
    build_sample,
    make_microscope,
    scenario_names,
)

STILL = SimConfig(drift_velocity_nm_per_s=(0.0, 0.0), drift_random_walk_nm_per_sqrt_s=0.0, line_jitter_px=0.0)


def _scope(seed: int = 0, config: SimConfig | None = None, unblank: bool = True):
    m = make_microscope("plasmonic", seed=seed, config=config)
    if unblank:
        m.unblank_beam()
    return m


def _flat_spot(m, clearance_nm: float = 60.0) -> tuple[float, float]:
    """A substrate point at least ``clearance_nm`` from every particle."""
    parts = Oracle(m).truth()["particles"]
    for x in np.linspace(-400, 400, 33):
        for y in np.linspace(-400, 400, 33):
            if all(
                math.hypot(x - p["center_nm"][0], y - p["center_nm"][1]) > p["bound_radius_nm"] + clearance_nm
                for p in parts
            ):
                return float(x), float(y)
    raise AssertionError("no flat substrate region")


def _isolated_field(m, margin_nm: float = 30.0) -> tuple[tuple[float, float], float]:
    """Centre and side of a field holding exactly one particle, well clear of the field edges."""
    parts = Oracle(m).truth()["particles"]
    for p in sorted(parts, key=lambda q: q["bound_radius_nm"]):
        fov = 2 * (p["bound_radius_nm"] + margin_nm)
        (x, y), half = p["center_nm"], fov / 2
        if all(
            abs(q["center_nm"][0] - x) > half + q["bound_radius_nm"] + 5
            or abs(q["center_nm"][1] - y) > half + q["bound_radius_nm"] + 5
            for q in parts
            if q is not p
        ):
            return (x, y), fov
    raise AssertionError("no isolated particle")


def _shift_px(a: np.ndarray, b: np.ndarray, upsample: int = 50) -> tuple[float, float]:
    """(rows, cols) by which the content of ``b`` is displaced relative to ``a``.

    FFT cross-correlation, refined by evaluating it on a fine grid around the integer
    peak with a matrix DFT (Guizar-Sicairos et al., Opt. Lett. 33, 156 (2008)).
    """
    fa, fb = np.fft.fft2(a - a.mean()), np.fft.fft2(b - b.mean())
    r = fb * np.conj(fa)
    corr = np.fft.ifft2(r).real
    peak = np.array(np.unravel_index(np.argmax(corr), corr.shape), dtype=float)
    n = np.array(corr.shape)
    peak = np.where(peak > n // 2, peak - n, peak)
    offs = np.arange(-1.5, 1.5 + 1e-9, 1.0 / upsample)
    kr, kc = np.fft.fftfreq(n[0]), np.fft.fftfreq(n[1])
    er = np.exp(2j * np.pi * np.outer(peak[0] + offs, kr))
    ec = np.exp(2j * np.pi * np.outer(kc, peak[1] + offs))
    fine = (er @ r @ ec).real
    i, j = np.unravel_index(np.argmax(fine), fine.shape)
    return float(peak[0] + offs[i]), float(peak[1] + offs[j])


def test_implements_every_protocol_and_hides_the_sample():
    m = _scope(unblank=False)
    for proto in ("Imaging", "Spectroscopy", "Beam", "Stage", "Status", "Clock", "Microscope"):
        assert isinstance(m, getattr(protocols, proto)), proto
    assert m.backend == "sim"
    assert m.beam_blanked()
    public = [getattr(m, a) for a in dir(m) if not a.startswith("_")]
    assert not any(isinstance(v, Sample) for v in public)
    assert scenario_names() == ["plasmonic", "tmd-defects", "oxide-interface"]
    assert DEFAULT_SCENARIO == "plasmonic"


def test_unknown_scenario_names_the_known_ones():
    with pytest.raises(InvalidRequest) as err:
        build_sample("graphene", 0)
    assert err.value.field == "scenario"
    assert "plasmonic" in str(err.value) and "oxide-interface" in str(err.value)


def test_snr_of_flat_region_grows_as_sqrt_dose():
    m = _scope(seed=2)
    m.move_stage(*_flat_spot(m))
    dwells = [10e-6, 40e-6, 160e-6, 640e-6]
    snr = []
    for dwell in dwells:
        d = m.acquire_image(30.0, 48, dwell).data.astype(np.float64)
        snr.append(d.mean() / d.std())
    ratio = np.array(snr) / snr[0]
    expected = np.sqrt(np.array(dwells) / dwells[0])
    np.testing.assert_allclose(ratio, expected, rtol=0.15)
    assert snr[-1] > 6 * snr[0]


def test_image_mean_matches_expected_counts():
    m = _scope(seed=5, config=STILL)
    rec = m.acquire_image(400.0, 128, 20e-6)
    ys, xs = np.meshgrid(*[np.arange(128)] * 2, indexing="ij")
    x_nm, y_nm = rec.pixel_to_nm(ys, xs)
    m2 = _scope(seed=5, config=STILL)  # undamaged twin for the expectation
    expected = (
        electrons(rec.current_pA, rec.dwell_s) * STILL.haadf_efficiency * Oracle(m2).true_haadf(x_nm, y_nm)
    )
    assert rec.data.mean() == pytest.approx(expected.mean(), rel=0.01)
    assert np.corrcoef(rec.data.ravel(), expected.ravel())[0, 1] > 0.95


def test_drift_moves_a_feature_by_the_configured_amount():
    v = (0.05, -0.03)
    cfg = SimConfig(drift_velocity_nm_per_s=v, drift_random_walk_nm_per_sqrt_s=0.0, line_jitter_px=0.0)
    m = _scope(seed=1, config=cfg)
    centre, fov = _isolated_field(m)
    m.move_stage(*centre)
    n, dwell = 128, 5e-6
    a = m.acquire_image(fov, n, dwell)
    m.blank_beam()
    m.wait(120.0)
    m.unblank_beam()
    b = m.acquire_image(fov, n, dwell)
    dt = b.t_start_s - a.t_start_s
    px = fov / n
    rows, cols = _shift_px(a.data.astype(float), b.data.astype(float))
    assert cols == pytest.approx(v[0] * dt / px, abs=0.25)
    assert rows == pytest.approx(v[1] * dt / px, abs=0.25)
    assert abs(cols) > 2.0  # a real, multi-pixel displacement
    dx, dy = Oracle(m).drift_nm(b.t_start_s)
    assert dx == pytest.approx(v[0] * b.t_start_s) and dy == pytest.approx(v[1] * b.t_start_s)


def test_same_seed_identical_different_seed_differs():
    def run(seed: int):
        m = _scope(seed=seed)
        img = m.acquire_image(200.0, 64, 5e-6).data
        spec = m.acquire_spectrum(10.0, -20.0, 0.01, -1.0, 5.0).counts
        m.move_stage(50.0, 50.0)
        img2 = m.acquire_image(200.0, 64, 5e-6).data
        return img, spec, img2, m.now_s()

    a, b, c = run(7), run(7), run(8)
    for x, y in zip(a[:3], b[:3], strict=True):
        assert np.array_equal(x, y)
    assert a[3] == b[3]
    assert not np.array_equal(a[0], c[0])
    assert not np.array_equal(a[1], c[1])


def test_dose_bookkeeping():
    m = _scope(seed=0, config=STILL)
    cur = m.beam_current_pA()
    rec = m.acquire_image(200.0, 64, 3e-6)
    assert rec.dose_e == pytest.approx(electrons(cur, 3e-6 * 64 * 64))
    assert rec.dose_e_per_A2 == pytest.approx(rec.dose_e / (200.0**2 * NM2_TO_A2))
    dose = Oracle(m).dose_map()
    cell_A2 = dose.cell_nm**2 * NM2_TO_A2
    assert dose.e_per_A2.sum() * cell_A2 == pytest.approx(rec.dose_e, rel=1e-9)
    assert dose.at(0.0, 0.0) == pytest.approx(rec.dose_e_per_A2)
    spec = m.acquire_spectrum(30.0, 40.0, 0.2, -1.0, 5.0)
    assert spec.dose_e == pytest.approx(electrons(cur, 0.2))
    assert spec.dose_e_per_A2 == pytest.approx(spec.dose_e / (math.pi * 0.5**2 * NM2_TO_A2))
    assert dose.e_per_A2.sum() * cell_A2 == pytest.approx(rec.dose_e + spec.dose_e, rel=1e-9)
    assert m.status().total_dose_e == pytest.approx(rec.dose_e + spec.dose_e)
    assert m.status().acquisitions == 2


def test_stage_moves_expose_only_when_unblanked():
    cfg = STILL
    m = _scope(seed=0, config=cfg, unblank=False)
    m.move_stage(100.0, 0.0)
    assert Oracle(m).dose_map().peak == 0.0 and m.status().total_dose_e == 0.0
    m.unblank_beam()
    t0 = m.now_s()
    m.move_stage(200.0, 0.0)
    move_s = 100.0 / cfg.stage_speed_nm_per_s + cfg.stage_settle_s
    assert m.now_s() - t0 == pytest.approx(move_s)
    assert m.status().total_dose_e == pytest.approx(electrons(m.beam_current_pA(), move_s))
    dose = Oracle(m).dose_map()
    assert dose.at(200.0, 0.0) > dose.at(150.0, 0.0) > 0.0  # the settle spot outshines the streak
    assert dose.at(150.0, 30.0) == 0.0


def test_clock_advances_by_modelled_costs():
    cfg = SimConfig()
    m = _scope(config=cfg)
    t0 = m.now_s()
    rec = m.acquire_image(100.0, 64, 2e-6)
    cost = 64 * 64 * 2e-6 + 64 * cfg.line_flyback_s + cfg.frame_overhead_s
    assert (rec.t_start_s, rec.t_end_s) == (pytest.approx(t0), pytest.approx(t0 + cost))
    spec = m.acquire_spectrum(0.0, 0.0, 0.3, -1.0, 4.0)
    assert spec.t_end_s - spec.t_start_s == pytest.approx(0.3 + cfg.spectrum_readout_s)
    t1 = m.now_s()
    m.move_stage(-30.0, 40.0)
    assert m.now_s() - t1 == pytest.approx(50.0 / cfg.stage_speed_nm_per_s + cfg.stage_settle_s)
    assert m.status().clock_s == m.now_s()


def test_blanked_beam_refuses_to_acquire():
    m = _scope(unblank=False)
    with pytest.raises(BeamBlanked):
        m.acquire_image(100.0, 32, 1e-6)
    with pytest.raises(BeamBlanked):
        m.acquire_spectrum(0.0, 0.0, 0.1, -1.0, 5.0)
    assert m.now_s() == 0.0 and m.status().total_dose_e == 0.0


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda m: m.acquire_image(5000.0, 64, 1e-6), "fov_nm"),
        (lambda m: m.acquire_image(100.0, 4, 1e-6), "pixels"),
        (lambda m: m.acquire_image(100.0, 64, -1.0), "dwell_s"),
        (lambda m: m.acquire_spectrum(1500.0, 0.0, 0.1, -1.0, 5.0), "x_nm"),
        (lambda m: m.acquire_spectrum(0.0, -1200.0, 0.1, -1.0, 5.0), "y_nm"),
        (lambda m: m.acquire_spectrum(0.0, 0.0, 0.1, -10.0, 5.0), "energy_min_eV"),
        (lambda m: m.acquire_spectrum(0.0, 0.0, 0.1, -1.0, 50.0), "energy_max_eV"),
        (lambda m: m.set_beam_current(1e5), "current_pA"),
        (lambda m: m.move_stage(600.0, 0.0), "x_nm"),
        (lambda m: m.move_stage(0.0, float("nan")), "y_nm"),
        (lambda m: m.move_probe(0.0, 2000.0), "y_nm"),
    ],
)
def test_bad_requests_name_the_field(call, field):
    m = _scope()
    with pytest.raises(InvalidRequest) as err:
        call(m)
    assert err.value.field == field
    assert m.status().acquisitions == 0


def test_damage_accumulates_with_dose_and_changes_measurements():
    m = _scope(seed=3, config=STILL)
    o = Oracle(m)
    rod = next(p for p in o.truth()["particles"] if p["kind"] == "rod")
    dip = rod["modes"][0]
    tip = np.array(dip["hot_spots_nm"][0])
    spot = tip + 4.0 * (tip - np.array(rod["center_nm"])) / np.linalg.norm(tip - np.array(rod["center_nm"]))
    m.move_stage(*spot)
    e = np.arange(-1.0, 4.0, 0.025)
    window = np.abs(e - dip["energy_eV"]) < 0.2
    before = m.acquire_image(24.0, 64, 50e-6)
    truth_peak, measured_peak, haadf = [], [], []
    for _ in range(12):
        truth_peak.append(o.true_spectrum(*spot, e)[window].sum())
        haadf.append(float(o.true_haadf(np.array([spot[0] + 1.0]), np.array([spot[1]]))[0]))
        s = m.acquire_spectrum(*spot, 1.0, -1.0, 4.0)
        measured_peak.append(s.counts[window].sum() / s.dose_e)
    assert np.all(np.diff(truth_peak) < 0) and np.all(np.diff(haadf) > 0)
    assert truth_peak[-1] < 0.6 * truth_peak[0]
    assert measured_peak[-1] < 0.7 * measured_peak[0]
    after = m.acquire_image(24.0, 64, 50e-6)
    r, c = (int(round(v)) for v in after.nm_to_pixel(*spot))
    centre = (slice(r - 2, r + 3), slice(c - 2, c + 3))
    assert after.data[centre].mean() > before.data[centre].mean() * 1.05


@pytest.mark.parametrize(
    ("key", "error"), [("timeout_rate", InstrumentTimeout), ("disconnect_rate", ConnectionLost)]
)
def test_failures_still_cost_dose_and_time(key, error):
    cfg = SimConfig(**{key: 1.0})
    m = _scope(config=cfg)
    with pytest.raises(error):
        m.acquire_image(100.0, 32, 1e-6)
    assert m.status().total_dose_e == pytest.approx(electrons(m.beam_current_pA(), 32 * 32 * 1e-6))
    t = m.now_s()
    with pytest.raises(error):
        m.acquire_spectrum(0.0, 0.0, 0.1, -1.0, 5.0)
    assert m.now_s() > t + 0.1
    assert m.status().acquisitions == 0


def test_corrupted_frames_are_detected_and_clean_ones_pass():
    bad = _scope(seed=4, config=SimConfig(corrupt_frame_rate=1.0))
    good = _scope(seed=4)
    sat = bad.config.saturation_counts
    for k in range(8):
        assert frame_is_corrupt(bad.acquire_image(300.0, 64, 2e-6).data, sat), k
        assert frame_is_corrupt(bad.acquire_spectrum(0.0, 0.0, 0.01, -1.0, 6.0).counts, sat), k
    parts = Oracle(good).truth()["particles"]
    cube = next(p for p in parts if p["kind"] == "cube")
    for k in range(8):
        good.move_stage(*cube["center_nm"])
        for det in (Detector.HAADF, Detector.BF):
            assert not frame_is_corrupt(good.acquire_image(150.0, 64, 2e-6 * (k + 1), det).data, sat), k
        assert not frame_is_corrupt(good.acquire_spectrum(*cube["center_nm"], 0.01, -1.0, 6.0).counts, sat)
        assert not frame_is_corrupt(good.acquire_image(300.0, 64, 1e-7).data, sat)  # very low dose


def test_integrity_check_on_synthetic_frames():
    rng = np.random.default_rng(0)
    img = rng.poisson(50.0, (32, 32)).astype(float)
    assert not frame_is_corrupt(img)
    img[5, :] = img.max() + 100
    assert frame_is_corrupt(img)
    img2 = rng.poisson(50.0, (32, 32)).astype(float)
    img2[3, 4] = np.nan
    assert frame_is_corrupt(img2)
    spec = rng.poisson(np.linspace(1000, 10, 200)).astype(float)
    assert not frame_is_corrupt(spec)
    spec[50:60] = 65535.0
    assert frame_is_corrupt(spec, 65535.0)


def test_drift_random_walk_has_the_configured_diffusion():
    cfg = SimConfig(drift_velocity_nm_per_s=(0.01, 0.0), drift_random_walk_nm_per_sqrt_s=0.02)
    m = _scope(seed=6, config=cfg, unblank=False)
    o = Oracle(m)
    pos = []
    for _ in range(1500):
        m.wait(4.0)
        pos.append(o.drift_nm())
    steps = np.diff(np.array(pos), axis=0)
    assert steps.mean(axis=0) == pytest.approx([0.04, 0.0], abs=0.004)
    assert steps.std(axis=0) == pytest.approx([0.04, 0.04], rel=0.08)  # σ √(4 s)
