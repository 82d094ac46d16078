"""Scenario "tmd-defects": a MoS2 monolayer (1H) with point defects, imaged at 80 kV.

The structure is a pymatgen supercell of 1H-MoS2 (a = 3.16 Å, S–S height 3.17 Å),
about 12 nm square, with seeded point defects: W on Mo, Se and O on S, S
monovacancies (one S of a column missing) and column divacancies (both missing).
Viewed along c, metal columns hold one atom and chalcogen columns two (top, bottom).

HAADF: incoherent Z-contrast, Σ_columns k Σ_atoms Z^1.7 × G(probe), with G an
area-normalised Gaussian; k puts a Mo column at ~3 % of the beam for a 0.09 nm probe.

EELS: per element, a power-law background plus its edges (``eels.EDGES``: S L2,3
165 eV, Se M2,3 162 eV, Mo M4,5 227 eV delayed, W N4,5 245 eV delayed, Mo M3 392 eV,
O K 532 eV), each ∝ the probe-weighted number of atoms of that element, the probe
widened by the edge's inelastic delocalisation.

Damage: knock-on sputtering of S. Each S atom gets a threshold dose drawn once from an
exponential distribution of mean 1/σ; it is removed (for good) when the cumulative
dose at its position exceeds the threshold, so the surviving fraction under a uniform
dose D is exp(−σD). σ = 1 barn (1e-8 Å²) is a representative effective value for S in
monolayer MoS2 at 80 kV, where sputtering from the exit surface sets in (Komsa et al.,
PRL 109, 035503 (2012); measured 55–90 kV by Speckmann et al., arXiv:2302.10529
(2023)). Damage becomes visible (~1 % of S gone) near 1e6 e/Å², is ~60 % at 1e8 e/Å²:
survey images (~1e5 e/Å² a frame) rarely sputter, a 1 s point spectrum at 20 pA
(~1e8 e/Å² in its cell) usually does. W, Se, O and Mo are not sputtered at 80 kV.
"""

from __future__ import annotations

import logging
import math
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pymatgen.core import Lattice, Structure

from autoscope.instruments.dose import DoseMap
from autoscope.instruments.sim.eels import EDGES, channel_width_eV, delocalisation_sigma_nm, power_law
from autoscope.instruments.sim.render import ColumnSet, column_index
from autoscope.instruments.sim.sample import Sample, SpectrometerSpec, SurveyDefaults

log = logging.getLogger(__name__)

Z = {"Mo": 42, "W": 74, "S": 16, "Se": 34, "O": 8}
ELEMENTS = tuple(Z)

LATTICE_A_ANG = 3.16
S_HEIGHT_ANG = 3.17  # vertical S–S distance within the monolayer
VACUUM_C_ANG = 20.0
#: effective S sputtering cross-section at 80 kV (Å²): 1 barn
S_SPUTTER_CROSS_SECTION_A2 = 1.0e-8
#: HAADF cross-section per Z^1.7 (nm²): a Mo column is ~3 % of the beam at 0.09 nm FWHM
HAADF_NM2_PER_ZPOW = 4.8e-7
Z_EXPONENT = 1.7
COLUMN_SIGMA_NM = 0.01  # thermal vibration + residual blur of a column
#: uniform HAADF floor from residual surface contamination (fraction of the beam)
CONTAMINATION_FRACTION = 3.0e-4
#: EELS background per eV at 100 eV: per probe-weighted atom (nm²/eV) and a uniform floor (1/eV)
BACKGROUND_NM2_PER_EV = 3.0e-7
BACKGROUND_FLOOR_PER_EV = 3.0e-7
BACKGROUND_EXPONENT = 3.0
BACKGROUND_SIGMA_NM = 0.3  # valence-loss delocalisation that sets the background footprint
RESOLUTION_FWHM_EV = 0.5

