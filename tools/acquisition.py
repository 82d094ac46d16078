"""Store-first, exactly-once acquisition steps.

Every acquisition an agent or a plan asks for goes through ``Acquirer``: a step whose
result is already in the run store is read back, never re-acquired (this is what
makes a killed run resumable without repeating instrument actions); a new result is
stored before it is returned. Transient faults (timeouts, dropped connections,
corrupted frames) are logged as events and retried a bounded number of times.

A stored step is reused only for the same request. Every acquisition event carries the
request it answered (``request``: kind, field or position, dwell, energy window, beam
current, stage position for an image) and its ``request_sha256``. Asked for a stored step
id with a different request, the ``Acquirer`` either refuses (``StepConflict``, naming what
differs: a survey into an existing run directory) or, with ``on_conflict="rekey"``, keeps
the old data and stores the new acquisition under the next revision ``<step_id>.r2``,
``.r3``… (a plan edited after a partial execution re-takes what changed and reuses the rest;
a resume finds the revision whose request matches).

The beam is on only while an acquisition runs: each attempt unblanks it and blanks it again
whatever happens (``beam_on``), so no dose reaches the sample while a model is fitted, a
person is asked or the stage moves.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Literal, TypeVar

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from autoscope.instruments.errors import (
    AcquisitionFailed,
    ConnectionLost,
    InstrumentTimeout,
    InvalidRequest,
)
from autoscope.instruments.integrity import frame_is_corrupt
from autoscope.instruments.protocols import Microscope
from autoscope.instruments.records import (
    Detector,
    ImageRecord,
    ImageRequest,
    SpectrumRecord,
    SpectrumRequest,
    request_sha256,
)
from autoscope.tools.store import RunStore

log = logging.getLogger(__name__)

Record = TypeVar("Record", ImageRecord, SpectrumRecord)


class CorruptFrame(AcquisitionFailed):
    """The instrument returned a frame that fails the integrity check."""

    code = "corrupt_frame"


@contextlib.contextmanager
def beam_on(microscope: Microscope) -> Iterator[None]:
    """The beam unblanked for the body and blanked again whatever happens."""
    microscope.unblank_beam()
    try:
        yield
    finally:
        microscope.blank_beam()


class StepConflict(InvalidRequest):
    """A step id already holds an acquisition made with a different request."""

    code = "step_conflict"


_TRANSIENT = (InstrumentTimeout, ConnectionLost, CorruptFrame)
OnConflict = Literal["refuse", "rekey"]
MAX_REVISIONS = 100


def request_differences(stored: dict[str, Any], asked: dict[str, Any]) -> list[str]:
    """What differs between two requests, field by field (numbers equal to 1e-9 relative)."""
    out = []
    for key in sorted(stored.keys() | asked.keys()):
        a, b = stored.get(key), asked.get(key)
        same = (
            math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-9)
            if isinstance(a, int | float) and isinstance(b, int | float)
            else a == b
        )
        if not same:
            out.append(f"{key} {a!r} stored, {b!r} asked")
    return out


def revision_id(step_id: str, n: int) -> str:
    """The id of revision ``n`` of a step (revision 1 is the step id itself)."""
    return step_id if n == 1 else f"{step_id}.r{n}"


class Acquirer:
    """Acquire through ``microscope`` into ``store``, each step exactly once."""

    def __init__(
        self,
        microscope: Microscope,
        store: RunStore,
        *,
        attempts: int = 4,
        backoff_s: float = 0.05,
        on_conflict: OnConflict = "refuse",
        background_saves: bool = False,
    ):
        """``background_saves``: write each step to the store on a writer thread while the caller
        goes on (the next acquisition overlaps the write); at most one write is in flight, so a
        crash loses at most the step just measured, which a resume acquires again. ``flush``
        waits for it (and raises what it raised)."""
        self.microscope = microscope
        self.store = store
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.on_conflict = on_conflict
        #: wall-clock seconds spent inside the instrument's acquire calls (retries included): the
        #: time the column was busy, against which a campaign measures its dead time
        self.instrument_s = 0.0
        self._writer = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="autoscope-store")
            if background_saves
            else None
        )
        self._pending: Future[Any] | None = None
        self._pending_id: str | None = None

    def flush(self) -> None:
        """Wait for the store write in flight, if any (re-raising its error)."""
        pending, self._pending, self._pending_id = self._pending, None, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        """Flush and stop the writer thread."""
        try:
            self.flush()
        finally:
            if self._writer is not None:
                self._writer.shutdown(wait=True)
                self._writer = None

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

    def _stored(self, step_id: str, request: dict[str, Any]) -> tuple[str, bool, dict[str, Any]]:
        """The step id to use for ``request``, whether it is already stored there, and the request
        as compared. The beam current is asked of the instrument only when there is a stored step
        to compare with; a new acquisition records the current its record reports."""
        for n in range(1, MAX_REVISIONS + 1):
            sid = revision_id(step_id, n)
            if not self.store.has_step(sid):
                return sid, False, request
            if "current_pA" not in request:
                request = {**request, "current_pA": float(self.microscope.beam_current_pA())}
            event = self.store.step_event(sid)
            stored = event.get("request")
            if stored is None:  # a run stored before requests were fingerprinted
                log.info("step %s has no stored request (an older run); reused as it is", sid)
                return sid, True, request
            diff = request_differences(stored, request)
            if not diff:
                return sid, True, request
            if self.on_conflict == "refuse":
                raise StepConflict(
                    diff[0].split(" ", 1)[0],
                    f"step {sid} is already stored with a different request ({'; '.join(diff)}); "
                    "nothing was acquired: use a new run directory, or the stored request",
                )
            log.info("step %s was taken with a different request (%s)", sid, "; ".join(diff))
        raise StepConflict("step_id", f"step {step_id} has {MAX_REVISIONS} revisions; refusing another")

    def _step(
        self,
        step_id: str,
        request: dict[str, Any],
        acquire: Callable[[], Record],
        save: Callable[..., Any],
        extra: dict,
    ) -> Record:
        """The record of ``step_id`` for ``request``: read back when stored with the same request,
        else acquired (retried), checked and stored (under a new revision if the id was taken)."""
        if self._pending_id is not None and self._pending_id.split(".r", 1)[0] == step_id:
            self.flush()  # the same step again: look it up once its write is done
        sid, stored, request = self._stored(step_id, request)
        if stored:
            log.info("step %s already in the store; not re-acquired", sid)
            return self.store.load(sid)  # type: ignore[return-value]
        if sid != step_id:
            self.store.append_event(
                "step_rekeyed", step_id=step_id, new_step_id=sid, request_sha256=request_sha256(request)
            )

        def once() -> Record:
            t0 = time.perf_counter()
            try:
                with beam_on(self.microscope):
                    rec = acquire()
            finally:
                self.instrument_s += time.perf_counter() - t0
            data = rec.data if isinstance(rec, ImageRecord) else rec.counts
            if frame_is_corrupt(data):
                raise CorruptFrame(f"data of step {sid} failed the integrity check")
            return rec

        record = self._retrying(sid)(once)
        request = {**request, "current_pA": float(record.current_pA)}
        if self._writer is None:
            save(sid, record, request=request, request_sha256=request_sha256(request), **extra)
        else:
            self.flush()  # at most one write in flight
            self._pending_id = sid
            self._pending = self._writer.submit(
                save, sid, record, request=request, request_sha256=request_sha256(request), **extra
            )
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
        sx, sy = self.microscope.stage_position_nm()
        request = {
            "kind": "image",
            **req.model_dump(mode="json"),
            "n_rows": req.n_rows,
            "stage_x_nm": float(sx),
            "stage_y_nm": float(sy),
        }
        request.pop("rows")
        return self._step(
            step_id,
            request,
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
        req = SpectrumRequest.checked(
            x_nm=x_nm, y_nm=y_nm, dwell_s=dwell_s, energy_min_eV=energy_min_eV, energy_max_eV=energy_max_eV
        )
        request = {
            "kind": "spectrum",
            **req.model_dump(mode="json"),
        }
        return self._step(
            step_id,
            request,
            lambda: self.microscope.acquire_spectrum(x_nm, y_nm, dwell_s, energy_min_eV, energy_max_eV),
            self.store.save_spectrum,
            extra,
        )
