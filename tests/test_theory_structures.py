"""Structure builders, defect candidates and round-trips (theory/structures.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial import cKDTree

from autoscope.instruments.sim.scenarios import build_sample
from autoscope.theory import structures as st

W_ON_MO = st.DefectSpec(kind="substitution", host="Mo", species="W")
V_S = st.DefectSpec(kind="vacancy", host="S")


@pytest.fixture(scope="module")
def twin_sample():
    return build_sample("tmd-defects", 4)


def test_mos2_reproduces_the_twin_supercell_site_for_site(twin_sample) -> None:
    s = st.mos2_monolayer((38, 22), center_nm=(0.0, 0.0))
    pristine = twin_sample.pristine_structure
    assert len(s) == len(pristine) == 5016
    assert [x.specie.symbol for x in s] == [x.specie.symbol for x in pristine]
    np.testing.assert_allclose(st.sample_xy_nm(s), twin_sample.atom_xy_nm, atol=1e-9)


def test_mos2_geometry_is_1h_mos2() -> None:
    s = st.mos2_monolayer((3, 2))
    assert s.composition.reduced_formula == "MoS2"
    mo = [i for i, x in enumerate(s) if x.specie.symbol == "Mo"]
    d = s.get_neighbors(s[mo[0]], 2.6)
    # trigonal prismatic Mo: six S at √(a²/3 + (h/2)²) = 2.417 Å
    assert len(d) == 6
    assert all(n.specie.symbol == "S" for n in d)
    np.testing.assert_allclose([n.nn_distance for n in d], math.sqrt(3.16**2 / 3 + 1.585**2), atol=1e-6)


def test_cell_centred_anywhere_keeps_the_twin_lattice_registry(twin_sample) -> None:
    tree = cKDTree(twin_sample.atom_xy_nm)
    for centre in [(1.23, -0.7), (-3.01, 2.5)]:
        s = st.mos2_monolayer((6, 4), center_nm=centre)
        dist, _ = tree.query(st.sample_xy_nm(s))
        assert dist.max() < 1e-9
        mid = st.sample_xy_nm(s).min(axis=0) + (s.lattice.abc[0] / 20, s.lattice.abc[1] / 20)
        assert np.hypot(*(mid - centre)) < 0.32  # within one lattice translation


def test_site_near_finds_the_site_and_wraps_periodically() -> None:
    s = st.mos2_monolayer((4, 3), center_nm=(0.0, 0.0))
    xy = st.sample_xy_nm(s)
    i = st.site_near(s, xy[7, 0] + 0.02, xy[7, 1] - 0.01)
    assert np.allclose(xy[i], xy[7])
    mo = st.site_near(s, xy[7, 0], xy[7, 1], species="Mo")
    assert s[mo].specie.symbol == "Mo"
    # a point one lattice period away maps to the same site (minimum image)
    a_nm, b_nm = s.lattice.abc[0] / 10, s.lattice.abc[1] / 10
    j = st.site_near(s, xy[mo, 0] + a_nm, xy[mo, 1] - b_nm, species="Mo")
    assert j == mo
    near = st.sites_near(s, xy[mo, 0], xy[mo, 1], 0.33, species="Mo")
    assert near[0] == mo and len(near) == 7  # itself + six Mo at a = 0.316 nm
    with pytest.raises(ValueError, match="no W site"):
        st.site_near(s, 0.0, 0.0, species="W")


def test_substitution_and_vacancy_copy_the_structure() -> None:
    base = st.mos2_monolayer((2, 2))
    n = len(base)
    w = st.substitute(base, 0, "W")
    v = st.vacancy(base, 1)
    assert w[0].specie.symbol == "W" and base[0].specie.symbol == "Mo"
    assert len(v) == n - 1 and len(base) == n
    assert st.origin_nm(w) == st.origin_nm(base) == st.origin_nm(v)


def test_defect_spec_validates_and_checks_the_host() -> None:
    with pytest.raises(ValueError):
        st.DefectSpec(kind="substitution", host="Mo")
    with pytest.raises(ValueError):
        st.DefectSpec(kind="vacancy", host="S", species="Se")
    base = st.mos2_monolayer((2, 2))
    s_site = next(i for i, x in enumerate(base) if x.specie.symbol == "S")
    with pytest.raises(ValueError, match="not Mo"):
        W_ON_MO.apply(base, s_site)
    assert W_ON_MO.label == "W_Mo" and V_S.label == "V_S"


def test_candidate_models_name_distinct_structures_and_round_trip() -> None:
    base = st.mos2_monolayer((4, 3), center_nm=(0.5, 0.5))
    mo = st.sites_near(base, 0.5, 0.5, 0.4, species="Mo")[:3]
    cands = st.candidate_models(base, W_ON_MO, mo, include_pristine=True)
    assert [c.label for c in cands] == ["pristine"] + [f"W_Mo@{i}" for i in mo]
    assert len({c.structure_hash for c in cands}) == 4
    assert "W substituting Mo" in cands[1].description
    s1 = cands[1].to_structure()
    assert s1[mo[0]].specie.symbol == "W" and s1.composition["W"] == 1
    again = st.CandidateModel.model_validate_json(cands[1].model_dump_json())
    assert again.structure_hash == st.structure_hash(again.to_structure()) == cands[1].structure_hash
    assert again.x_nm == pytest.approx(st.sample_xy_nm(base)[mo[0], 0])


def test_cif_and_json_round_trips_keep_sites_origin_and_hash() -> None:
    base = st.vacancy(st.substitute(st.mos2_monolayer((3, 2), center_nm=(2.0, -1.0)), 4, "W"), 7)
    for text, load in ((st.to_cif(base), st.from_cif), (st.to_json(base), st.from_json)):
        back = load(text)
        assert [x.specie.symbol for x in back] == [x.specie.symbol for x in base]
        wrapped = np.mod(back.frac_coords - base.frac_coords + 0.5, 1.0) - 0.5
        np.testing.assert_allclose(wrapped, 0.0, atol=1e-7)
        np.testing.assert_allclose(back.lattice.matrix, base.lattice.matrix, atol=1e-6)
        assert st.origin_nm(back) == pytest.approx(st.origin_nm(base))
        assert st.structure_hash(back) == st.structure_hash(base)


def test_structure_hash_ignores_order_and_origin_but_sees_chemistry() -> None:
    base = st.mos2_monolayer((2, 2))
    shuffled = base.copy()
    shuffled.sort(key=lambda site: -site.frac_coords[2])
    moved = st.mos2_monolayer((2, 2), center_nm=(5.0, 5.0))
    assert st.structure_hash(shuffled) == st.structure_hash(base) == st.structure_hash(moved)
    assert st.structure_hash(st.substitute(base, 0, "W")) != st.structure_hash(base)


def test_oxide_interface_stacks_latio3_on_srtio3_along_x() -> None:
    s = st.oxide_interface(3, 5, width_cells=2, thickness_cells=2, center_nm=(1.0, 0.0))
    comp = s.composition
    assert comp["La"] == 3 * 4 and comp["Sr"] == 5 * 4 and comp["Ti"] == 8 * 4 and comp["O"] == 3 * 8 * 4
    xy = st.sample_xy_nm(s)
    is_la = np.array([x.specie.symbol == "La" for x in s])
    is_sr = np.array([x.specie.symbol == "Sr" for x in s])
    assert xy[is_la, 0].max() < 1.0 <= xy[is_sr, 0].min()
    ti = next(i for i, x in enumerate(s) if x.specie.symbol == "Ti")
    d = [n.nn_distance for n in s.get_neighbors(s[ti], 2.2)]
    np.testing.assert_allclose(d, [3.905 / 2] * 6, atol=1e-6)  # TiO6 octahedron


@pytest.mark.parametrize("kind", ["sphere", "cube", "rod", "triangle", "octahedron"])
def test_nanoparticles_are_fcc_clusters_of_the_asked_shape(kind: str) -> None:
    s = st.nanoparticle(kind, 3.0, "Ag", aspect_ratio=3.0)
    a = st.FCC_A_ANG["Ag"]
    dists = s.distance_matrix
    np.fill_diagonal(dists, np.inf)
    np.testing.assert_allclose(dists.min(axis=1), a / math.sqrt(2), atol=1e-6)  # fcc nearest neighbour
    cart = s.cart_coords
    extent = np.ptp(cart, axis=0) / 10
    assert 3.0 - 2 * a / 10 < extent.max() <= 3.0 + 1e-6  # carved within the asked size
    if kind == "sphere":  # 4 atoms per a³
        assert len(s) == pytest.approx(4 / a**3 * 4 / 3 * math.pi * 15.0**3, rel=0.1)
    if kind == "rod":
        assert extent[0] / extent[1] == pytest.approx(3.0, rel=0.25)
    if kind == "triangle":  # a {111} plate: atomic planes a/√3 apart along the beam
        z = np.unique(np.round(cart[:, 2], 4))
        np.testing.assert_allclose(np.diff(z), a / math.sqrt(3), atol=1e-3)


def test_nanoparticle_refuses_unknown_metal_and_huge_sizes() -> None:
    with pytest.raises(ValueError, match="fcc"):
        st.nanoparticle("sphere", 2.0, "Fe")
    with pytest.raises(ValueError, match="smaller"):
        st.nanoparticle("cube", 20.0, "Ag")