DEFECT_COUNTS = {"W_Mo": (6, 12), "Se_S": (4, 8), "O_S": (3, 6), "V_S": (6, 12), "V_S2": (2, 5)}


def mos2_unit_cell() -> Structure:
    """Primitive 1H-MoS2 monolayer cell (hexagonal, c = vacuum spacing)."""
    dz = S_HEIGHT_ANG / 2 / VACUUM_C_ANG
    return Structure(
        Lattice.hexagonal(LATTICE_A_ANG, VACUUM_C_ANG),
        ["Mo", "S", "S"],
        [[1 / 3, 2 / 3, 0.5], [2 / 3, 1 / 3, 0.5 + dz], [2 / 3, 1 / 3, 0.5 - dz]],
    )


class TMDSample(Sample):
    """1H-MoS2 monolayer with seeded substitutions and S vacancies; S sputters under the beam."""

    name: ClassVar[str] = "tmd-defects"
    description: ClassVar[str] = (
        "MoS2 monolayer at 80 kV with W/Se/O substituents and S vacancies; S sputters under the beam"
    )

    class Variant(BaseModel):
        """Defect densities and beam sensitivity of a variant (the defaults are the scenario's own)."""

        model_config = ConfigDict(frozen=True, extra="forbid")

        defect_counts: dict[Literal["W_Mo", "Se_S", "O_S", "V_S", "V_S2"], tuple[int, int]] = Field(
            default_factory=dict,
            description="(fewest, most) of a defect type; unnamed types keep the defaults",
        )
        sputter_scale: float = Field(
            1.0, gt=0, le=1e4, description="× the S sputter cross-section: > 1 is more damage-prone"
        )

        @model_validator(mode="after")
        def _ordered(self) -> TMDSample.Variant:
            for kind, (lo, hi) in self.defect_counts.items():
                if not 0 <= lo <= hi <= 40:
                    raise ValueError(f"defect_counts.{kind}: need 0 <= low <= high <= 40, got ({lo}, {hi})")
            return self

    def __init__(
        self, rng: np.random.Generator, variant: Variant | None = None, *, size_nm: float = 12.0
    ) -> None:
        self.variant = variant or self.Variant()
        self.unit_cell = mos2_unit_cell()
        rect = self.unit_cell.copy()
        rect.make_supercell([[1, 0, 0], [1, 2, 0], [0, 0, 1]])  # orthogonal a × √3a cell
        nx = max(2, round(size_nm / (rect.lattice.a / 10)))
        ny = max(2, round(size_nm / (rect.lattice.b / 10)))
        rect.make_supercell([nx, ny, 1])
        #: the defect-free supercell (Å, pymatgen)
        self.pristine_structure = rect
        lx_nm, ly_nm = rect.lattice.a / 10, rect.lattice.b / 10
        cart = rect.cart_coords
        self.atom_xy_nm = cart[:, :2] / 10 - [lx_nm / 2, ly_nm / 2]
        self.atom_layer = np.sign(np.round(cart[:, 2] - rect.lattice.c / 2, 3)).astype(int)  # 0 metal
        self.atom_element = np.array([s.specie.symbol for s in rect], dtype="<U2")
        self.atom_present = np.ones(len(rect), bool)
        col_xy, self.atom_column = column_index(self.atom_xy_nm)
        self.columns = ColumnSet(col_xy[:, 0], col_xy[:, 1], np.zeros(len(col_xy)))

        self.extent_nm = (-lx_nm / 2, lx_nm / 2, -ly_nm / 2, ly_nm / 2)
        self.dose_cell_nm = 0.05
        self.probe_fwhm_nm = 0.09
        self.voltage_kV = 80.0
        self.spectrometer = SpectrometerSpec(
            energy_min_eV=100.0, energy_max_eV=600.0, dispersion_eV=0.25, default_window_eV=(130.0, 580.0)
        )
        self.survey = SurveyDefaults(
            fov_nm=8.0, pixels=512, dwell_s=8e-6, current_pA=20.0, spectrum_dwell_s=0.5
        )

        self.defects: list[dict[str, Any]] = []
        self._seed_defects(rng)
        is_s = self.atom_element == "S"
        self.sputter_threshold_e_per_A2 = np.full(len(rect), np.inf)
        self.sputter_threshold_e_per_A2[is_s] = rng.exponential(
            1.0 / (S_SPUTTER_CROSS_SECTION_A2 * self.variant.sputter_scale), is_s.sum()
        )
        self.sputtered: list[dict[str, Any]] = []
        self._refresh_columns()

    # ----------------------------------------------------------------- structure
    def _seed_defects(self, rng: np.random.Generator) -> None:
        x0, x1, y0, y1 = self.extent_nm
        margin = 0.6
        xy = self.atom_xy_nm
        inner = (xy[:, 0] > x0 + margin) & (xy[:, 0] < x1 - margin) & (xy[:, 1] > y0 + margin)
        inner &= xy[:, 1] < y1 - margin
        metal = np.flatnonzero(inner & (self.atom_layer == 0))
        chalc_cols = np.unique(self.atom_column[inner & (self.atom_layer != 0)])
        counts = {**DEFECT_COUNTS, **self.variant.defect_counts}
        n = {k: int(rng.integers(lo, hi + 1)) for k, (lo, hi) in counts.items()}
        for i in rng.choice(metal, n["W_Mo"], replace=False):
            self.atom_element[i] = "W"
            self._record("W_Mo", "W", i, "metal")
        n_ch = n["Se_S"] + n["O_S"] + n["V_S"] + n["V_S2"]
        cols = iter(rng.choice(chalc_cols, n_ch, replace=False))
        for kind in ("Se_S", "O_S", "V_S", "V_S2"):
            for _ in range(n[kind]):
                atoms = np.flatnonzero(self.atom_column == next(cols))
                if kind == "V_S2":
                    self.atom_present[atoms] = False
                    self._record(kind, "", atoms[0], "both")
                    continue
                i = int(rng.choice(atoms))
                layer = "top" if self.atom_layer[i] > 0 else "bottom"
                if kind == "V_S":
                    self.atom_present[i] = False
                    self._record(kind, "", i, layer)
                else:
                    self.atom_element[i] = kind.split("_")[0]
                    self._record(kind, self.atom_element[i], i, layer)

    def _record(self, kind: str, species: str, atom: int, layer: str) -> None:
        x, y = self.atom_xy_nm[atom]
        self.defects.append(
            {"type": kind, "species": species, "layer": layer, "x_nm": float(x), "y_nm": float(y)}
        )

    def _refresh_columns(self) -> None:
        zpow = np.array([Z[e] for e in self.atom_element], float) ** Z_EXPONENT * self.atom_present
        n_col = len(self.columns.weights)
        self.columns.weights[:] = HAADF_NM2_PER_ZPOW * np.bincount(self.atom_column, zpow, minlength=n_col)
        #: atoms of each element per column (n_columns, n_elements), for EELS
        self.column_counts = np.stack(
            [
                np.bincount(self.atom_column, (self.atom_element == el) & self.atom_present, minlength=n_col)
                for el in ELEMENTS
            ],
            axis=1,
        )

    def current_structure(self) -> Structure:
        """The supercell as it is now: substitutions applied, vacant and sputtered sites removed."""
        s = self.pristine_structure.copy()
        for i, el in enumerate(self.atom_element):
            if el != s[i].specie.symbol:
                s.replace(i, el)
        s.remove_sites(np.flatnonzero(~self.atom_present).tolist())
        return s

    def column_positions_nm(self, kind: str) -> np.ndarray:
        """(n, 2) projected positions of the ``"metal"`` or ``"chalcogen"`` columns."""
        layer0 = self.atom_layer == 0
        sel = layer0 if kind == "metal" else ~layer0
        return self.columns.xy_nm[np.unique(self.atom_column[sel])]

    # ----------------------------------------------------------------- signals
    def haadf(self, x_nm: np.ndarray, y_nm: np.ndarray, probe_sigma_nm: float) -> np.ndarray:
        sigma = math.hypot(probe_sigma_nm, COLUMN_SIGMA_NM)
        return CONTAMINATION_FRACTION + self.columns.render(x_nm, y_nm, sigma)

    def element_counts(self, x_nm: float, y_nm: float, sigma_nm: float) -> dict[str, float]:
        """Probe-weighted areal number of atoms (nm⁻²) of each element seen by a probe of σ ``sigma_nm``."""
        n = self.columns.weighted_sum(x_nm, y_nm, sigma_nm, self.column_counts.astype(float))
        return {el: float(v) for el, v in zip(ELEMENTS, n, strict=True)}

    def spectrum(self, x_nm: float, y_nm: float, energy_eV: np.ndarray, probe_sigma_nm: float) -> np.ndarray:
        e = np.asarray(energy_eV, float)
        n_bg = sum(self.element_counts(x_nm, y_nm, math.hypot(probe_sigma_nm, BACKGROUND_SIGMA_NM)).values())
        per_eV = power_law(
            e, BACKGROUND_NM2_PER_EV * n_bg + BACKGROUND_FLOOR_PER_EV, BACKGROUND_EXPONENT, 100.0
        )
        for el, edges in EDGES.items():
            for edge in edges:
                if edge.onset_eV > e.max() + 5 or el not in Z:
                    continue
                sigma = math.hypot(probe_sigma_nm, delocalisation_sigma_nm(edge.onset_eV, self.voltage_kV))
                n_el = self.element_counts(x_nm, y_nm, sigma)[el]
                if n_el > 0:
                    per_eV += n_el * edge.cross_section(e, RESOLUTION_FWHM_EV)
        return per_eV * channel_width_eV(e)

    # ----------------------------------------------------------------- damage
    def apply_damage(self, dose: DoseMap, rng: np.random.Generator) -> None:
        """Remove every S atom whose local cumulative dose passed its threshold (never heals).

        Thresholds were drawn at construction, so ``rng`` is not needed: the outcome of a
        dose history is fixed by the sample seed.
        """
        cand = np.flatnonzero(self.atom_present & (self.atom_element == "S"))
        d = dose.at(self.atom_xy_nm[cand, 0], self.atom_xy_nm[cand, 1])
        hit = d >= self.sputter_threshold_e_per_A2[cand]
        if not hit.any():
            return
        for i, di in zip(cand[hit], d[hit], strict=True):
            self.sputtered.append(
                {
                    "x_nm": float(self.atom_xy_nm[i, 0]),
                    "y_nm": float(self.atom_xy_nm[i, 1]),
                    "layer": "top" if self.atom_layer[i] > 0 else "bottom",
                    "dose_e_per_A2": float(di),
                }
            )
        self.atom_present[cand[hit]] = False
        self._refresh_columns()
        log.debug("sputtered %d S atoms (total %d)", hit.sum(), len(self.sputtered))

    def truth(self) -> dict[str, Any]:
        return {
            "material": "MoS2",
            "phase": "1H monolayer",
            "lattice_a_nm": LATTICE_A_ANG / 10,
            "voltage_kV": self.voltage_kV,
            "s_sputter_cross_section_A2": S_SPUTTER_CROSS_SECTION_A2 * self.variant.sputter_scale,
            "defects": [dict(d) for d in self.defects],
            "sputtered": [dict(s) for s in self.sputtered],
            "n_sputtered": len(self.sputtered),
            "n_metal_columns": int(len(self.column_positions_nm("metal"))),
            "n_chalcogen_columns": int(len(self.column_positions_nm("chalcogen"))),
        }
