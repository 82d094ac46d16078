"""Capability protocols: one small, runtime-checkable protocol per capability.

The simulated microscope, the replay backend, the remote client, the safety wrapper
and any vendor driver implement these. Units are in every name: ``_nm``, ``_s``,
``_pA``, ``_eV``. All positions are in the sample (stage) frame.
"""

from __future__ import annotations

from typing import Protocol, Self, runtime_checkable

from autoscope.instruments.records import (
    Capabilities,
    Detector,
    ImageRecord,
    InstrumentStatus,
    SpectrumRecord,
)


@runtime_checkable
class Imaging(Protocol):
    def acquire_image(
        self,
        fov_nm: float,
        pixels: int,
        dwell_s: float,
        detector: Detector = Detector.HAADF,
        rows: int | None = None,
    ) -> ImageRecord:
        """Scan a field ``fov_nm`` wide centred on the stage position.

        ``pixels`` across, ``rows`` down (default ``pixels``: a square field; square pixels,
        so the field is ``fov_nm · rows / pixels`` tall), ``dwell_s`` per pixel. Needs the beam
        unblanked.
        """
        ...


@runtime_checkable
class Spectroscopy(Protocol):
    def acquire_spectrum(
        self, x_nm: float, y_nm: float, dwell_s: float, energy_min_eV: float, energy_max_eV: float
    ) -> SpectrumRecord:
        """Park the probe at (x_nm, y_nm) and record an EELS spectrum for ``dwell_s``.

        The position must lie inside the scan field (``max_fov_nm``) around the stage
        position. Needs the beam unblanked.
        """
        ...


@runtime_checkable
class Beam(Protocol):
    def probe_position_nm(self) -> tuple[float, float]: ...

    def move_probe(self, x_nm: float, y_nm: float) -> None:
        """Park the probe at a sample-frame position within the scan field."""
        ...

    def blank_beam(self) -> None: ...

    def unblank_beam(self) -> None: ...

    def beam_blanked(self) -> bool: ...

    def beam_current_pA(self) -> float: ...

    def set_beam_current(self, current_pA: float) -> None: ...


@runtime_checkable
class Stage(Protocol):
    def stage_position_nm(self) -> tuple[float, float]: ...

    def move_stage(self, x_nm: float, y_nm: float) -> None:
        """Move the stage so that the optical axis sits at (x_nm, y_nm); within travel limits."""
        ...


@runtime_checkable
class Status(Protocol):
    def status(self) -> InstrumentStatus: ...

    def capabilities(self) -> Capabilities: ...


@runtime_checkable
class Clock(Protocol):
    def now_s(self) -> float:
        """Instrument clock in seconds since the session started (simulated on the twin)."""
        ...


@runtime_checkable
class Microscope(Imaging, Spectroscopy, Beam, Stage, Status, Clock, Protocol):
    """A full STEM: every capability above."""


@runtime_checkable
class Closeable(Protocol):
    """A back end that holds something to release: the Nion simulator's threads, a remote
    client's connection. The twin and the replay hold nothing and have no ``close``."""

    def close(self) -> None: ...


def close_instrument(microscope: object) -> None:
    """Close a back end where it has something to close; nothing for one that has not."""
    if isinstance(microscope, Closeable):
        microscope.close()


class ClosesOnExit:
    """``with backend: ...`` closes the back end on the way out (mixed into closeable back ends)."""

    def close(self) -> None:  # pragma: no cover - each back end defines its own
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
