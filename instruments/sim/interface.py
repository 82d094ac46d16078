"""Scenario "oxide-interface": a LaTiO3/SrTiO3 interface seen along [001] at 200 kV.

The titanate interface of Ohtomo, Muller, Grazul & Hwang (Nature 419, 378 (2002)):
Ti is on both sides, Ti3+ (d1) in LaTiO3 and Ti4+ (d0) in SrTiO3, and the Ti valence
across the interface is read from the Ti L2,3 fine structure. Here the film (LaTiO3,
x < interface) and substrate (SrTiO3) share the SrTiO3 lattice (a = 3.905 Å, from a
pymatgen cubic cell projected along c), 20 nm thick along the beam, over a 40 nm field.

- Interface: the BO2 plane at x_i(y), stepped by whole unit cells over seeded
  terraces. La/Sr intermixing: the La fraction of an A column is
  Φ(−s / w_mix) (s = x − x_i(y)), drawn binomially over the column's atoms.
- HAADF: columns Σ k n Z^1.7 × G(probe ⊗ column width); La columns ~2× Sr columns.
- Ti valence: v0(s) = 3 + Φ(s / w_val), w_val = √(w_mix² + λ²) with the charge
  spreading length λ, so it varies smoothly and monotonically across the interface.
- EELS: Ti L2,3 is the superposition f·Ti4+ + (1−f)·Ti3+ (f = v − 3) of two reference
  shapes: Ti4+ has sharp L3/L2 t2g–eg pairs split by 10Dq ≈ 2.2 eV (de Groot et al.,
  PRB 41, 928 (1990)); Ti3+ is ~1.6 eV lower and broader with a ~1.8 eV splitting.
  The O K pre-peak (O 2p–Ti 3d) weakens with Ti3+; La M4,5 marks the La side.
- Damage: beam-induced reduction. O loss δ = δ_max (1 − exp(−D / D_red)) at each
  column's cumulative dose D lowers Ti valence by 2δ (SrTiO3−δ), never healing.
  D_red = 1e9 e/Å² is a model parameter (titanates survive routine spectrum imaging,
  ~1e7–1e8 e/Å², but reduce under long point exposures): a 0.05 valence drop needs
  ~5e7 e/Å² (one 0.1 s point spectrum at 50 pA); the Ti L3 onset moves by ~1 eV
  once ~20 % of the Ti is reduced, ~2e8 e/Å². HAADF is unaffected.
"""

from __future__ import annotations

import logging
import math
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pymatgen.core import Lattice, Structure
from scipy.special import ndtr

from autoscope.instruments.dose import DoseMap
from autoscope.instruments.sim.eels import (
    EDGES,
    Edge,
    channel_width_eV,
    delocalisation_sigma_nm,
    edge_onset_eV,
    power_law,
)
from autoscope.instruments.sim.render import ColumnSet, project_columns
from autoscope.instruments.sim.sample import Sample, SpectrometerSpec, SurveyDefaults

log = logging.getLogger(__name__)

A_NM = 0.3905
THICKNESS_NM = 20.0
HALF_FIELD_NM = 20.0
Z = {"Sr": 38, "La": 57, "Ti": 22, "O": 8}
HAADF_NM2_PER_ZPOW = 5.0e-8  # a La column ~15 % of the beam at 0.08 nm probe FWHM
Z_EXPONENT = 1.7
COLUMN_SIGMA_NM = 0.05  # thermal vibration + beam spreading in a 20 nm crystal
CHARGE_SPREAD_NM = 0.6  # Ti3+ leaks ~1 nm past the La (Ohtomo et al. 2002)
REDUCTION_DOSE_E_PER_A2 = 1.0e9
MAX_O_LOSS = 0.5  # SrTiO2.5: all Ti3+
RESOLUTION_FWHM_EV = 0.4
BACKGROUND_NM2_PER_EV = 2.5e-8  # per probe-weighted atom, at 400 eV
BACKGROUND_EXPONENT = 3.0
BACKGROUND_SIGMA_NM = 0.5
TI_L_WINDOW_EV = (450.0, 470.0)

