"""Energies from the CHGNet universal potential: single points, relaxation, defect formation.

CHGNet 0.3.0 (Deng et al., Nat. Mach. Intell. 5, 1031 (2023)) is trained on Materials
Project GGA/GGA+U relaxations; its weights ship inside the ``chgnet`` package, so this
runs offline, on the CPU, on one thread (as fast as more for a few hundred atoms, far
faster on a busy machine, and the numbers do not depend on the core count), so results
are reproducible. The model is loaded once per process, on first use.

Defect formation energies follow the usual convention (Freysoldt et al., Rev. Mod.
Phys. 86, 253 (2014)) for neutral defects:

    E_f = E(defective) − E(pristine) − Σ_i n_i μ_i,

with n_i the number of atoms of species i added (> 0) or removed (< 0), and μ_i the
chemical potential of species i. For a binary host A_xB_y the allowed range is bounded by
the elemental references: the A-rich limit sets μ_A = μ_A(ref) and μ_B from
x μ_A + y μ_B = E(A_xB_y); the B-rich limit the other way round. References used here
(computed with CHGNet itself, so errors cancel): bcc Mo (cell relaxed) for μ_Mo; the S8
crown molecule in a box for μ_S (the unit of α-S; the molecular crystal's cohesion, a
van der Waals ≈ 0.1 eV/atom that CHGNet hardly sees, is neglected). The S8 reference
gives ΔH_f(ZnS) = −2.0 eV (experiment −2.14 eV).

What to expect for MoS2 (4×4 monolayer, a = 3.16 Å, fixed cell, fmax 0.1 eV/Å):
ΔH_f = −3.68 eV/f.u. (experiment −2.44: CHGNet learnt Materials Project energies that
carry the MP2020 sulfide correction), V_S 0.51 eV (Mo-rich) … 2.35 eV (S-rich), V_Mo
4.16 eV (Mo-rich) … 0.48 eV (S-rich). DFT-PBE finds V_S ≈ 1.2–1.5 eV (Mo-rich) …
≈ 2.7–2.9 eV (S-rich) and V_Mo several eV above V_S, ≈ 6–8 eV Mo-rich (Komsa &
Krasheninnikov, Phys. Rev. B 91, 125304 (2015); Noh, Kim & Kim, Phys. Rev. B 89, 205417
(2014); Hong et al., Nat. Commun. 6, 6293 (2015)). CHGNet reproduces the ordering
V_S ≪ V_Mo in the Mo-rich limit and across most of the range, but underestimates both
vacancies (the softening of universal potentials) and V_Mo most, so towards the S-rich
limit it ranks V_Mo below V_S, against the literature: use DFT (``dft.py``) there.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
import warnings
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from ase.calculators.calculator import Calculator, all_changes
from pydantic import BaseModel, ConfigDict, Field
from pymatgen.core import Composition, Lattice, Structure
from pymatgen.io.ase import AseAtomsAdaptor

if TYPE_CHECKING:
    from ase import Atoms
    from chgnet.model import CHGNet

log = logging.getLogger(__name__)

MODEL_NAME = "CHGNet 0.3.0"
# CHGNet predicts stress in GPa; ASE wants eV/Å^3.
_GPA_TO_EV_PER_A3 = 1.0 / 160.21766208

Optimizer = Literal["FIRE", "BFGS"]
TORCH_THREADS = 1


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Run torch on ``n`` intra-op threads inside the block, then restore the setting."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@functools.cache
def chgnet_model() -> CHGNet:
    """The CHGNet 0.3.0 model on the CPU, loaded once per process (≈ 3 s)."""
    from chgnet.model import CHGNet

    log.info("loading %s", MODEL_NAME)
    model = CHGNet.load(model_name="0.3.0", use_device="cpu", verbose=False)
    model.eval()
    return model


class ChgnetCalculator(Calculator):
    """ASE calculator over the process-wide CHGNet model (energy, forces, stress on demand)."""

    implemented_properties = ["energy", "free_energy", "forces", "stress"]  # noqa: RUF012

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.model = chgnet_model()

    def calculate(
        self,
        atoms: Atoms | None = None,
        properties: list[str] | None = None,
        system_changes: list[str] = all_changes,
    ) -> None:
        properties = properties or ["energy", "forces"]
        super().calculate(atoms, properties, system_changes)
        structure = AseAtomsAdaptor.get_structure(self.atoms)
        graph = self.model.graph_converter(structure)
        task = "efs" if "stress" in properties else "ef"
        with warnings.catch_warnings():  # chgnet converts a grad-tracking tensor to a scalar
            warnings.filterwarnings(
                "ignore", message="Converting a tensor with requires_grad", category=UserWarning
            )
            pred = self.model.predict_graph(graph, task=task)
        n_atoms = len(structure) if self.model.is_intensive else 1
        self.results["energy"] = float(pred["e"]) * n_atoms
        self.results["free_energy"] = self.results["energy"]
        self.results["forces"] = np.asarray(pred["f"], dtype=float)
        if "s" in pred:
            self.results["stress"] = np.asarray(pred["s"], dtype=float) * _GPA_TO_EV_PER_A3


class EnergyResult(BaseModel):
    """A CHGNet energy of one structure; ``structure`` is the final (relaxed) one."""

    model_config = ConfigDict(frozen=True)

    formula: str
    n_atoms: int
    energy_eV: float
    energy_per_atom_eV: float
    max_force_eV_per_A: float
    relaxed: bool
    converged: bool = Field(description="relaxation reached fmax (always True for a single point)")
    steps: int
    wall_s: float
    model: str = MODEL_NAME
    structure: dict[str, Any] = Field(description="pymatgen Structure.as_dict() of the final geometry")

    def final_structure(self) -> Structure:
        return Structure.from_dict(self.structure)


class FormationResult(BaseModel):
    """A neutral defect's formation energy at given chemical potentials."""

    model_config = ConfigDict(frozen=True)

    formation_energy_eV: float
    exchanged: dict[str, int] = Field(description="atoms added (> 0) or removed (< 0) per species")
    chemical_potentials_eV: dict[str, float]
    pristine: EnergyResult
    defective: EnergyResult
    model: str = MODEL_NAME


