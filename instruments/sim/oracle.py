"""Evaluation-only back door into the twin: ground truth and noise-free signals.

Benchmarks and tests use it to score what an experiment found; agents and tools
never get one (the microscope's protocols expose nothing of the sample).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from autoscope.instruments.dose import DoseMap
from autoscope.instruments.sim.microscope import SimMicroscope


class Oracle:
    """Reads the hidden state of a ``SimMicroscope`` without changing it."""

    def __init__(self, microscope: SimMicroscope) -> None:
        self._scope = microscope

    @property
    def _sample(self):
        return self._scope._sample

    def truth(self) -> dict[str, Any]:
        """The sample's ground truth (JSON-serialisable)."""
        return self._sample.truth()

    def true_spectrum(self, x_nm: float, y_nm: float, energy_eV: np.ndarray) -> np.ndarray:
        """Expected counts per incident electron at a sample-frame point: no noise, no drift,
        current damage state, probe blur included."""
        return self._sample.spectrum(
            float(x_nm), float(y_nm), np.asarray(energy_eV, dtype=np.float64), self._scope._probe_sigma_nm
        )

    def true_haadf(self, x_nm: np.ndarray, y_nm: np.ndarray) -> np.ndarray:
        """Expected HAADF fraction (0..1) at sample-frame points, probe-blurred, noise-free."""
        return self._sample.haadf(
            np.asarray(x_nm, float), np.asarray(y_nm, float), self._scope._probe_sigma_nm
        )

    def drift_nm(self, t_s: float | None = None) -> tuple[float, float]:
        """Drift offset (dx, dy) at instrument time ``t_s`` (default: now)."""
        return self._scope._drift.peek(self._scope.now_s() if t_s is None else float(t_s))

    def dose_map(self) -> DoseMap:
        """The physical dose map that drives damage (a live reference; do not modify)."""
        return self._scope._dose
