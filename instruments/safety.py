"""Safety interlocks: human-set limits enforced below every agent, prompt and plan.

``SafetyLimits`` come from a file a person writes (YAML, TOML or JSON). ``SafeMicroscope``
wraps any backend, implements every protocol by delegating to it, and checks each
request *before* forwarding it: acquisition count, session time, beam current, stage
travel box, total dose and peak dose per area. A request beyond a limit is not
forwarded; the beam is blanked, a warning is logged, a ``safety_stop`` event is sent to
``on_event`` and ``SafetyLimitExceeded`` is raised. Nothing at run time can change the
limits a wrapper enforces.

The dose-per-area ledger (``dose.DoseLedger``, the same model the dry run walks a plan
through) is the wrapper's own, independent of the backend: images are kept as exact
rectangles of uniform areal dose, probe spots on sparse ``DoseMap`` tiles of
``dose_cell_nm`` cells (so a large travel box does not dilute a small exposed area).
The predicted peak adds the peak of each part over the region a request touches,
which can only over-estimate the cell-averaged peak, never under-estimate it.

Every electron the sample receives is charged, not only those of acquisitions: while the
beam is unblanked between requests the parked probe keeps exposing its spot, and a stage
move with the beam on drags it across the sample. The wrapper keeps the beam state and the
instrument clock of its last request; at the next one it charges ``current × elapsed`` at
the probe (or along the stage path) and reports it as a ``beam_dose`` event, which a
resumed run gives back as ``history`` (``DOSE_EVENTS``).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from autoscope.instruments.config_files import load_model, validated
from autoscope.instruments.dose import DoseLedger
from autoscope.instruments.errors import AcquisitionFailed, InvalidRequest, SafetyLimitExceeded
from autoscope.instruments.protocols import Microscope, close_instrument
from autoscope.instruments.records import (
    NM2_TO_A2,
    Capabilities,
    Detector,
    ImageRecord,
    ImageRequest,
    InstrumentStatus,
    SpectrumRecord,
    SpectrumRequest,
    electrons,
)

log = logging.getLogger(__name__)

_WHERE = "limits are set in the limits file, which only a person may change"
#: the run-store events a resumed wrapper charges again (``history``)
DOSE_EVENTS = ("acquisition", "beam_dose")


class SafetyLimits(BaseModel):
    """Hard limits of one session on the microscope; defaults are those of the shipped limits file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_total_dose_e: float = Field(1.0e13, gt=0, allow_inf_nan=False, description="electrons in total")
    max_dose_e_per_A2: float = Field(
        1.0e8,
        gt=0,
        allow_inf_nan=False,
        description="peak areal dose (e/Å²) averaged over dose_cell_nm cells",
    )
    dose_cell_nm: float = Field(
        1.0, gt=0, allow_inf_nan=False, description="side of a dose-averaging cell (nm)"
    )
    max_current_pA: float = Field(200.0, gt=0, allow_inf_nan=False, description="beam current (pA)")
    stage_x_min_nm: float = Field(-5000.0, allow_inf_nan=False)
    stage_x_max_nm: float = Field(5000.0, allow_inf_nan=False)
    stage_y_min_nm: float = Field(-5000.0, allow_inf_nan=False)
    stage_y_max_nm: float = Field(5000.0, allow_inf_nan=False)
    max_acquisitions: int = Field(5000, gt=0, description="images plus spectra")
    max_wall_time_s: float = Field(
        14400.0,
        gt=0,
        allow_inf_nan=False,
        description="instrument-clock seconds since the wrapper was created",
    )

    @model_validator(mode="after")
    def _boxes(self) -> SafetyLimits:
        for axis in ("x", "y"):
            lo, hi = getattr(self, f"stage_{axis}_min_nm"), getattr(self, f"stage_{axis}_max_nm")
            if lo >= hi:
                raise ValueError(f"stage_{axis}_min_nm ({lo}) must be less than stage_{axis}_max_nm ({hi})")
        return self

    @classmethod
    def checked(cls, values: Any, path: str | None = None) -> SafetyLimits:
        """Validate ``values``; raise ``ConfigError`` naming the first bad field (and the file)."""
        return validated(cls, values, path)

    @classmethod
    def from_file(cls, path: str | Path) -> SafetyLimits:
        """Read human-authored limits from a ``.yaml``/``.yml``, ``.toml`` or ``.json`` file."""
        return load_model(cls, path, "limits")


