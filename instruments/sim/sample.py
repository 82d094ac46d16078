"""What a simulated sample must provide to the digital twin.

A ``Sample`` is pure physics of the specimen in its own (drift-free) frame: the
expected, noise-free detector signal and EELS spectrum at sample-frame points, and
how its structure changes under cumulative dose. The twin (``microscope.py``) adds
everything the microscope does on top: drift, probe blur parameters, shot noise,
scan noise, the clock, dose bookkeeping and faults.

Each scenario module defines one subclass and registers it in ``scenarios.py``.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict

from autoscope.instruments.dose import DoseMap


class SpectrometerSpec(BaseModel):
    """The EELS set-up a scenario is measured with."""

    model_config = ConfigDict(frozen=True)

    energy_min_eV: float
    energy_max_eV: float
    dispersion_eV: float
    #: a window a survey uses by default
    default_window_eV: tuple[float, float]


class SurveyDefaults(BaseModel):
    """Acquisition settings that suit the scenario (used by ``autoscope survey``)."""

    model_config = ConfigDict(frozen=True)

    fov_nm: float
    pixels: int
    dwell_s: float
    current_pA: float
    spectrum_dwell_s: float


class Sample(abc.ABC):
    """A specimen: noise-free signals in the sample frame, plus damage under dose."""

    #: scenario name (CLI), and a one-line description
    name: ClassVar[str]
    description: ClassVar[str]

    #: region (x_min, x_max, y_min, y_max) in nm that the stage can reach
    extent_nm: tuple[float, float, float, float]
    #: cell side (nm) of the physical dose map that drives damage
    dose_cell_nm: float
    #: probe FWHM (nm) of the microscope set-up this scenario is imaged with
    probe_fwhm_nm: float
    #: accelerating voltage (kV)
    voltage_kV: float
    spectrometer: SpectrometerSpec
    survey: SurveyDefaults

    @abc.abstractmethod
    def haadf(self, x_nm: np.ndarray, y_nm: np.ndarray, probe_sigma_nm: float) -> np.ndarray:
        """Expected fraction (0..1) of beam electrons scattered onto the HAADF detector.

        ``x_nm`` and ``y_nm`` are same-shaped arrays of sample-frame probe positions
        (for a scan: a regular grid, possibly sheared by drift). The probe blur of
        Gaussian standard deviation ``probe_sigma_nm`` is included in the result.
        """

    def bright_field(self, x_nm: np.ndarray, y_nm: np.ndarray, probe_sigma_nm: float) -> np.ndarray:
        """Expected BF fraction; by default the unscattered complement of the HAADF signal."""
        return np.clip(1.0 - 4.0 * self.haadf(x_nm, y_nm, probe_sigma_nm), 0.02, 1.0)

    @abc.abstractmethod
    def spectrum(self, x_nm: float, y_nm: float, energy_eV: np.ndarray, probe_sigma_nm: float) -> np.ndarray:
        """Expected EELS counts per incident electron in each channel of ``energy_eV``."""

    @abc.abstractmethod
    def apply_damage(self, dose: DoseMap, rng: np.random.Generator) -> None:
        """Update the structure given the cumulative areal dose (e/Å²) so far.

        Called by the twin after every exposure. Must be monotone: damage never heals.
        """

    @abc.abstractmethod
    def truth(self) -> dict[str, Any]:
        """Ground truth for evaluation only (positions of targets, defect lists...).

        JSON-serialisable. Reached through ``Oracle``, never through the microscope.
        """
