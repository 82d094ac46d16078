"""CHGNet energetics: vacancy formation energies in a MoS2 monolayer.

Literature (DFT-PBE, neutral vacancies in monolayer MoS2): the S vacancy is the
cheapest intrinsic defect, ≈ 1.2–1.5 eV in the Mo-rich limit rising to ≈ 2.7–2.9 eV
S-rich, while the Mo vacancy costs several eV more in the Mo-rich limit (≈ 6–8 eV) —
Komsa & Krasheninnikov, Phys. Rev. B 91, 125304 (2015); Noh, Kim & Kim, Phys. Rev. B
89, 205417 (2014); Hong et al., Nat. Commun. 6, 6293 (2015).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from autoscope.theory import energetics as en
from autoscope.theory.structures import mos2_monolayer, vacancy

RELAX = {"relax": True, "fmax": 0.1, "steps": 60}


def without(structure: Structure, element: str) -> Structure:
    """``structure`` less its first ``element`` site."""
    return vacancy(structure, next(i for i, s in enumerate(structure) if s.specie.symbol == element))


@pytest.fixture(scope="module")
def mos2() -> dict[str, object]:
    host = mos2_monolayer((4, 4), orthogonal=False)  # 48 atoms
    v_s, v_mo = without(host, "S"), without(host, "Mo")
    pristine = en.energy(host, **RELAX)
    return {
        "pristine": pristine,
        "v_s_structure": v_s,
        "v_s": en.energy(v_s, **RELAX),
        "v_mo": en.energy(v_mo, **RELAX),
        "mu": {lim: en.binary_chemical_potentials(pristine, lim) for lim in ("Mo", "S")},
    }


def formation(mos2: dict, defect: str, rich: str) -> float:
    return en.formation_energy(mos2["pristine"], mos2[defect], mos2["mu"][rich]).formation_energy_eV


def test_vacancy_formation_energies_finite_positive_and_ordered_as_in_literature(mos2: dict) -> None:
    values = {(d, r): formation(mos2, d, r) for d in ("v_s", "v_mo") for r in ("Mo", "S")}
    assert all(math.isfinite(v) and v > 0 for v in values.values()), values
    # Mo-rich (S-poor) limit: V_S is far cheaper than V_Mo, as every DFT study finds.
    assert values["v_s", "Mo"] + 2.0 < values["v_mo", "Mo"], values
    # and V_S is the cheaper defect over most of the allowed range (its midpoint included)
    mid = {d: 0.5 * (values[d, "Mo"] + values[d, "S"]) for d in ("v_s", "v_mo")}
    assert mid["v_s"] < mid["v_mo"], mid


def test_chemical_potentials_bound_by_formation_enthalpy(mos2: dict) -> None:
    dh = en.formation_enthalpy_per_fu_eV(mos2["pristine"])
    assert dh < -1.5  # MoS2 is strongly stable against bcc Mo + S8
    mu_mo_rich, mu_s_rich = mos2["mu"]["Mo"], mos2["mu"]["S"]
    assert mu_s_rich["S"] - mu_mo_rich["S"] == pytest.approx(-dh / 2, abs=1e-4)
    # An S vacancy costs more when S is abundant, a Mo vacancy less.
    assert formation(mos2, "v_s", "S") - formation(mos2, "v_s", "Mo") == pytest.approx(-dh / 2, abs=1e-3)
    assert formation(mos2, "v_mo", "S") - formation(mos2, "v_mo", "Mo") == pytest.approx(dh, abs=1e-3)


def test_s8_reference_reproduces_zns_formation_enthalpy() -> None:
    """The S reference is sane: ΔH_f(ZnS) ≈ −2.14 eV (experiment, zinc blende)."""
    zns = Structure.from_spacegroup("F-43m", Lattice.cubic(5.41), ["Zn", "S"], [[0, 0, 0], [0.25] * 3])
    zn = Structure.from_spacegroup(
        "P6_3/mmc", Lattice.hexagonal(2.665, 4.947), ["Zn"], [[1 / 3, 2 / 3, 0.25]]
    )
    e_zns, e_zn = en.energy(zns), en.energy(zn)  # experimental lattices; positions fixed by symmetry
    dh = e_zns.energy_eV / 4 - e_zn.energy_per_atom_eV - en.elemental_reference("S").energy_per_atom_eV
    assert dh == pytest.approx(-2.14, abs=0.4)


def test_energies_reproducible_and_relaxation_lowers_energy(mos2: dict) -> None:
    again = en.energy(mos2["v_s_structure"], **RELAX)
    assert again.energy_eV == pytest.approx(mos2["v_s"].energy_eV, abs=1e-6)
    assert again.steps == mos2["v_s"].steps
    unrelaxed = en.energy(mos2["v_s_structure"])
    assert unrelaxed.steps == 0 and unrelaxed.converged
    assert mos2["v_s"].energy_eV < unrelaxed.energy_eV
    assert mos2["v_s"].max_force_eV_per_A < unrelaxed.max_force_eV_per_A
    assert mos2["v_s"].converged and mos2["v_s"].max_force_eV_per_A <= 0.1
    assert mos2["v_s"].model == "CHGNet 0.3.0"
    relaxed = mos2["v_s"].final_structure()
    assert np.allclose(relaxed.lattice.matrix, mos2["v_s_structure"].lattice.matrix)  # fixed cell


def test_formation_energy_names_missing_chemical_potential(mos2: dict) -> None:
    with pytest.raises(ValueError, match="Mo"):
        en.formation_energy(mos2["pristine"], mos2["v_mo"], {"S": -4.0})
    res = en.formation_energy(mos2["pristine"], mos2["v_s"], mos2["mu"]["Mo"])
    assert res.exchanged == {"S": -1}
    assert res.model_validate(res.model_dump()) == res  # round-trips
