"""Store-first, exactly-once acquisition steps.

Every acquisition an agent or a plan asks for goes through ``Acquirer``: a step whose
result is already in the run store is read back, never re-acquired (this is what
makes a killed run resumable without repeating instrument actions); a new result is
stored before it is returned. Transient faults (timeouts, dropped connections,
corrupted frames) are logged as events and retried a bounded number of times.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from autoscope.instruments.errors import AcquisitionFailed, ConnectionLost, InstrumentTimeout
from autoscope.instruments.integrity import frame_is_corrupt
from autoscope.instruments.protocols import Microscope
from autoscope.instruments.records import Detector, ImageRecord, ImageRequest, SpectrumRecord
from autoscope.tools.store import RunStore

log = logging.getLogger(__name__)

Record = TypeVar("Record", ImageRecord, SpectrumRecord)


class CorruptFrame(AcquisitionFailed):
    """The instrument returned a frame that fails the integrity check."""

    code = "corrupt_frame"


_TRANSIENT = (InstrumentTimeout, ConnectionLost, CorruptFrame)


class Acquirer:
    """Acquire through ``microscope`` into ``store``, each step exactly once."""

    def __init__(
        self, microscope: Microscope, store: RunStore, *, attempts: int = 4, backoff_s: float = 0.05
    ):
        self.microscope = microscope
        self.store = store
        self.attempts = attempts
        self.backoff_s = backoff_s

    def _retrying(self, step_id: str) -> Retrying:
        def record_failure(state: Any) -> None:
            exc = state.outcome.exception()
            log.warning("step %s attempt %d failed: %s", step_id, state.attempt_number, exc)
            self.store.append_event(
                "acquisition_failed",
                step_id=step_id,
                attempt=state.attempt_number,
                error=getattr(exc, "code", type(exc).__name__),
                message=str(exc),
            )

        return Retrying(
            retry=retry_if_exception_type(_TRANSIENT),
            stop=stop_after_attempt(self.attempts),
            wait=wait_exponential(multiplier=self.backoff_s, max=2.0),
            before_sleep=record_failure,
            reraise=True,
        )

    def _step(
        self, step_id: str, acquire: Callable[[], Record], save: Callable[..., Any], extra: dict
    ) -> Record:
        """The record of ``step_id``: read back when stored, else acquired (retried), checked and stored."""
        if self.store.has_step(step_id):
            log.info("step %s already in the store; not re-acquired", step_id)
            return self.store.load(step_id)  # type: ignore[return-value]

        def once() -> Record:
            rec = acquire()
            data = rec.data if isinstance(rec, ImageRecord) else rec.counts
            if frame_is_corrupt(data):
                raise CorruptFrame(f"data of step {step_id} failed the integrity check")
            return rec

        record = self._retrying(step_id)(once)
        save(step_id, record, **extra)
        return record

    def image(
        self,
        step_id: str,
        *,
        fov_nm: float,
        pixels: int,
        dwell_s: float,
        detector: Detector = Detector.HAADF,
        rows: int | None = None,
        **extra: Any,
    ) -> ImageRecord:
        """The image of ``step_id``: from the store when already acquired, else acquired and stored.
        ``rows``: pixels down when the field is not square."""
        req = ImageRequest.checked(
            fov_nm=fov_nm, pixels=pixels, dwell_s=dwell_s, detector=detector, rows=rows
        )
        return self._step(
            step_id,
            lambda: self.microscope.acquire_image(fov_nm, pixels, dwell_s, detector, **req.rows_kwargs()),
            self.store.save_image,
            extra,
        )

    def spectrum(
        self,
        step_id: str,
        *,
        x_nm: float,
        y_nm: float,
        dwell_s: float,
        energy_min_eV: float,
        energy_max_eV: float,
        **extra: Any,
    ) -> SpectrumRecord:
        """The spectrum of ``step_id``: from the store when already acquired, else acquired and stored.

        ``extra`` fields go into the acquisition event (e.g. the candidate index a campaign aimed at).
        """
        return self._step(
            step_id,
            lambda: self.microscope.acquire_spectrum(x_nm, y_nm, dwell_s, energy_min_eV, energy_max_eV),
            self.store.save_spectrum,
            extra,
        )
