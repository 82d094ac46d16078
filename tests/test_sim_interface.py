"""Physics of the "oxide-interface" scenario (LaTiO3/SrTiO3, Ti valence across the interface)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pymatgen.core import Structure

from autoscope.instruments.dose import DoseMap
from autoscope.instruments.sim.eels import edge_onset_eV, fit_power_law
from autoscope.instruments.sim.interface import (
    A_NM,
    REDUCTION_DOSE_E_PER_A2,
    RESOLUTION_FWHM_EV,
    TI3_L23,
    TI4_L23,
    OxideInterfaceSample,
)

SIGMA = 0.08 / 2.3548
E = np.arange(430.0, 480.0, 0.125)
PRE = (435.0, 452.0)
ONSET_WINDOW = (450.0, 470.0)


@pytest.fixture(scope="module")
def oxide() -> OxideInterfaceSample:
    return OxideInterfaceSample(np.random.default_rng(21))


def ti_l(s: OxideInterfaceSample, x: float, y: float) -> np.ndarray:
    sp = s.spectrum(x, y, E, SIGMA)
    return sp - fit_power_law(E, sp, PRE)


def onset(s: OxideInterfaceSample, x: float, y: float) -> float:
    return edge_onset_eV(E, ti_l(s, x, y), ONSET_WINDOW)


def terrace_row(s: OxideInterfaceSample) -> tuple[float, float]:
    """(y of a B-site row in the middle of a terrace, interface x there)."""
    t = s.truth()["interface_profile"]
    xi = np.array(t["interface_x_nm"])
    for k in range(len(xi) // 2, len(xi) - 3):
        if np.all(xi[k - 3 : k + 4] == xi[k]):
            return t["y_nm"][k] + A_NM / 2, float(xi[k])
    raise AssertionError("no terrace of 7 rows")


def test_built_from_a_cubic_srtio3_cell(oxide):
    cell = oxide.unit_cell
    assert isinstance(cell, Structure) and cell.composition.reduced_formula == "SrTiO3"
    assert cell.lattice.abc == pytest.approx((3.905, 3.905, 3.905))
    n_cells = (oxide.kind == "A").sum()
    assert (oxide.kind == "B").sum() == n_cells and (oxide.kind == "O").sum() == 2 * n_cells
    x0, x1, _, _ = oxide.extent_nm
    assert 20 <= x1 - x0 <= 60


def test_la_columns_brighter_and_interface_stepped(oxide):
    a = oxide.kind == "A"
    xy = oxide.columns.xy_nm[a]
    s = oxide.column_s_nm[a]
    inner = (np.abs(xy) < 15).all(axis=1)
    la = oxide.haadf(xy[inner & (s < -3), 0], xy[inner & (s < -3), 1], SIGMA)
    sr = oxide.haadf(xy[inner & (s > 3), 0], xy[inner & (s > 3), 1], SIGMA)
    assert np.median(la) / np.median(sr) == pytest.approx((57 / 38) ** 1.7, rel=0.08)
    t = oxide.truth()
    steps = np.diff(t["interface_profile"]["interface_x_nm"])
    assert np.all(np.isclose(steps, 0) | np.isclose(np.abs(steps), A_NM)) and np.any(steps != 0)


def test_ti_l_onset_shifts_by_the_modelled_amount(oxide):
    y, xi = terrace_row(oxide)
    t = oxide.truth()
    on_lto, on_sto = onset(oxide, xi - 5.0, y), onset(oxide, xi + 5.0, y)
    assert on_lto == pytest.approx(t["edge_onsets_eV"]["LaTiO3"]["Ti_L3"], abs=0.05)
    assert on_sto == pytest.approx(t["edge_onsets_eV"]["SrTiO3"]["Ti_L3"], abs=0.05)
    assert on_sto - on_lto == pytest.approx(t["onset_shift_eV"], abs=0.1)
    assert 1.0 < t["onset_shift_eV"] < 2.5  # Ti3+ vs Ti4+


def test_onset_and_valence_change_monotonically_across_the_intermixing_width(oxide):
    y, xi = terrace_row(oxide)
    xs = xi + np.arange(-3.0, 3.0, A_NM / 4)
    onsets = np.array([onset(oxide, x, y) for x in xs])
    assert np.all(np.diff(onsets) >= -0.02)
    assert onsets[-1] - onsets[0] > 1.0
    # the Ti4+ fraction from a two-reference least-squares fit follows the modelled valence profile
    refs = np.column_stack([r.cross_section(E, RESOLUTION_FWHM_EV) for r in (TI4_L23, TI3_L23)])
    sel = (E > 452) & (E < 475)
    fitted = []
    for x in xs:
        c4, c3 = np.linalg.lstsq(refs[sel], ti_l(oxide, x, y)[sel], rcond=None)[0]
        fitted.append(3.0 + c4 / (c4 + c3))
    fitted = np.array(fitted)
    assert np.all(np.diff(fitted) > -0.01)
    prof = oxide.truth()["valence_vs_distance"]
    expected = np.interp(xs - xi, prof["distance_nm"], prof["ti_valence"])
    np.testing.assert_allclose(fitted, expected, atol=0.1)
    # smooth: the 10–90 % rise spans the modelled valence width (2.56 σ), not one column
    rise = np.interp([3.1, 3.9], fitted, xs)
    assert rise[1] - rise[0] == pytest.approx(2.563 * oxide.valence_width_nm, rel=0.35)


def uniform_dose(s: OxideInterfaceSample, e_per_A2: float) -> DoseMap:
    dm = DoseMap(*s.extent_nm, s.dose_cell_nm)
    dm.add_rect(*s.extent_nm, e_per_A2)
    return dm


def test_beam_reduction_shifts_the_onset_toward_ti3_with_dose():
    s = OxideInterfaceSample(np.random.default_rng(22))
    y, xi = terrace_row(s)
    x_sto, x_lto = xi + 5.0, xi - 5.0
    on0, v0, lto0 = onset(s, x_sto, y), s.ti_valence_at(x_sto, y, SIGMA), onset(s, x_lto, y)
    s.apply_damage(uniform_dose(s, 1e-3 * REDUCTION_DOSE_E_PER_A2), np.random.default_rng(0))
    assert onset(s, x_sto, y) == pytest.approx(on0, abs=0.01)  # far below the dose scale: no change
    ons, vals = [on0], [v0]
    for f in (0.05, 0.2, 0.5, 1.0, 3.0):
        s.apply_damage(uniform_dose(s, f * REDUCTION_DOSE_E_PER_A2), np.random.default_rng(0))
        ons.append(onset(s, x_sto, y))
        vals.append(s.ti_valence_at(x_sto, y, SIGMA))
    assert np.all(np.diff(vals) < 0) and np.all(np.diff(ons) <= 0.01)
    assert ons[-1] < on0 - 1.5 and vals[-1] < 3.1  # reduced to (nearly) Ti3+
    assert onset(s, x_lto, y) == pytest.approx(lto0, abs=0.01)  # Ti3+ cannot be reduced further
    # never heals: a later, smaller dose map leaves the damage in place
    s.apply_damage(uniform_dose(s, 0.0), np.random.default_rng(0))
    assert s.ti_valence_at(x_sto, y, SIGMA) == pytest.approx(vals[-1])
    red = json.loads(json.dumps(s.truth()))["reduction"]
    assert red["max_o_loss"] == pytest.approx(0.5 * (1 - np.exp(-3.0)), rel=1e-6)


def test_seed_decides_the_sample_and_truth_is_json():
    a, b, c = (OxideInterfaceSample(np.random.default_rng(k)) for k in (5, 5, 6))
    assert json.dumps(a.truth()) == json.dumps(b.truth())
    assert np.array_equal(a.columns.weights, b.columns.weights)
    assert a.truth()["interface_profile"] != c.truth()["interface_profile"]
    t = json.loads(json.dumps(a.truth()))
    assert set(t["edge_onsets_eV"]) == {"LaTiO3", "SrTiO3"}
    assert np.all(np.diff(t["valence_vs_distance"]["ti_valence"]) >= 0)


def test_through_the_microscope_the_onset_shift_is_measurable():
    scenarios = pytest.importorskip("autoscope.instruments.sim.scenarios")
    from autoscope.instruments.sim.oracle import Oracle

    scope = scenarios.make_microscope("oxide-interface", seed=3)
    truth = Oracle(scope).truth()
    y, xi = terrace_row(scenarios.build_sample("oxide-interface", 3))
    scope.unblank_beam()
    img = scope.acquire_image(fov_nm=8.0, pixels=128, dwell_s=4e-6)
    assert img.data.shape == (128, 128) and img.data.mean() > 0
    spectra = [scope.acquire_spectrum(x, y, 0.1, 430.0, 480.0) for x in (xi - 5.0, xi + 5.0)]
    on = []
    for rec in spectra:
        e, c = rec.energy_eV, rec.counts
        sig = c - fit_power_law(e, c, PRE)
        smooth = np.convolve(sig, np.ones(3) / 3, mode="same")  # 3-channel running mean
        on.append(edge_onset_eV(e, smooth, ONSET_WINDOW))
    assert on[1] - on[0] == pytest.approx(truth["onset_shift_eV"], abs=0.3)


def test_o_k_pre_peak_weakens_on_the_ti3_side(oxide):
    y, xi = terrace_row(oxide)
    e = np.arange(500.0, 560.0, 0.125)

    def pre_peak_ratio(x: float) -> float:
        # O columns sit between Ti columns: average a few probe positions over one cell
        sig = sum(
            (sp := oxide.spectrum(x + dx, y + dy, e, SIGMA)) - fit_power_law(e, sp, (505.0, 527.0))
            for dx in (0.0, A_NM / 2)
            for dy in (0.0, -A_NM / 2)
        )
        return float(sig[(e > 529.5) & (e < 531.8)].sum() / sig[(e > 534.0) & (e < 550.0)].sum())

    assert pre_peak_ratio(xi - 5.0) < 0.7 * pre_peak_ratio(xi + 5.0)