def energy(
    structure: Structure,
    relax: bool = False,
    fmax: float = 0.1,
    steps: int = 200,
    relax_cell: bool = False,
    optimizer: Optimizer = "FIRE",
) -> EnergyResult:
    """CHGNet energy of ``structure``; with ``relax``, after relaxing positions with ASE.

    The cell stays fixed (right for a defect in a supercell) unless ``relax_cell``
    (bulk references), which relaxes it too through a Fréchet cell filter. ``fmax`` is
    in eV/Å; ``steps`` bounds the optimizer.
    """
    from ase.filters import FrechetCellFilter
    from ase.optimize import BFGS, FIRE

    start = time.perf_counter()
    atoms = AseAtomsAdaptor.get_atoms(structure)
    atoms.calc = ChgnetCalculator()
    n_steps = 0
    converged = True
    with _torch_threads(TORCH_THREADS):
        if relax:
            target = FrechetCellFilter(atoms) if relax_cell else atoms
            opt_class = FIRE if optimizer == "FIRE" else BFGS
            opt = opt_class(target, logfile=None)
            converged = bool(opt.run(fmax=fmax, steps=steps))
            n_steps = int(opt.nsteps)
        e_eV = float(atoms.get_potential_energy())
        max_force = float(np.linalg.norm(atoms.get_forces(), axis=1).max())
    final = AseAtomsAdaptor.get_structure(atoms)
    wall_s = time.perf_counter() - start
    log.debug("CHGNet %s: %.4f eV (%d steps, %.1f s)", final.formula, e_eV, n_steps, wall_s)
    return EnergyResult(
        formula=final.composition.reduced_formula,
        n_atoms=len(final),
        energy_eV=e_eV,
        energy_per_atom_eV=e_eV / len(final),
        max_force_eV_per_A=max_force,
        relaxed=relax,
        converged=converged,
        steps=n_steps,
        wall_s=wall_s,
        structure=final.as_dict(),
    )


def _as_result(item: Structure | EnergyResult, relax: bool, fmax: float, steps: int) -> EnergyResult:
    if isinstance(item, EnergyResult):
        return item
    return energy(item, relax=relax, fmax=fmax, steps=steps)