#: Ti L2,3 references: (centre_eV, area, fwhm_eV) of L3 t2g, L3 eg, L2 t2g, L2 eg
TI4_L23 = Edge(
    "Ti", "L2,3 (Ti4+)", 457.0, 3.0e-6, exponent=1.5,
    peaks=((457.9, 0.10, 0.6), (460.1, 0.18, 1.2), (463.2, 0.12, 1.1), (465.5, 0.16, 1.6)),
)  # fmt: skip
TI3_L23 = Edge(
    "Ti", "L2,3 (Ti3+)", 455.4, 2.8e-6, exponent=1.5,
    peaks=((456.3, 0.09, 1.2), (458.1, 0.17, 1.8), (461.6, 0.11, 1.6), (463.6, 0.15, 2.0)),
)  # fmt: skip
#: O K: pre-peaks (t2g, eg hybridised with Ti 3d), then the A-site/continuum features
O_K_TI4 = Edge(
    "O", "K (SrTiO3)", 530.0, 0.8e-6, exponent=2.8,
    peaks=((530.7, 0.10, 1.0), (533.1, 0.08, 1.5), (537.5, 0.14, 3.5), (545.0, 0.12, 6.0)),
)  # fmt: skip
O_K_TI3 = Edge(
    "O", "K (LaTiO3)", 530.3, 0.8e-6, exponent=2.8,
    peaks=((531.0, 0.04, 1.3), (533.0, 0.07, 1.8), (535.8, 0.10, 3.0), (543.0, 0.13, 6.0)),
)  # fmt: skip
LA_M45 = EDGES["La"][0]


