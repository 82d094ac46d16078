"""The dry run of a plan: dose, time, acquisitions and every limit check, touching nothing.

It walks the plan's steps in order, as the engine will run them, after what the run has
already spent (``Usage``): the survey (free when the run's stored one is reused), the
active scan with its repeated surveys, the audit, the site spectra and the point spectra.
Counts are upper bounds (an audit that decides early, or a class with fewer sites, spends less).

The peak areal dose is the interlocks' own model (``instruments.dose.DoseLedger``): the walk
starts from a copy of the ledger of the run's ``SafeMicroscope`` (every earlier exposure,
earlier rounds and the parked beam included), deposits each image and each spectrum whose
position the plan states exactly as the interlock will, and bounds the spectra whose
positions are chosen at run time (active scan, audit, sites) by the most of them that can
reach one ``dose_cell_nm`` cell: the candidates within one cell plus a probe width, at the
step's spacing (the candidate stride for an active scan, one survey pixel otherwise),
times the repeats. A plan the dry run passes cannot be stopped by the dose-per-area
interlock; a plan of known positions gets the interlock's figure exactly.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, Field

from autoscope.instruments.dose import DoseLedger
from autoscope.instruments.records import NM2_TO_A2, Capabilities, electrons
from autoscope.instruments.safety import SafetyLimits
from autoscope.tools.plan import (
    ActiveScanStep,
    AuditStep,
    Plan,
    SitesStep,
    SpectrumAtStep,
    SurveyStep,
)

#: instrument overhead assumed per acquisition and model time per active step (s)
OVERHEAD_PER_ACQUISITION_S = 0.05
MODEL_STEP_S = 0.1


class Usage(BaseModel):
    """What the run has already spent (from the run store), counted against the limits."""

    dose_e: float = 0.0
    acquisitions: int = 0
    spectra: int = 0
    time_s: float = 0.0
    survey: SurveyStep | None = None  # the run's stored survey, reused when a plan matches it


class LimitCheck(BaseModel):
    limit: str
    requested: float
    maximum: float
    ok: bool
    message: str


class StepCost(BaseModel):
    """One step of the walk: what it may acquire and spend."""

    index: int
    kind: str
    spectra: int
    images: int
    dose_e: float
    time_s: float


class DryRun(BaseModel):
    """What a plan would cost, and whether it stays within the limits; nothing touched the instrument."""

    spectra: int
    images: int
    dose_e: float
    dose_e_per_A2: float = Field(description="this plan's dose averaged over its survey field")
    peak_dose_e_per_A2: float = Field(
        description="upper bound of the cell-averaged dose anywhere after the plan (the interlocks' model)"
    )
    time_s: float
    checks: list[LimitCheck]
    survey_reused: bool
    steps: list[StepCost] = []

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def violations(self) -> list[LimitCheck]:
        return [c for c in self.checks if not c.ok]

    def summary(self) -> str:
        head = (
            f"{self.spectra} spectra, {self.images} image(s), dose {self.dose_e:.3g} e "
            f"({self.dose_e_per_A2:.3g} e/Å² over the field, peak {self.peak_dose_e_per_A2:.3g}), "
            f"~{self.time_s:.0f} s"
        )
        parts = [f"{c.kind} {c.spectra}" for c in self.steps if c.spectra]
        if parts:
            head += f" [{', '.join(parts)}]"
        bad = "; ".join(c.message for c in self.violations)
        return head + (f"; BEYOND LIMITS: {bad}" if bad else "; within limits")


def _check(limit: str, requested: float, maximum: float, what: str) -> LimitCheck:
    ok = requested <= maximum
    verdict = "within" if ok else "exceeds"
    return LimitCheck(
        limit=limit,
        requested=float(requested),
        maximum=float(maximum),
        ok=ok,
        message=f"{what} {requested:.4g} {verdict} {limit} {maximum:.4g}",
    )


def dry_run(
    plan: Plan,
    caps: Capabilities,
    limits: SafetyLimits,
    used: Usage,
    *,
    run_budget_left: int,
    center_nm: tuple[float, float] = (0.0, 0.0),
    ledger: DoseLedger | None = None,
) -> DryRun:
    """Dose, time and limit checks of ``plan`` after what the run has ``used``; touches nothing.

    ``ledger``: the interlocks' dose ledger as it stands (``SafeMicroscope.dose_ledger()``); a
    fresh one (nothing exposed yet) when not given."""
    sv = plan.survey
    reused = used.survey is not None and used.survey == sv
    frame_e = electrons(sv.current_pA, sv.dwell_s * sv.pixels**2)
    frame_s = sv.dwell_s * sv.pixels**2 + OVERHEAD_PER_ACQUISITION_S
    drift_every = min(
        (r.check_every for r in plan.interventions if r.check_every and r.monitor in ("drift", "ood")),
        default=None,
    )
    costs: list[StepCost] = []
    peaks = _PeakWalk(plan, caps, limits, ledger, center_nm)
    if reused and ledger is None:
        peaks.frames(1)  # the run's own survey, which a live ledger already holds
    for i, (step, n) in enumerate(zip(plan.steps, plan.step_spectra(), strict=True)):
        images, dose, time_s = 0, 0.0, 0.0
        if isinstance(step, SurveyStep):
            images = 0 if reused else 1
            dose, time_s = images * frame_e, images * frame_s
            peaks.frames(images)
        elif isinstance(step, ActiveScanStep):
            checks = n // drift_every if drift_every else 0
            images = checks
            dose = electrons(sv.current_pA, step.spectrum_dwell_s) * n + checks * frame_e
            time_s = n * (step.spectrum_dwell_s + MODEL_STEP_S) + checks * frame_s
            peaks.frames(checks)
            peaks.spots_chosen_at_run_time(n, step.spectrum_dwell_s, step.stride_px)
        elif isinstance(step, AuditStep):
            dose = electrons(sv.current_pA, step.spectrum_dwell_s) * n
            time_s = n * step.spectrum_dwell_s
            peaks.spots_chosen_at_run_time(n, step.spectrum_dwell_s)
        elif isinstance(step, SitesStep):
            dose = electrons(sv.current_pA, step.dwell_s) * n
            time_s = n * step.dwell_s
            peaks.spots_chosen_at_run_time(n, step.dwell_s, repeats=step.repeats)
        elif isinstance(step, SpectrumAtStep):
            dose = electrons(sv.current_pA, step.dwell_s) * n
            time_s = n * step.dwell_s
            peaks.spot_at(step.x_nm, step.y_nm, step.dwell_s)
        time_s += n * OVERHEAD_PER_ACQUISITION_S
        costs.append(StepCost(index=i, kind=step.kind, spectra=n, images=images, dose_e=dose, time_s=time_s))
    spectra = sum(c.spectra for c in costs)
    images = sum(c.images for c in costs)
    dose_e = sum(c.dose_e for c in costs)
    time_s = sum(c.time_s for c in costs)
    field_A2 = sv.fov_nm**2 * NM2_TO_A2
    peak = peaks.peak()
    x, y = center_nm
    h = sv.fov_nm / 2
    checks = [
        _check(
            "max_current_pA",
            sv.current_pA,
            min(limits.max_current_pA, caps.current_max_pA),
            "beam current (pA)",
        ),
        _check("max_total_dose_e", used.dose_e + dose_e, limits.max_total_dose_e, "run dose (e)"),
        _check("max_dose_e_per_A2", peak, limits.max_dose_e_per_A2, "peak dose (e/Å²)"),
        _check(
            "max_acquisitions", used.acquisitions + images + spectra, limits.max_acquisitions, "acquisitions"
        ),
        _check("max_wall_time_s", used.time_s + time_s, limits.max_wall_time_s, "instrument time (s)"),
        _check("run_budget", spectra, max(run_budget_left, 0), "spectra"),
        _check("max_fov_nm", sv.fov_nm, caps.max_fov_nm, "field of view (nm)"),
    ]
    inside = (
        limits.stage_x_min_nm <= x - h
        and x + h <= limits.stage_x_max_nm
        and limits.stage_y_min_nm <= y - h
        and y + h <= limits.stage_y_max_nm
    )
    checks.append(
        LimitCheck(
            limit="stage_box",
            requested=float(sv.fov_nm),
            maximum=float(
                min(
                    limits.stage_x_max_nm - limits.stage_x_min_nm,
                    limits.stage_y_max_nm - limits.stage_y_min_nm,
                )
            ),
            ok=inside,
            message=f"survey field around ({x:g}, {y:g}) nm {'inside' if inside else 'outside'} the stage box",
        )
    )
    for s in plan.spectra_at:
        ok = limits.stage_x_min_nm <= s.x_nm <= limits.stage_x_max_nm and (
            limits.stage_y_min_nm <= s.y_nm <= limits.stage_y_max_nm
        )
        if not ok:
            checks.append(
                LimitCheck(
                    limit="stage_box",
                    requested=s.x_nm,
                    maximum=limits.stage_x_max_nm,
                    ok=False,
                    message=f"spectrum at ({s.x_nm:g}, {s.y_nm:g}) nm is outside the stage box",
                )
            )
    return DryRun(
        spectra=spectra,
        images=images,
        dose_e=dose_e,
        dose_e_per_A2=dose_e / field_A2,
        peak_dose_e_per_A2=peak,
        time_s=time_s,
        checks=checks,
        survey_reused=reused,
        steps=costs,
    )


class _PeakWalk:
    """The peak areal dose of a plan, walked through a copy of the interlocks' dose ledger."""

    def __init__(
        self,
        plan: Plan,
        caps: Capabilities,
        limits: SafetyLimits,
        ledger: DoseLedger | None,
        center_nm: tuple[float, float],
    ) -> None:
        sv = plan.survey
        self.sv, self.d = sv, float(caps.probe_fwhm_nm)
        self.led = (
            ledger.copy()
            if ledger is not None
            else DoseLedger(limits.stage_x_min_nm, limits.stage_y_min_nm, limits.dose_cell_nm)
        )
        h = sv.fov_nm / 2
        self.box = (center_nm[0] - h, center_nm[0] + h, center_nm[1] - h, center_nm[1] + h)
        self.frame_A2 = electrons(sv.current_pA, sv.dwell_s * sv.pixels**2) / (sv.fov_nm**2 * NM2_TO_A2)
        self.chosen = 0.0  # the most the run-time-chosen spots so far can add to one cell
        self.best = self.led.peak_in(*self.box)

    def frames(self, n: int) -> None:
        for _ in range(n):
            self.best = max(self.best, self.led.predict_image(*self.box, self.frame_A2) + self.chosen)
            self.led.add_rect(*self.box, self.frame_A2)

    def spot_at(self, x_nm: float, y_nm: float, dwell_s: float) -> None:
        n_e = electrons(self.sv.current_pA, dwell_s)
        self.best = max(self.best, self.led.predict_spot(x_nm, y_nm, n_e, self.d) + self.chosen)
        self.led.add_spot(x_nm, y_nm, n_e, self.d)

    def spots_chosen_at_run_time(self, n: int, dwell_s: float, stride_px: int = 1, repeats: int = 1) -> None:
        spacing = stride_px * self.sv.fov_nm / self.sv.pixels
        reach = min(n, self.led.spots_per_cell(spacing, self.d) * repeats)
        self.chosen += reach * self.led.spot_cell_peak(electrons(self.sv.current_pA, dwell_s), self.d)

    def peak(self) -> float:
        return max(self.best, self.led.peak_in(*self.box) + self.chosen)


