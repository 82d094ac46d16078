"""What every in-process backend (the twin, the replay) keeps the same way.

The beam blanker and current, the stage position, and the checks that a request fits
the instrument's ``Capabilities`` — one implementation, so the backends cannot drift
apart in what they accept.
"""

from __future__ import annotations

import abc
import math

from autoscope.instruments.errors import BeamBlanked, InvalidRequest
from autoscope.instruments.records import Capabilities, InstrumentStatus


class LocalBackend(abc.ABC):
    """Beam and stage state of an in-process backend. Subclasses set the attributes in ``__init__``."""

    name: str
    backend: str
    _caps: Capabilities
    _blanked: bool
    _current_pA: float
    _stage: tuple[float, float]
    _clock_s: float
    _acquisitions: int
    _total_dose_e: float

    def capabilities(self) -> Capabilities:
        return self._caps

    # ---------------------------------------------------------------- Beam
    def blank_beam(self) -> None:
        self._blanked = True

    def unblank_beam(self) -> None:
        self._blanked = False

    def beam_blanked(self) -> bool:
        return self._blanked

    def beam_current_pA(self) -> float:
        return self._current_pA

    def set_beam_current(self, current_pA: float) -> None:
        lo, hi = self._caps.current_min_pA, self._caps.current_max_pA
        if not (math.isfinite(current_pA) and lo <= current_pA <= hi):
            raise InvalidRequest("current_pA", f"{current_pA} pA is outside the range {lo}..{hi} pA")
        self._current_pA = float(current_pA)

    def _require_beam(self) -> None:
        if self._blanked:
            raise BeamBlanked("the beam is blanked; call unblank_beam() before acquiring")

    # ---------------------------------------------------------------- Stage and scan field
    def stage_position_nm(self) -> tuple[float, float]:
        return self._stage

    def _check_stage_target(self, x_nm: float, y_nm: float) -> tuple[float, float]:
        """(x_nm, y_nm) as floats, or ``InvalidRequest`` when outside the stage travel."""
        lim = self._caps.stage
        for field, v, lo, hi in (
            ("x_nm", x_nm, lim.x_min_nm, lim.x_max_nm),
            ("y_nm", y_nm, lim.y_min_nm, lim.y_max_nm),
        ):
            if not (math.isfinite(v) and lo <= v <= hi):
                raise InvalidRequest(field, f"{v} nm is outside the stage travel {lo}..{hi} nm")
        return float(x_nm), float(y_nm)

    def _check_in_field(self, x_nm: float, y_nm: float) -> None:
        """``InvalidRequest`` unless (x, y) is finite and inside the scan field around the stage."""
        half = self._caps.max_fov_nm / 2.0
        sx, sy = self._stage
        for field, value, centre in (("x_nm", x_nm, sx), ("y_nm", y_nm, sy)):
            if not math.isfinite(value) or abs(value - centre) > half:
                raise InvalidRequest(
                    field,
                    f"{value} nm is outside the scan field (±{half:g} nm around the stage at {centre:g} nm)",
                )

    # ---------------------------------------------------------------- Status, Clock
    @abc.abstractmethod
    def probe_position_nm(self) -> tuple[float, float]: ...

    def status(self) -> InstrumentStatus:
        px, py = self.probe_position_nm()
        return InstrumentStatus(
            name=self.name,
            backend=self.backend,
            stage_x_nm=self._stage[0],
            stage_y_nm=self._stage[1],
            probe_x_nm=px,
            probe_y_nm=py,
            beam_blanked=self._blanked,
            current_pA=self._current_pA,
            clock_s=self._clock_s,
            acquisitions=self._acquisitions,
            total_dose_e=self._total_dose_e,
            capabilities=self._caps,
        )

    def now_s(self) -> float:
        return self._clock_s