def formation_energy(
    pristine: Structure | EnergyResult,
    defective: Structure | EnergyResult,
    chemical_potentials_eV: Mapping[str, float],
    *,
    relax: bool = True,
    fmax: float = 0.1,
    steps: int = 100,
) -> FormationResult:
    """Formation energy of the neutral defect that turns ``pristine`` into ``defective``.

    The exchanged atoms are read from the two compositions (a vacancy removes one atom,
    a substitution removes one and adds another); every exchanged species needs a
    chemical potential (eV/atom). Structures are relaxed at fixed cell unless they come
    as ``EnergyResult`` already (reuse one pristine result for many defects).
    """
    host = _as_result(pristine, relax, fmax, steps)
    defect = _as_result(defective, relax, fmax, steps)
    host_counts = Composition(host.final_structure().composition).get_el_amt_dict()
    defect_counts = Composition(defect.final_structure().composition).get_el_amt_dict()
    exchanged = {
        el: round(defect_counts.get(el, 0.0) - host_counts.get(el, 0.0))
        for el in sorted(set(host_counts) | set(defect_counts))
    }
    exchanged = {el: n for el, n in exchanged.items() if n != 0}
    missing = sorted(set(exchanged) - set(chemical_potentials_eV))
    if missing:
        raise ValueError(f"chemical_potentials_eV lacks {missing} (exchanged atoms: {exchanged})")
    e_f = (
        defect.energy_eV - host.energy_eV - sum(n * chemical_potentials_eV[el] for el, n in exchanged.items())
    )
    return FormationResult(
        formation_energy_eV=float(e_f),
        exchanged=exchanged,
        chemical_potentials_eV={el: float(chemical_potentials_eV[el]) for el in exchanged},
        pristine=host,
        defective=defect,
    )


def _s8_crown(box_A: float = 14.0) -> Structure:
    """The S8 crown (D4d): S–S 2.06 Å, S–S–S 108°, centred in a cubic box."""
    bond_A, angle_deg = 2.06, 108.0
    second_A = 2 * bond_A * np.sin(np.radians(angle_deg / 2))  # k to k+2, same plane
    radius_A = second_A / np.sqrt(2)
    chord_A = 2 * radius_A * np.sin(np.pi / 8)
    height_A = np.sqrt(bond_A**2 - chord_A**2)
    coords = [
        [
            box_A / 2 + radius_A * np.cos(k * np.pi / 4),
            box_A / 2 + radius_A * np.sin(k * np.pi / 4),
            box_A / 2 + (height_A / 2 if k % 2 == 0 else -height_A / 2),
        ]
        for k in range(8)
    ]
    return Structure(Lattice.cubic(box_A), ["S"] * 8, coords, coords_are_cartesian=True)


def _reference_structure(element: str) -> tuple[Structure, bool]:
    """The elemental reference phase and whether its cell is relaxed."""
    if element == "S":
        return _s8_crown(), False
    bcc_a_A = {"Mo": 3.147, "W": 3.165}
    if element in bcc_a_A:
        return Structure(Lattice.cubic(bcc_a_A[element]), [element] * 2, [[0, 0, 0], [0.5, 0.5, 0.5]]), True
    raise ValueError(f"no elemental reference for {element!r}; known: S, Mo, W")


@functools.cache
def elemental_reference(element: str) -> EnergyResult:
    """CHGNet energy of an element's reference phase (S: S8 molecule; Mo, W: bcc), relaxed."""
    structure, relax_cell = _reference_structure(element)
    return energy(structure, relax=True, fmax=0.02, steps=300, relax_cell=relax_cell, optimizer="BFGS")


def formation_enthalpy_per_fu_eV(host: EnergyResult) -> float:
    """ΔH_f per formula unit of ``host`` against the elemental references (negative: stable)."""
    comp = host.final_structure().composition
    reduced, n_fu = comp.get_reduced_composition_and_factor()
    e_fu = host.energy_eV / n_fu
    return float(e_fu - sum(n * elemental_reference(str(el)).energy_per_atom_eV for el, n in reduced.items()))


def binary_chemical_potentials(host: EnergyResult, rich: str) -> dict[str, float]:
    """μ (eV/atom) of both species of a binary host in the ``rich`` element's limit.

    μ_rich is the elemental reference; the other follows from x μ_A + y μ_B = E(host)/fu.
    For MoS2, ``rich="S"`` is the S-rich limit and ``rich="Mo"`` the Mo-rich one.
    """
    comp = host.final_structure().composition
    reduced, n_fu = comp.get_reduced_composition_and_factor()
    elements = [str(el) for el in reduced]
    if len(elements) != 2 or rich not in elements:
        raise ValueError(f"need a binary host containing {rich!r}, got {comp.reduced_formula}")
    other = next(el for el in elements if el != rich)
    mu_rich = elemental_reference(rich).energy_per_atom_eV
    mu_other = (host.energy_eV / n_fu - reduced[rich] * mu_rich) / reduced[other]
    return {rich: float(mu_rich), other: float(mu_other)}