def longest_stay_s(
    limits: SafetyLimits,
    caps: Capabilities,
    survey: SurveyStep,
    frames: int = 1,
    ledger: DoseLedger | None = None,
    center_nm: tuple[float, float] = (0.0, 0.0),
) -> float:
    """The longest the probe may stay on one spot (s) before the dry run's peak dose — what the
    ledger holds over the field, ``frames`` more survey frames, and that stay averaged over one
    cell as the interlock averages it — reaches ``max_dose_e_per_A2``."""
    field_A2 = survey.fov_nm**2 * NM2_TO_A2
    led = ledger or DoseLedger(limits.stage_x_min_nm, limits.stage_y_min_nm, limits.dose_cell_nm)
    h = survey.fov_nm / 2
    held = led.peak_in(center_nm[0] - h, center_nm[0] + h, center_nm[1] - h, center_nm[1] + h)
    room = (
        limits.max_dose_e_per_A2
        - held
        - frames * electrons(survey.current_pA, survey.dwell_s * survey.pixels**2) / field_A2
    )
    per_s = led.spot_cell_peak(electrons(survey.current_pA, 1.0), caps.probe_fwhm_nm)
    return max(room, 0.0) / per_s


def dose_targets(plan: Plan, dry: DryRun, smap, grid_nm: np.ndarray, max_points: int = 600) -> list[dict]:
    """Where each step of ``plan`` may put its dose, for a picture over the survey: per step its
    kind, spectra, dose (e) and time (s) from the dry run, and the positions (nm) it may measure
    at — exact for ``spectrum_at``, the candidates the run will choose from otherwise (the active
    scan's grid at its stride, an audit's classes, a sites step's sites); a survey is its field.
    At most ``max_points`` positions a step (an even sample of the rest)."""
    grid = np.atleast_2d(np.asarray(grid_nm, dtype=float))
    sv = plan.survey
    out = []

    def thin(pts: np.ndarray) -> list[list[float]]:
        pts = np.asarray(pts, dtype=float).reshape(-1, 2)
        if len(pts) > max_points:
            pts = pts[np.linspace(0, len(pts) - 1, max_points).astype(int)]
        return [[round(float(x), 3), round(float(y), 3)] for x, y in pts]

    for step, cost in zip(plan.steps, dry.steps, strict=True):
        item = {
            "index": cost.index,
            "kind": step.kind,
            "spectra": cost.spectra,
            "images": cost.images,
            "dose_e": cost.dose_e,
            "time_s": cost.time_s,
            "exact": False,
            "points": [],
        }
        if isinstance(step, SurveyStep):
            item["field_nm"] = sv.fov_nm
        elif isinstance(step, ActiveScanStep):
            step_nm = step.stride_px * sv.fov_nm / sv.pixels
            x0, y0 = grid.min(axis=0)
            x1, y1 = grid.max(axis=0)
            xs, ys = np.arange(x0, x1 + 1e-9, step_nm), np.arange(y0, y1 + 1e-9, step_nm)
            item["points"] = thin(np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2))
        elif isinstance(step, AuditStep):
            named = [c for c in step.classes if c != "elsewhere"]
            pops = [smap.population(c, grid) for c in named]
            if "elsewhere" in step.classes:
                cls = smap.area_class(grid)
                pops.append(grid[~np.isin(cls, named)])
            item["points"] = thin(np.concatenate(pops) if pops else np.zeros((0, 2)))
            item["classes"] = list(step.classes)
        elif isinstance(step, SitesStep):
            item["points"] = thin(smap.population(step.at, grid))
            item["classes"] = [step.at]
        elif isinstance(step, SpectrumAtStep):
            item["points"], item["exact"] = [[step.x_nm, step.y_nm]], True
        out.append(item)
    return out


__all__ = ["DryRun", "LimitCheck", "StepCost", "Usage", "dose_targets", "dry_run", "longest_stay_s"]