def srtio3_unit_cell() -> Structure:
    """Cubic SrTiO3 (Pm-3m, a = 3.905 Å)."""
    return Structure(
        Lattice.cubic(A_NM * 10),
        ["Sr", "Ti", "O", "O", "O"],
        [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
    )


class OxideInterfaceSample(Sample):
    """LaTiO3/SrTiO3 interface: stepped, intermixed, with a Ti3+→Ti4+ valence profile."""

    name: ClassVar[str] = "oxide-interface"
    description: ClassVar[str] = (
        "LaTiO3/SrTiO3 interface at 200 kV: Ti L2,3 onset and crystal-field splitting change "
        "with Ti valence across a stepped, intermixed interface; the beam reduces Ti4+"
    )

    class Variant(BaseModel):
        """Where the interface lies and how intermixed it is (the defaults are the scenario's own)."""

        model_config = ConfigDict(frozen=True, extra="forbid")

        interface_shift_nm: float = Field(
            0.0, ge=-12.0, le=12.0, description="moves the whole interface along x (whole cells)"
        )
        mix_width_nm: tuple[float, float] = Field((0.35, 0.7), description="La/Sr intermixing width range")

        @model_validator(mode="after")
        def _ordered(self) -> OxideInterfaceSample.Variant:
            lo, hi = self.mix_width_nm
            if not 0.05 <= lo <= hi <= 3.0:
                raise ValueError(f"mix_width_nm: need 0.05 <= low <= high <= 3, got ({lo}, {hi})")
            return self

    def __init__(self, rng: np.random.Generator, variant: Variant | None = None) -> None:
        self.variant = variant or self.Variant()
        self.unit_cell = srtio3_unit_cell()
        n_cells = int(np.ceil(2 * HALF_FIELD_NM / A_NM))
        cells = (np.arange(n_cells) - n_cells // 2) * A_NM
        self.row_y_nm = cells  # A-site rows along y
        self.mix_width_nm = float(rng.uniform(*self.variant.mix_width_nm))
        self.valence_width_nm = math.hypot(self.mix_width_nm, CHARGE_SPREAD_NM)
        self.interface_x_nm = self._stepped_interface(rng, n_cells)

        per_cell = project_columns(self.unit_cell)  # (x, y, {el: n}) within one cell
        atoms_per_column = int(round(THICKNESS_NM / A_NM))
        gx, gy = np.meshgrid(cells, cells)
        xs, ys, kinds, counts = [], [], [], []
        for fx, fy, species in per_cell:
            xs.append(gx.ravel() + fx)
            ys.append(gy.ravel() + fy)
            kinds.append(np.full(gx.size, "A" if "Sr" in species else ("B" if "Ti" in species else "O")))
            counts.append([species.get(el, 0) * atoms_per_column for el in ("Sr", "Ti", "O")])
            counts[-1] = np.tile(counts[-1], (gx.size, 1))
        x, y = np.concatenate(xs), np.concatenate(ys)
        self.kind = np.concatenate(kinds)
        n_sr_ti_o = np.concatenate(counts).astype(float)
        # La/Sr intermixing on A columns: binomial draw of La atoms per column
        s = x - self._interface_at(y)
        is_a = self.kind == "A"
        n_la = np.zeros(len(x))
        n_la[is_a] = rng.binomial(atoms_per_column, ndtr(-s[is_a] / self.mix_width_nm))
        #: atoms per column (n_columns, 4): Sr, La, Ti, O
        self.column_atoms = np.column_stack([n_sr_ti_o[:, 0] - n_la, n_la, n_sr_ti_o[:, 1], n_sr_ti_o[:, 2]])
        zpow = np.array([Z[el] for el in ("Sr", "La", "Ti", "O")], float) ** Z_EXPONENT
        self.columns = ColumnSet(x, y, HAADF_NM2_PER_ZPOW * self.column_atoms @ zpow)
        #: distance from the interface (nm, > 0 in SrTiO3), pristine valence, O loss per column
        self.column_s_nm = s
        self.valence0 = 3.0 + ndtr(s / self.valence_width_nm)
        self.o_loss = np.zeros(len(x))

        h = HALF_FIELD_NM
        self.extent_nm = (-h, h, -h, h)
        self.dose_cell_nm = 0.1
        self.probe_fwhm_nm = 0.08
        self.voltage_kV = 200.0
        self.spectrometer = SpectrometerSpec(
            energy_min_eV=400.0, energy_max_eV=900.0, dispersion_eV=0.125, default_window_eV=(430.0, 580.0)
        )
        self.survey = SurveyDefaults(
            fov_nm=30.0, pixels=512, dwell_s=4e-6, current_pA=50.0, spectrum_dwell_s=0.1
        )

    def _stepped_interface(self, rng: np.random.Generator, n_rows: int) -> np.ndarray:
        """Interface x (nm) per A row: a BO2 plane, stepped by whole cells over 3–12 nm terraces."""
        i0 = int(rng.integers(-3, 4))
        out = np.empty(n_rows)
        row = 0
        while row < n_rows:
            terrace = int(rng.uniform(3.0, 12.0) / A_NM)
            out[row : row + terrace] = (i0 + 0.5) * A_NM
            row += terrace
            i0 += int(rng.choice([-1, 1])) if abs(i0) < 4 else -int(np.sign(i0))
        return out + round(self.variant.interface_shift_nm / A_NM) * A_NM

    def _interface_at(self, y_nm: np.ndarray) -> np.ndarray:
        """Interface x (nm) for columns at ``y_nm``; a half-row (B, O) column belongs to the row below."""
        row = np.floor((np.asarray(y_nm) - self.row_y_nm[0]) / A_NM + 0.25).astype(int)
        return self.interface_x_nm[np.clip(row, 0, len(self.row_y_nm) - 1)]

    # ----------------------------------------------------------------- signals
    @property
    def valence(self) -> np.ndarray:
        """Ti valence per column now (pristine profile lowered by beam-induced O loss)."""
        return np.clip(self.valence0 - 2.0 * self.o_loss, 3.0, 4.0)

    def haadf(self, x_nm: np.ndarray, y_nm: np.ndarray, probe_sigma_nm: float) -> np.ndarray:
        return self.columns.render(x_nm, y_nm, math.hypot(probe_sigma_nm, COLUMN_SIGMA_NM))

    def ti_valence_at(self, x_nm: float, y_nm: float, probe_sigma_nm: float) -> float:
        """Ti-weighted mean valence seen by a probe at (x_nm, y_nm)."""
        sigma = math.hypot(probe_sigma_nm, delocalisation_sigma_nm(TI4_L23.onset_eV, self.voltage_kV))
        n_ti = self.column_atoms[:, 2]
        w = self.columns.weighted_sum(x_nm, y_nm, sigma, np.column_stack([n_ti, n_ti * self.valence]))
        return float(w[1] / w[0]) if w[0] > 0 else float("nan")

    def spectrum(self, x_nm: float, y_nm: float, energy_eV: np.ndarray, probe_sigma_nm: float) -> np.ndarray:
        e = np.asarray(energy_eV, float)
        n_all = self.column_atoms.sum(axis=1)
        n_bg = self.columns.weighted_sum(x_nm, y_nm, math.hypot(probe_sigma_nm, BACKGROUND_SIGMA_NM), n_all)
        per_eV = power_law(e, BACKGROUND_NM2_PER_EV * float(n_bg), BACKGROUND_EXPONENT, 400.0)
        f4 = self.valence - 3.0
        n_ti, n_o, n_la = self.column_atoms[:, 2], self.column_atoms[:, 3], self.column_atoms[:, 1]
        # O-K fine structure follows the valence of the Ti the O is bonded to (same local s)
        for ref4, ref3, n in ((TI4_L23, TI3_L23, n_ti), (O_K_TI4, O_K_TI3, n_o)):
            if ref3.onset_eV > e.max() + 5:
                continue
            sigma = math.hypot(probe_sigma_nm, delocalisation_sigma_nm(ref4.onset_eV, self.voltage_kV))
            w4, w3 = self.columns.weighted_sum(x_nm, y_nm, sigma, np.column_stack([n * f4, n * (1 - f4)]))
            per_eV += w4 * ref4.cross_section(e, RESOLUTION_FWHM_EV) + w3 * ref3.cross_section(
                e, RESOLUTION_FWHM_EV
            )
        if LA_M45.onset_eV < e.max() + 5:
            sigma = math.hypot(probe_sigma_nm, delocalisation_sigma_nm(LA_M45.onset_eV, self.voltage_kV))
            per_eV += self.columns.weighted_sum(x_nm, y_nm, sigma, n_la) * LA_M45.cross_section(
                e, RESOLUTION_FWHM_EV
            )
        return per_eV * channel_width_eV(e)

    # ----------------------------------------------------------------- damage
    def apply_damage(self, dose: DoseMap, rng: np.random.Generator) -> None:
        """Reduce Ti where oxygen is lost: δ = δ_max (1 − exp(−D/D_red)), monotone in dose and time."""
        d = dose.at(self.columns.xy_nm[:, 0], self.columns.xy_nm[:, 1])
        loss = MAX_O_LOSS * -np.expm1(-d / REDUCTION_DOSE_E_PER_A2)
        self.o_loss = np.maximum(self.o_loss, loss)

    @staticmethod
    def reference_onsets_eV() -> dict[str, float]:
        """Ti L3 onsets (10 % of the L2,3 maximum) of the Ti3+ and Ti4+ reference shapes."""
        e = np.arange(440.0, 480.0, 0.01)
        return {
            "Ti3+": edge_onset_eV(e, TI3_L23.cross_section(e, RESOLUTION_FWHM_EV), TI_L_WINDOW_EV),
            "Ti4+": edge_onset_eV(e, TI4_L23.cross_section(e, RESOLUTION_FWHM_EV), TI_L_WINDOW_EV),
        }

    def truth(self) -> dict[str, Any]:
        onsets = self.reference_onsets_eV()
        s = np.round(np.arange(-4.0, 4.0001, 0.1), 3)
        b = self.kind == "B"
        return {
            "system": "LaTiO3/SrTiO3",
            "film_side": "x < interface_x_nm (LaTiO3)",
            "lattice_a_nm": A_NM,
            "thickness_nm": THICKNESS_NM,
            "interface_profile": {
                "y_nm": [float(v) for v in self.row_y_nm],
                "interface_x_nm": [float(v) for v in self.interface_x_nm],
            },
            "intermixing_width_nm": self.mix_width_nm,
            "valence_width_nm": self.valence_width_nm,
            "valence_vs_distance": {
                "distance_nm": [float(v) for v in s],
                "ti_valence": [float(v) for v in 3.0 + ndtr(s / self.valence_width_nm)],
            },
            "edge_onsets_eV": {
                "LaTiO3": {"Ti_L3": onsets["Ti3+"], "O_K": O_K_TI3.onset_eV},
                "SrTiO3": {"Ti_L3": onsets["Ti4+"], "O_K": O_K_TI4.onset_eV},
            },
            "onset_shift_eV": onsets["Ti4+"] - onsets["Ti3+"],
            "reduction": {
                "dose_scale_e_per_A2": REDUCTION_DOSE_E_PER_A2,
                "max_o_loss": float(self.o_loss.max()),
                "reduced_ti_columns": int(np.sum(b & (self.o_loss > 0.025))),
                "max_valence_drop": float(np.max(self.valence0[b] - self.valence[b])) if b.any() else 0.0,
            },
        }