def _number(field: str, value: Any) -> float:
    """``value`` as a finite float, or ``InvalidRequest`` naming ``field``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequest(field, f"{value!r} is not a number")
    if not math.isfinite(value):
        raise InvalidRequest(field, f"{value} is not a finite number")
    return float(value)


class SafeMicroscope:
    """A ``Microscope`` that enforces ``SafetyLimits`` on every request to ``inner`` (see module doc)."""

    __slots__ = ("_inner", "_limits", "_on_event", "_t0_s", "_ledger", "_probe_fwhm_nm", "_used", "_beam")

    def __init__(
        self,
        inner: Microscope,
        limits: SafetyLimits,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        history: Iterable[dict[str, Any]] = (),
    ) -> None:
        """``history``: acquisition and ``beam_dose`` events (run-store contract) of earlier
        sessions of the same run.

        A resumed run counts them against the dose and acquisition limits, so stopping
        and resuming can never reset what the sample has received.
        """
        own = SafetyLimits.model_validate(limits.model_dump())  # a private, re-validated copy
        put = object.__setattr__
        put(self, "_inner", inner)
        put(self, "_limits", own)
        put(self, "_on_event", on_event)
        put(self, "_t0_s", float(inner.now_s()))
        put(self, "_ledger", DoseLedger(own.stage_x_min_nm, own.stage_y_min_nm, own.dose_cell_nm))
        put(self, "_probe_fwhm_nm", float(inner.capabilities().probe_fwhm_nm))
        put(self, "_used", {"dose_e": 0.0, "acquisitions": 0})
        put(self, "_beam", {"on": not inner.beam_blanked(), "since_s": self._t0_s})
        for event in history:
            self._charge_event(event)

    def _charge_event(self, event: dict[str, Any]) -> None:
        """Count an exposure made before this wrapper existed (from its stored event)."""
        if event.get("kind") == "beam_dose":
            ends = (float(event[k]) for k in ("x_nm", "y_nm", "x1_nm", "y1_nm"))
            self._beam_deposit(*ends, float(event["dose_e"]))
            return
        self._charge(float(event["dose_e"]))
        if event.get("record") == "image":
            cx, cy, w = float(event["center_x_nm"]), float(event["center_y_nm"]), float(event["fov_nm"]) / 2
            h = w * float(event.get("rows") or event["pixels"]) / float(event["pixels"])
            self._ledger.add_rect(cx - w, cx + w, cy - h, cy + h, float(event["dose_e_per_A2"]))
        else:
            self._ledger.add_spot(
                float(event["x_nm"]), float(event["y_nm"]), float(event["dose_e"]), self._probe_fwhm_nm
            )

    @contextlib.contextmanager
    def _downstream(self, request: dict[str, Any]) -> Iterator[None]:
        """Record a limit enforced further down (e.g. by a remote instrument's own wrapper)."""
        try:
            yield
        except SafetyLimitExceeded as exc:
            with contextlib.suppress(Exception):
                self.blank_beam()
            log.warning("safety stop by the instrument (%s): %s", exc.limit, exc)
            if self._on_event is not None:
                with contextlib.suppress(Exception):
                    self._on_event(
                        {
                            "kind": "safety_stop",
                            "limit": exc.limit,
                            "value": exc.value,
                            "maximum": exc.maximum,
                            "message": str(exc),
                            "request": request,
                            "enforced_by": "instrument",
                        }
                    )
            raise

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"SafeMicroscope is immutable ({name!r}); {_WHERE}")

    @property
    def limits(self) -> SafetyLimits:
        """The enforced limits (a frozen copy: changing it changes nothing here)."""
        return self._limits.model_copy()

    @property
    def total_dose_e(self) -> float:
        """Electrons delivered through this wrapper so far (by its own ledger)."""
        return self._used["dose_e"]

    @property
    def acquisitions(self) -> int:
        """Acquisitions forwarded through this wrapper so far (failed ones included)."""
        return self._used["acquisitions"]

    def peak_dose_e_per_A2(self, x0_nm: float, x1_nm: float, y0_nm: float, y1_nm: float) -> float:
        """Upper bound of the cell-averaged areal dose in a region, by this wrapper's ledger."""
        return self._ledger.peak_in(x0_nm, x1_nm, y0_nm, y1_nm)

    def dose_ledger(self) -> DoseLedger:
        """A copy of this wrapper's dose ledger as it stands (what a dry run starts from)."""
        self._beam_dose()
        return self._ledger.copy()

    # ---------------------------------------------------------------- the beam between requests
    def _beam_deposit(self, x0: float, y0: float, x1: float, y1: float, n_e: float) -> None:
        """Charge electrons of the beam outside an acquisition (parked, or along a stage path)."""
        self._used["dose_e"] += n_e
        self._ledger.add_path(x0, y0, x1, y1, n_e, self._probe_fwhm_nm)

    def _beam_dose(self, path_to: tuple[float, float] | None = None, now_s: float | None = None) -> float:
        """Charge what the unblanked beam delivered since the last request (parked at the probe,
        or dragged to ``path_to`` by a stage move); returns the instrument clock now."""
        beam = self._beam
        now = float(self._inner.now_s()) if now_s is None else now_s
        elapsed = now - beam["since_s"]
        beam["since_s"] = now
        if not beam["on"] or elapsed <= 0:
            return now
        current = float(self._inner.beam_current_pA())
        n_e = electrons(current, elapsed)
        x0, y0 = self._inner.probe_position_nm() if path_to is None else path_to[:2]
        x1, y1 = (x0, y0) if path_to is None else path_to[2:]  # type: ignore[misc]
        self._beam_deposit(x0, y0, x1, y1, n_e)
        event = {
            "kind": "beam_dose",
            "reason": "parked" if path_to is None else "stage_move",
            "x_nm": x0,
            "y_nm": y0,
            "x1_nm": x1,
            "y1_nm": y1,
            "duration_s": elapsed,
            "current_pA": current,
            "dose_e": n_e,
        }
        log.info(
            "beam on between requests for %.3g s: %.3g e charged at (%.1f, %.1f) nm", elapsed, n_e, x0, y0
        )
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:
                log.exception("on_event failed while reporting a beam dose")
        return now

    # ---------------------------------------------------------------- checks
    def _stop(self, limit: str, value: float, maximum: float, message: str, request: dict[str, Any]) -> None:
        message = f"{message}; {_WHERE}"
        try:
            self.blank_beam()
        except Exception:  # the stop must still be reported and raised
            log.exception("could not blank the beam after a safety stop")
        log.warning("safety stop (%s): %s", limit, message)
        event = {
            "kind": "safety_stop",
            "limit": limit,
            "value": float(value),
            "maximum": float(maximum),
            "message": message,
            "request": request,
        }
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:
                log.exception("on_event failed while reporting a safety stop")
        raise SafetyLimitExceeded(limit, value, maximum, message)

    def _check_time(self, request: dict[str, Any], duration_s: float = 0.0) -> None:
        """The session-time limit, after charging the beam's dose since the last request."""
        lim = self._limits
        t = self._beam_dose() - self._t0_s + duration_s
        if t > lim.max_wall_time_s:
            self._stop(
                "max_wall_time_s",
                t,
                lim.max_wall_time_s,
                f"session time would reach {t:.4g} s > limit {lim.max_wall_time_s:.4g} s; "
                "end this session and start a new one after review",
                request,
            )

    def _check_position(
        self, request: dict[str, Any], x0: float, x1: float, y0: float, y1: float, what: str
    ) -> None:
        lim = self._limits
        for field, value in (("x_nm", x0), ("x_nm", x1), ("y_nm", y0), ("y_nm", y1)):
            _number(field, value)
        for name, value, bad in (
            ("stage_x_min_nm", x0, x0 < lim.stage_x_min_nm),
            ("stage_x_max_nm", x1, x1 > lim.stage_x_max_nm),
            ("stage_y_min_nm", y0, y0 < lim.stage_y_min_nm),
            ("stage_y_max_nm", y1, y1 > lim.stage_y_max_nm),
        ):
            if bad:
                self._stop(
                    name,
                    value,
                    getattr(lim, name),
                    f"{what} would reach {name[6]} = {value:.6g} nm, outside the travel box "
                    f"x [{lim.stage_x_min_nm:g}, {lim.stage_x_max_nm:g}] nm, "
                    f"y [{lim.stage_y_min_nm:g}, {lim.stage_y_max_nm:g}] nm; choose a position inside it",
                    request,
                )

    def _check_exposure(
        self, request: dict[str, Any], n_e: float, peak: float, at: tuple[float, float], duration_s: float
    ) -> None:
        lim, used = self._limits, self._used
        if used["acquisitions"] + 1 > lim.max_acquisitions:
            self._stop(
                "max_acquisitions",
                used["acquisitions"] + 1,
                lim.max_acquisitions,
                f"acquisition {used['acquisitions'] + 1} would exceed the limit of {lim.max_acquisitions}; "
                "review the campaign before acquiring more",
                request,
            )
        self._check_time(request, duration_s)
        current = float(request["current_pA"])  # read once by the caller, who built the request
        if current > lim.max_current_pA:
            self._stop(
                "max_current_pA",
                current,
                lim.max_current_pA,
                f"beam current {current:.4g} pA > limit {lim.max_current_pA:.4g} pA; lower the current first",
                request,
            )
        total = used["dose_e"] + n_e
        if total > lim.max_total_dose_e:
            self._stop(
                "max_total_dose_e",
                total,
                lim.max_total_dose_e,
                f"total dose would reach {total:.3g} e > limit {lim.max_total_dose_e:.3g} e "
                f"({used['dose_e']:.3g} e used); lower dwell, pixels or current",
                request,
            )
        if peak > lim.max_dose_e_per_A2:
            self._stop(
                "max_dose_e_per_A2",
                peak,
                lim.max_dose_e_per_A2,
                f"dose per area would reach {peak:.3g} e/Å² > limit {lim.max_dose_e_per_A2:.3g} e/Å² "
                f"at ({at[0]:.1f}, {at[1]:.1f}) nm; lower dwell or current, or move to fresh area",
                request,
            )

    # ---------------------------------------------------------------- Imaging
    def acquire_image(
        self,
        fov_nm: float,
        pixels: int,
        dwell_s: float,
        detector: Detector = Detector.HAADF,
        rows: int | None = None,
    ) -> ImageRecord:
        req = ImageRequest.checked(
            fov_nm=fov_nm, pixels=pixels, dwell_s=dwell_s, detector=detector, rows=rows
        )
        sx, sy = self._inner.stage_position_nm()
        current = float(self._inner.beam_current_pA())
        request = {
            "op": "acquire_image",
            **req.model_dump(mode="json"),
            "stage_x_nm": sx,
            "stage_y_nm": sy,
            "current_pA": current,
        }
        w, h = req.fov_nm / 2, req.fov_y_nm / 2
        box = (sx - w, sx + w, sy - h, sy + h)
        self._check_position(request, *box, what="the image field")
        duration_s = req.dwell_s * req.pixels * req.n_rows
        n_e = electrons(current, duration_s)
        e_per_A2 = n_e / (req.fov_nm * req.fov_y_nm * NM2_TO_A2)
        self._check_exposure(request, n_e, self._ledger.predict_image(*box, e_per_A2), (sx, sy), duration_s)
        try:
            with self._downstream(request):
                rec = self._inner.acquire_image(
                    req.fov_nm, req.pixels, req.dwell_s, req.detector, **req.rows_kwargs()
                )
        except AcquisitionFailed:
            self._charge(n_e)
            self._ledger.add_rect(*box, e_per_A2)
            raise
        self._charge(rec.dose_e)
        self._beam["since_s"] = float(rec.t_end_s)
        rw, rh = rec.fov_nm / 2, rec.fov_y_nm / 2
        self._ledger.add_rect(
            rec.center_x_nm - rw,
            rec.center_x_nm + rw,
            rec.center_y_nm - rh,
            rec.center_y_nm + rh,
            rec.dose_e_per_A2,
        )
        return rec

    # ---------------------------------------------------------------- Spectroscopy
    def acquire_spectrum(
        self, x_nm: float, y_nm: float, dwell_s: float, energy_min_eV: float, energy_max_eV: float
    ) -> SpectrumRecord:
        req = SpectrumRequest.checked(
            x_nm=x_nm, y_nm=y_nm, dwell_s=dwell_s, energy_min_eV=energy_min_eV, energy_max_eV=energy_max_eV
        )
        current = float(self._inner.beam_current_pA())
        request = {"op": "acquire_spectrum", **req.model_dump(mode="json"), "current_pA": current}
        self._check_position(request, req.x_nm, req.x_nm, req.y_nm, req.y_nm, what="the probe position")
        n_e = electrons(current, req.dwell_s)
        peak = self._ledger.predict_spot(req.x_nm, req.y_nm, n_e, self._probe_fwhm_nm)
        self._check_exposure(request, n_e, peak, (req.x_nm, req.y_nm), req.dwell_s)
        try:
            with self._downstream(request):
                rec = self._inner.acquire_spectrum(
                    req.x_nm, req.y_nm, req.dwell_s, req.energy_min_eV, req.energy_max_eV
                )
        except AcquisitionFailed:
            self._charge(n_e)
            self._ledger.add_spot(req.x_nm, req.y_nm, n_e, self._probe_fwhm_nm)
            raise
        self._charge(rec.dose_e)
        self._beam["since_s"] = float(rec.t_end_s)
        self._ledger.add_spot(rec.x_nm, rec.y_nm, rec.dose_e, self._probe_fwhm_nm)
        return rec

    def _charge(self, n_e: float) -> None:
        self._used["dose_e"] += float(n_e)
        self._used["acquisitions"] += 1

    # ---------------------------------------------------------------- Beam
    def probe_position_nm(self) -> tuple[float, float]:
        return self._inner.probe_position_nm()

    def move_probe(self, x_nm: float, y_nm: float) -> None:
        request = {"op": "move_probe", "x_nm": x_nm, "y_nm": y_nm}
        self._check_position(request, x_nm, x_nm, y_nm, y_nm, what="the probe position")
        self._check_time(request)
        with self._downstream(request):
            self._inner.move_probe(x_nm, y_nm)

    def blank_beam(self) -> None:
        try:
            self._beam_dose()
        except Exception:  # blanking is the safe direction: it is never kept from happening
            log.exception("could not charge the beam's dose before blanking")
        self._inner.blank_beam()
        self._beam["on"] = False

    def unblank_beam(self) -> None:
        request = {"op": "unblank_beam"}
        self._check_time(request)
        with self._downstream(request):
            self._inner.unblank_beam()
        self._beam["on"] = True

    def beam_blanked(self) -> bool:
        return self._inner.beam_blanked()

    def beam_current_pA(self) -> float:
        return self._inner.beam_current_pA()

    def set_beam_current(self, current_pA: float) -> None:
        lim = self._limits
        request = {"op": "set_beam_current", "current_pA": current_pA}
        current_pA = _number("current_pA", current_pA)
        if current_pA > lim.max_current_pA:
            self._stop(
                "max_current_pA",
                current_pA,
                lim.max_current_pA,
                f"beam current {current_pA:.4g} pA > limit {lim.max_current_pA:.4g} pA; "
                "request a lower current",
                request,
            )
        self._check_time(request)
        with self._downstream(request):
            self._inner.set_beam_current(current_pA)

    # ---------------------------------------------------------------- Stage
    def stage_position_nm(self) -> tuple[float, float]:
        return self._inner.stage_position_nm()

    def move_stage(self, x_nm: float, y_nm: float) -> None:
        request = {"op": "move_stage", "x_nm": x_nm, "y_nm": y_nm}
        self._check_position(request, x_nm, x_nm, y_nm, y_nm, what="the stage")
        self._check_time(request)
        start = self._inner.probe_position_nm() if self._beam["on"] else None
        with self._downstream(request):
            self._inner.move_stage(x_nm, y_nm)
        if start is not None:  # the sample slid under the beam: dose along the path
            end = self._inner.probe_position_nm()
            self._beam_dose(path_to=(*start, *end))

    # ---------------------------------------------------------------- Status, Clock
    def close(self) -> None:
        """Close the instrument behind the interlocks, where it has something to close (the Nion
        simulator's threads, a remote client's connection)."""
        close_instrument(self._inner)

    def status(self) -> InstrumentStatus:
        return self._inner.status()

    def capabilities(self) -> Capabilities:
        return self._inner.capabilities()

    def now_s(self) -> float:
        return self._inner.now_s()

    def __repr__(self) -> str:
        return f"SafeMicroscope({self._inner!r})"
