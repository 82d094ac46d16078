"""Physics of the "tmd-defects" scenario (MoS2 monolayer with point defects) and of column rendering."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from pymatgen.core import Structure

from autoscope.instruments.dose import DoseMap
from autoscope.instruments.sim.crystal2d import (
    CONTAMINATION_FRACTION,
    LATTICE_A_ANG,
    S_SPUTTER_CROSS_SECTION_A2,
    TMDSample,
)
from autoscope.instruments.sim.eels import edge_onset_eV, fit_power_law
from autoscope.instruments.sim.render import ColumnSet, gaussian2d

SIGMA = 0.09 / 2.3548  # probe σ of the scenario (nm)
E = np.arange(100.0, 600.0, 0.25)


@pytest.fixture(scope="module")
def tmd() -> TMDSample:
    return TMDSample(np.random.default_rng(7))


def fresh(seed: int = 7) -> TMDSample:
    return TMDSample(np.random.default_rng(seed))


def peak(s: TMDSample, x: float, y: float) -> float:
    return float(s.haadf(np.array([x]), np.array([y]), SIGMA)[0]) - CONTAMINATION_FRACTION


def defects(s: TMDSample, kind: str) -> list[dict]:
    return [d for d in s.defects if d["type"] == kind]


def pristine_columns(s: TMDSample, kind: str, n: int = 40) -> np.ndarray:
    """Columns at least 0.7 nm from any seeded defect and 1 nm inside the flake."""
    xy = s.column_positions_nm(kind)
    dxy = np.array([[d["x_nm"], d["y_nm"]] for d in s.defects])
    far = np.min(np.hypot(*(xy[:, None, :] - dxy[None]).transpose(2, 0, 1)), axis=1) > 0.7
    inside = (np.abs(xy) < 5.0).all(axis=1)
    return xy[far & inside][:n]


def edge_signal(s: TMDSample, x: float, y: float, pre: tuple[float, float], window: tuple[float, float]):
    sp = s.spectrum(x, y, E, SIGMA)
    sig = sp - fit_power_law(E, sp, pre)
    sel = (E >= window[0]) & (E <= window[1])
    return sig, float(sig[sel].sum())


# ------------------------------------------------------------------ structure
def test_structure_is_a_pymatgen_1h_mos2_supercell(tmd):
    cell = tmd.unit_cell
    assert isinstance(cell, Structure)
    assert cell.lattice.a == pytest.approx(LATTICE_A_ANG) and cell.lattice.gamma == pytest.approx(120.0)
    assert cell.composition.reduced_formula == "MoS2"
    sc = tmd.pristine_structure
    assert sc.composition.reduced_formula == "MoS2" and len(sc) > 3000
    # ~12 nm square field, c kept as the vacuum spacing
    x0, x1, y0, y1 = tmd.extent_nm
    assert 10 < x1 - x0 < 14 and 10 < y1 - y0 < 14
    # both S of a chalcogen column project onto the same point, 3.17 Å apart along c
    assert len(tmd.column_positions_nm("chalcogen")) == len(tmd.column_positions_nm("metal"))
    comp = tmd.current_structure().composition
    n_w, n_se, n_o = (len(defects(tmd, k)) for k in ("W_Mo", "Se_S", "O_S"))
    n_missing = len(defects(tmd, "V_S")) + 2 * len(defects(tmd, "V_S2"))
    assert comp["W"] == n_w and comp["Se"] == n_se and comp["O"] == n_o
    assert comp["S"] == sc.composition["S"] - n_missing - n_se - n_o


def test_seed_decides_the_sample():
    a, b, c = fresh(3), fresh(3), fresh(4)
    assert a.truth() == b.truth()
    x = np.linspace(-2, 2, 64)
    X, Y = np.meshgrid(x, x)
    assert np.array_equal(a.haadf(X, Y, SIGMA), b.haadf(X, Y, SIGMA))
    assert a.truth()["defects"] != c.truth()["defects"]


def test_truth_is_json_and_lists_defects(tmd):
    t = json.loads(json.dumps(tmd.truth()))
    assert t["lattice_a_nm"] == pytest.approx(0.316)
    kinds = {d["type"] for d in t["defects"]}
    assert kinds == {"W_Mo", "Se_S", "O_S", "V_S", "V_S2"}
    assert all(tmd.extent_nm[0] < d["x_nm"] < tmd.extent_nm[1] for d in t["defects"])
    assert t["sputtered"] == [] and t["n_sputtered"] == 0


# ------------------------------------------------------------------ HAADF
def test_z_contrast_of_columns_and_defects(tmd):
    mo = np.median([peak(tmd, x, y) for x, y in pristine_columns(tmd, "metal")])
    s2 = np.median([peak(tmd, x, y) for x, y in pristine_columns(tmd, "chalcogen")])
    # Z^1.7: Mo (42) vs 2 × S (16) → 2.6
    assert mo / s2 == pytest.approx((42 / 16) ** 1.7 / 2, rel=0.03)
    assert 0.01 < mo < 0.06  # a few per cent of the beam on a metal column
    vs = [peak(tmd, d["x_nm"], d["y_nm"]) / s2 for d in defects(tmd, "V_S")]
    assert np.allclose(vs, 0.5, atol=0.02)  # one S of two left
    assert all(peak(tmd, d["x_nm"], d["y_nm"]) / s2 < 0.01 for d in defects(tmd, "V_S2"))
    w = [peak(tmd, d["x_nm"], d["y_nm"]) / mo for d in defects(tmd, "W_Mo")]
    assert min(w) > 2.4  # (74/42)^1.7 = 2.6
    se = [peak(tmd, d["x_nm"], d["y_nm"]) / s2 for d in defects(tmd, "Se_S")]
    assert np.allclose(se, (16**1.7 + 34**1.7) / (2 * 16**1.7), rtol=0.03)


def test_render_matches_direct_sum_on_sheared_points():
    rng = np.random.default_rng(0)
    # a uniform scatter plus a tight cluster of 30 (more neighbours than the first query asks for)
    xy = np.vstack([rng.uniform(-2, 2, (300, 2)), 0.3 + rng.normal(0, 0.03, (30, 2))])
    w = rng.uniform(0.5, 2.0, len(xy))
    cols = ColumnSet(xy[:, 0], xy[:, 1], w)
    u = np.linspace(-1.5, 1.5, 40)
    X, Y = np.meshgrid(u, u)
    X = X + 0.07 * Y + 0.0123  # drift shear and a sub-pixel offset
    for sigma in (0.03, 0.08, 0.15, 0.6):  # KD-tree neighbour sums (exact to the cut-off), then splatting
        direct = (w * gaussian2d((X[..., None] - xy[:, 0]) ** 2 + (Y[..., None] - xy[:, 1]) ** 2, sigma)).sum(
            -1
        )
        tol = 1e-4 if sigma < 0.1 else 5e-3
        np.testing.assert_allclose(cols.render(X, Y, sigma), direct, rtol=tol, atol=tol * direct.max())


def test_wider_probe_conserves_the_mean_signal(tmd):
    u = np.linspace(-3, 3, 300)
    X, Y = np.meshgrid(u, u)
    sharp, blurred = tmd.haadf(X, Y, SIGMA).mean(), tmd.haadf(X, Y, 0.3).mean()
    assert blurred == pytest.approx(sharp, rel=0.02)


# ------------------------------------------------------------------ EELS
def test_s_l23_edge_onset_and_vacancy_contrast(tmd):
    x, y = pristine_columns(tmd, "chalcogen")[0]
    sig, full = edge_signal(tmd, x, y, (140, 160), (163, 200))
    assert edge_onset_eV(E, sig, (155, 200)) == pytest.approx(165.0, abs=1.5)
    assert np.abs(sig[(E > 140) & (E < 160)]).max() < 0.02 * sig.max()  # nothing before the onset
    v1 = edge_signal(
        tmd, defects(tmd, "V_S")[0]["x_nm"], defects(tmd, "V_S")[0]["y_nm"], (140, 160), (163, 200)
    )[1]
    v2 = edge_signal(
        tmd, defects(tmd, "V_S2")[0]["x_nm"], defects(tmd, "V_S2")[0]["y_nm"], (140, 160), (163, 200)
    )
    # delocalised S L2,3 signal: neighbours still contribute, but one S less is clearly visible
    assert 0.5 < v1 / full < 0.8
    assert v2[1] < v1


def test_mo_m45_is_a_delayed_edge(tmd):
    x, y = pristine_columns(tmd, "metal")[0]
    sp = tmd.spectrum(x, y, E, SIGMA)
    sig = sp - fit_power_law(E, sp, (205, 224))
    pre, post = (E > 205) & (E < 225), (E > 226) & (E < 330)
    assert np.abs(sig[pre]).max() < 0.05 * sig[post].max()
    assert E[post][np.argmax(sig[post])] > 240  # maximum tens of eV past the 227 eV onset


def test_o_k_edge_only_where_oxygen_sits(tmd):
    d = defects(tmd, "O_S")[0]
    sig, on_o = edge_signal(tmd, d["x_nm"], d["y_nm"], (490, 525), (530, 560))
    assert edge_onset_eV(E, sig, (520, 560)) == pytest.approx(532.0, abs=1.5)
    x, y = pristine_columns(tmd, "chalcogen")[0]
    _, off_o = edge_signal(tmd, x, y, (490, 525), (530, 560))
    assert on_o > 0 and abs(off_o) < 0.05 * on_o


# ------------------------------------------------------------------ damage
def uniform_dose(s: TMDSample, e_per_A2: float) -> DoseMap:
    dm = DoseMap(*s.extent_nm, s.dose_cell_nm)
    dm.add_rect(*s.extent_nm, e_per_A2)
    return dm


def chalcogen_signal(s: TMDSample) -> float:
    xy = s.column_positions_nm("chalcogen")
    return float((s.haadf(xy[:, 0], xy[:, 1], SIGMA) - CONTAMINATION_FRACTION).sum())


def metal_signal(s: TMDSample) -> float:
    xy = s.column_positions_nm("metal")
    return float(s.haadf(xy[:, 0], xy[:, 1], SIGMA).sum())


def test_sputtering_only_after_the_dose_that_causes_it():
    s = fresh(11)
    inv_sigma = 1.0 / S_SPUTTER_CROSS_SECTION_A2
    ch0, mo0 = chalcogen_signal(s), metal_signal(s)
    s.apply_damage(uniform_dose(s, 1e-3 * inv_sigma), np.random.default_rng(0))
    assert abs(chalcogen_signal(s) / ch0 - 1) < 0.005  # ~0.1 % of S gone: not measurable
    assert len(s.truth()["sputtered"]) < 15
    s.apply_damage(uniform_dose(s, 2.0 * inv_sigma), np.random.default_rng(0))
    lost = 1 - chalcogen_signal(s) / ch0
    assert 0.7 < lost < 0.95  # S survives with exp(-2) = 13.5 %; Se/O columns do not sputter
    assert metal_signal(s) == pytest.approx(mo0, rel=1e-3)  # metals stay
    t = json.loads(json.dumps(s.truth()))
    n_s = int(s.pristine_structure.composition["S"])
    assert t["n_sputtered"] == pytest.approx(n_s * (1 - math.exp(-2)), rel=0.06)


def test_damage_is_local_and_never_heals():
    s = fresh(12)
    dm = DoseMap(*s.extent_nm, s.dose_cell_nm)
    dm.add_spot(0.0, 0.0, electrons=10.0 / S_SPUTTER_CROSS_SECTION_A2 * 4.0, diameter_nm=1.0)
    s.apply_damage(dm, np.random.default_rng(0))
    hits = s.truth()["sputtered"]
    assert len(hits) > 10 and all(abs(h["x_nm"]) <= 0.5 and abs(h["y_nm"]) <= 0.5 for h in hits)
    before = chalcogen_signal(s)
    s.apply_damage(DoseMap(*s.extent_nm, s.dose_cell_nm), np.random.default_rng(0))  # a fresh, empty map
    assert chalcogen_signal(s) == before and len(s.truth()["sputtered"]) == len(hits)


# ------------------------------------------------------------------ through the microscope
def test_microscope_images_the_dopant_and_point_spectra_sputter():
    scenarios = pytest.importorskip("autoscope.instruments.sim.scenarios")
    from autoscope.instruments.sim.oracle import Oracle

    scope = scenarios.make_microscope("tmd-defects", seed=5)
    oracle = Oracle(scope)
    w = next(d for d in oracle.truth()["defects"] if d["type"] == "W_Mo")
    scope.move_stage(w["x_nm"], w["y_nm"])
    scope.unblank_beam()
    img = scope.acquire_image(fov_nm=2.0, pixels=128, dwell_s=2e-5)
    r, c = np.unravel_index(np.argmax(img.data), img.data.shape)
    x, y = img.pixel_to_nm(r, c)
    assert math.hypot(x - w["x_nm"], y - w["y_nm"]) < 0.08  # the brightest spot is the W atom
    assert oracle.truth()["n_sputtered"] == 0  # one frame (~2e5 e/Å²) sputters nothing (odds ~1e-3/atom)

    xy = pristine_columns(scenarios.build_sample("tmd-defects", 5), "chalcogen")[0]
    scope.move_stage(*xy)
    for _ in range(4):  # 4 × 1 s at 20 pA parked on one S2 column: ~5e8 e/Å² there
        scope.acquire_spectrum(xy[0], xy[1], 1.0, 130.0, 580.0)
    hits = oracle.truth()["sputtered"]
    assert hits and all(math.hypot(h["x_nm"] - xy[0], h["y_nm"] - xy[1]) < 0.2 for h in hits)
