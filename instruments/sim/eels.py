"""Core-loss EELS building blocks: power-law background, edge shapes, delocalisation, onsets.

Shapes follow the usual textbook forms (Egerton, *Electron Energy-Loss Spectroscopy in
the Electron Microscope*, 3rd ed., ch. 3-4): a hydrogenic "sawtooth" edge that jumps at
the onset and decays as a power law; a delayed edge (M4,5 of 4d metals, N4,5 of 5d
metals) whose maximum lies tens of eV above the onset; white lines (L2,3 of 3d metals,
M4,5 of lanthanides) as Gaussian peaks on a small continuum step. Every edge is scaled
by ``strength_nm2``: its cross-section per atom integrated from the onset over
``EDGE_WINDOW_EV``. The strengths below are order-of-magnitude partial cross-sections
for a ~30 mrad collection angle, chosen for plausible jump ratios, not tabulated values.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import numpy as np
from scipy.special import erf

#: integration window (eV above onset) that defines an edge's ``strength_nm2``
EDGE_WINDOW_EV = 100.0
FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))


def electron_wavelength_nm(voltage_kV: float) -> float:
    """Relativistic electron wavelength (nm) at accelerating voltage ``voltage_kV``."""
    v = voltage_kV * 1e3
    return 1.2264262862 / math.sqrt(v * (1.0 + 0.97846914e-6 * v))


def delocalisation_sigma_nm(edge_eV: float, voltage_kV: float) -> float:
    """Gaussian σ (nm) of the inelastic delocalisation of an edge at ``edge_eV``.

    Egerton's estimate d50 ≈ 0.5 λ / θ_E^(3/4), with θ_E = E / (γ m v²) the
    characteristic angle; d50 is taken as the FWHM of a Gaussian.
    """
    e0_eV = voltage_kV * 1e3
    gamma = 1.0 + e0_eV / 510998.95
    beta2 = 1.0 - 1.0 / gamma**2
    theta_e = edge_eV / (gamma * 510998.95 * beta2)
    d50_nm = 0.5 * electron_wavelength_nm(voltage_kV) / theta_e**0.75
    return d50_nm * FWHM_TO_SIGMA


def channel_width_eV(energy_eV: np.ndarray) -> np.ndarray:
    """Width (eV) of each channel of an energy axis given by channel centres."""
    energy_eV = np.asarray(energy_eV, float)
    if energy_eV.size < 2:
        return np.ones_like(energy_eV)
    return np.abs(np.gradient(energy_eV))


def power_law(energy_eV: np.ndarray, amplitude_per_eV: float, exponent: float, ref_eV: float) -> np.ndarray:
    """A E^-r background (per eV), equal to ``amplitude_per_eV`` at ``ref_eV``."""
    e = np.maximum(np.asarray(energy_eV, float), 1.0)
    return amplitude_per_eV * (e / ref_eV) ** (-exponent)


def smooth_step(energy_eV: np.ndarray, onset_eV: float, sigma_eV: float) -> np.ndarray:
    """A unit step at ``onset_eV`` blurred by a Gaussian resolution of σ ``sigma_eV``."""
    return 0.5 * (1.0 + erf((np.asarray(energy_eV, float) - onset_eV) / (math.sqrt(2.0) * sigma_eV)))


def gaussian_peaks(
    energy_eV: np.ndarray, peaks: Sequence[tuple[float, float, float]], resolution_fwhm_eV: float
) -> np.ndarray:
    """Sum of Gaussian peaks (centre_eV, area, fwhm_eV), each broadened by the resolution."""
    e = np.asarray(energy_eV, float)
    out = np.zeros_like(e)
    for centre, area, fwhm in peaks:
        s = math.hypot(fwhm, resolution_fwhm_eV) * FWHM_TO_SIGMA
        out += area * np.exp(-0.5 * ((e - centre) / s) ** 2) / (s * math.sqrt(2.0 * math.pi))
    return out


@dataclasses.dataclass(frozen=True)
class Edge:
    """One ionisation edge of one element."""

    element: str
    label: str  # "L2,3", "M4,5", "K"...
    onset_eV: float
    strength_nm2: float  # cross-section per atom integrated over EDGE_WINDOW_EV above onset
    exponent: float = 3.0  # power-law decay of the continuum far above the onset
    delay_eV: float = 0.0  # rise width of a delayed edge (0: sharp sawtooth)
    #: white lines / near-edge peaks (centre_eV, area relative to the continuum's, fwhm_eV)
    peaks: tuple[tuple[float, float, float], ...] = ()

    def _shape(self, energy_eV: np.ndarray, resolution_fwhm_eV: float) -> np.ndarray:
        e = np.asarray(energy_eV, float)
        sig = max(resolution_fwhm_eV * FWHM_TO_SIGMA, 1e-3)
        above = np.maximum(e - self.onset_eV, 0.0)
        cont = smooth_step(e, self.onset_eV, sig) * (np.maximum(e, self.onset_eV) / self.onset_eV) ** (
            -self.exponent
        )
        if self.delay_eV > 0:
            cont = cont * above**2 / (above**2 + self.delay_eV**2)
        # continuum normalised to unit integral over the window; peaks carry their relative area
        return cont / _continuum_norm(self, resolution_fwhm_eV) + gaussian_peaks(
            e, self.peaks, resolution_fwhm_eV
        )

    def cross_section(self, energy_eV: np.ndarray, resolution_fwhm_eV: float) -> np.ndarray:
        """Differential cross-section per atom (nm²/eV) on ``energy_eV``."""
        return (
            self.strength_nm2
            * self._shape(energy_eV, resolution_fwhm_eV)
            / _total_norm(self, resolution_fwhm_eV)
        )


def _window_grid(edge: Edge) -> np.ndarray:
    return np.arange(edge.onset_eV - 5.0, edge.onset_eV + EDGE_WINDOW_EV, 0.02)


@functools.lru_cache(maxsize=256)
def _continuum_norm(edge: Edge, resolution_fwhm_eV: float) -> float:
    e = _window_grid(edge)
    sig = max(resolution_fwhm_eV * FWHM_TO_SIGMA, 1e-3)
    above = np.maximum(e - edge.onset_eV, 0.0)
    cont = smooth_step(e, edge.onset_eV, sig) * (np.maximum(e, edge.onset_eV) / edge.onset_eV) ** (
        -edge.exponent
    )
    if edge.delay_eV > 0:
        cont = cont * above**2 / (above**2 + edge.delay_eV**2)
    return float(np.trapezoid(cont, e))


@functools.lru_cache(maxsize=256)
def _total_norm(edge: Edge, resolution_fwhm_eV: float) -> float:
    e = _window_grid(edge)
    return float(np.trapezoid(edge._shape(e, resolution_fwhm_eV), e))


def fit_power_law(energy_eV: np.ndarray, counts: np.ndarray, window_eV: tuple[float, float]) -> np.ndarray:
    """Least-squares power-law fit of ``counts`` in a pre-edge window, evaluated on the whole axis."""
    e, c = np.asarray(energy_eV, float), np.asarray(counts, float)
    sel = (e >= window_eV[0]) & (e <= window_eV[1]) & (c > 0)
    if sel.sum() < 3:
        raise ValueError("pre-edge window holds fewer than 3 positive channels")
    slope, intercept = np.polyfit(np.log(e[sel]), np.log(c[sel]), 1)
    return np.exp(intercept) * e**slope


def edge_onset_eV(
    energy_eV: np.ndarray, signal: np.ndarray, window_eV: tuple[float, float], fraction: float = 0.1
) -> float:
    """First energy in ``window_eV`` where ``signal`` reaches ``fraction`` of its maximum there.

    Linear interpolation between channels gives sub-channel precision.
    """
    e, s = np.asarray(energy_eV, float), np.asarray(signal, float)
    sel = np.flatnonzero((e >= window_eV[0]) & (e <= window_eV[1]))
    if sel.size < 2:
        raise ValueError("onset window holds fewer than 2 channels")
    es, ss = e[sel], s[sel]
    level = fraction * ss.max()
    i = int(np.argmax(ss >= level))
    if i == 0:
        return float(es[0])
    return float(es[i - 1] + (level - ss[i - 1]) * (es[i] - es[i - 1]) / (ss[i] - ss[i - 1]))


#: edges in the 100-900 eV range of the elements the scenarios use (onsets: Egerton's
#: edge tables / X-ray binding energies); strengths in nm² per atom as described above
EDGES: dict[str, tuple[Edge, ...]] = {
    "S": (Edge("S", "L2,3", 165.0, 1.0e-5, exponent=2.6, delay_eV=4.0),),
    "Mo": (
        Edge("Mo", "M4,5", 227.0, 6.0e-6, exponent=2.4, delay_eV=25.0),
        Edge("Mo", "M3", 392.0, 1.0e-6, exponent=3.0, delay_eV=6.0),
    ),
    "W": (Edge("W", "N4,5", 245.0, 2.0e-6, exponent=2.5, delay_eV=20.0),),
    "Se": (Edge("Se", "M2,3", 162.0, 1.0e-6, exponent=2.8, delay_eV=8.0),),
    "O": (Edge("O", "K", 532.0, 0.8e-6, exponent=2.8, peaks=((537.0, 0.25, 3.0), (545.0, 0.2, 6.0))),),
    "La": (Edge("La", "M4,5", 832.0, 4.0e-6, exponent=2.5, peaks=((832.7, 0.9, 1.5), (849.3, 1.1, 1.8))),),
}
