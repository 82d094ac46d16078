"""Injected instrument faults for the twin, from their own seeded random stream.

Each acquisition draws the same amount of randomness whatever the rates, so turning
faults on or off never changes the physics noise of later acquisitions.
"""

from __future__ import annotations

import enum

import numpy as np

from autoscope.instruments.sim.config import SimConfig


class Fault(enum.Enum):
    NONE = "none"
    TIMEOUT = "timeout"
    DISCONNECT = "disconnect"
    CORRUPT = "corrupt"


class FaultInjector:
    """Decides, per acquisition, whether and how it fails."""

    def __init__(self, config: SimConfig, rng: np.random.Generator) -> None:
        self._config = config
        self._rng = rng

    def draw(self) -> tuple[Fault, np.ndarray]:
        """The fault of the next acquisition and three uniforms to shape a corruption."""
        u = self._rng.random(6)
        c = self._config
        if u[0] < c.timeout_rate:
            return Fault.TIMEOUT, u[3:]
        if u[1] < c.disconnect_rate:
            return Fault.DISCONNECT, u[3:]
        if u[2] < c.corrupt_frame_rate:
            return Fault.CORRUPT, u[3:]
        return Fault.NONE, u[3:]


def corrupt(data: np.ndarray, shape_u: np.ndarray, saturation_counts: float) -> np.ndarray:
    """A copy of ``data`` with a band stuck at saturation (or NaN): a dropped/garbled readout.

    Images get a band of whole rows, spectra a run of channels.
    """
    out = np.array(data, dtype=np.float32 if data.ndim == 2 else np.float64, copy=True)
    n = out.shape[0]
    width = max(2, int(round(n / 8 * (0.25 + 0.75 * shape_u[0])))) if out.ndim == 2 else max(8, n // 16)
    width = min(width, n)
    start = int(shape_u[1] * (n - width + 1))
    value = np.nan if shape_u[2] < 0.25 else saturation_counts
    out[start : start + width, ...] = value
    return out
