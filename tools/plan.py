"""The plan language: hypotheses and plans as typed data, and their dry run.

A ``Hypothesis`` says what to measure (a scalarizer), with which structural descriptor
(a patch), what the outcome should be and what would refute it, in a form the
analysis can check (``Prediction``). A ``Plan`` is a list of typed, instrument-agnostic
steps; ``autoscope plan-schema`` publishes its JSON schema. ``dry_run`` returns the
dose, time and limit checks of a plan without touching the instrument; the engine
that carries a plan out is ``tools/plan_engine.py``.

Nothing here runs text: a plan is data, validated field by field, and the safety
limits below it hold whatever a plan says.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from autoscope.instruments.records import NM2_TO_A2, Capabilities, electrons
from autoscope.instruments.safety import SafetyLimits
from autoscope.tools.ml.acquisition import AcquisitionSpec
from autoscope.tools.ml.base import MonitorKind
from autoscope.tools.ml.descriptors import PatchSpec
from autoscope.tools.ml.scalarizers import Scalarizer, require_kind

#: instrument overhead assumed per acquisition and model time per active step (s), for the dry run
OVERHEAD_PER_ACQUISITION_S = 0.05
MODEL_STEP_S = 0.1


class PlanValidationError(ValueError):
    """A hypothesis or plan that is well-formed but cannot be carried out here; the message says why."""


class Prediction(BaseModel):
    """What the analysis checks: is the signal concentrated at a few places, or uniform?

    For an intensity-like signal (band intensity, peak ratio) the test is the ratio of the
    90th percentile of the measured values to their median against ``contrast``; for an
    energy-like signal (peak position, edge onset) it is the spread p90 − p10 against
    ``shift_eV``. A background-subtracted intensity whose median is not positive is judged
    by how far its 95th percentile lies above the median in robust standard deviations
    (1.4826 · MAD), against the same ``contrast``. ``localized`` is supported at or above the threshold, ``uniform`` below.
    """

    model_config = ConfigDict(extra="forbid")

    pattern: Literal["localized", "uniform"]
    contrast: float = Field(3.0, gt=1.0, le=1000.0, description="p90/median ratio that decides")
    shift_eV: float = Field(0.5, gt=0.0, le=100.0, description="p90 − p10 (eV) that decides")


class Hypothesis(BaseModel):
    """A testable idea: the signal, the descriptor, the expected outcome and its refutation.

    Text fields have no maximum length on purpose: a JSON-schema ``maxLength`` becomes a
    deeply nested grammar rule in llama.cpp that slows constrained decoding to seconds a token.
    """

    model_config = ConfigDict(extra="forbid")

    id: str = Field("H1", pattern=r"^H[0-9]{1,3}$")
    statement: str = Field(min_length=10)
    signal: Scalarizer = Field(description="the scalar measured from each spectrum")
    patch: PatchSpec = Field(description="the structural descriptor the model learns from")
    expected: str = Field(min_length=3, description="the outcome if it holds")
    refuted_if: str = Field(min_length=3, description="the outcome that refutes it")
    prediction: Prediction
    author: str = Field("", description="who proposed it: an LLM model name or the deterministic planner")


# ------------------------------------------------------------------- plan steps
class SurveyStep(BaseModel):
    """An overview image (reused from the store when the run's survey has the same settings)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=require_kind)
    kind: Literal["survey"] = "survey"
    fov_nm: float = Field(gt=0)
    pixels: int = Field(ge=8, le=4096)
    dwell_s: float = Field(gt=0, le=1.0)
    current_pA: float = Field(gt=0)


class SeedStep(BaseModel):
    """Random spectra before the model takes over."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=require_kind)
    kind: Literal["seed"] = "seed"
    points: int = Field(8, ge=1, le=256)


class ActiveScanStep(BaseModel):
    """The active-learning loop: spectra chosen by a model and an acquisition function."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=require_kind)
    kind: Literal["active_scan"] = "active_scan"
    model: Literal["dkl", "gp", "random", "raster"] = "dkl"
    acquisition: AcquisitionSpec = AcquisitionSpec(kind="ei")
    budget: int = Field(ge=1, le=100_000, description="spectra of this scan, seeds included")
    stride_px: int = Field(4, ge=1, le=64, description="candidate spacing on the survey (pixels)")
    spectrum_dwell_s: float = Field(gt=0, le=60.0)
    energy_min_eV: float
    energy_max_eV: float
    y_transform: Literal["none", "log"] = "none"

    @model_validator(mode="after")
    def _window(self) -> ActiveScanStep:
        if self.energy_max_eV <= self.energy_min_eV:
            raise ValueError("energy_max_eV must be greater than energy_min_eV")
        return self


class SpectrumAtStep(BaseModel):
    """One spectrum at a named position (sample frame)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=require_kind)
    kind: Literal["spectrum_at"] = "spectrum_at"
    x_nm: float
    y_nm: float
    dwell_s: float = Field(gt=0, le=60.0)
    energy_min_eV: float
    energy_max_eV: float
    reason: str = ""


class InterventionRule(BaseModel):
    """What a monitor event does: stop the scan, ask a person (the intervention gate), or log only."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=require_kind)
    kind: Literal["intervention"] = "intervention"
    monitor: MonitorKind
    action: Literal["stop", "ask", "ignore"] = "ask"
    check_every: int | None = Field(
        None, ge=1, description="drift/ood: spectra between repeated surveys (none: never repeat)"
    )


class StopCondition(BaseModel):
    """Stop the scan early when any bound is reached."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=require_kind)
    kind: Literal["stop_when"] = "stop_when"
    max_measurements: int | None = Field(None, ge=1)
    max_dose_e_per_A2: float | None = Field(None, gt=0, description="field-averaged dose of this plan")
    max_time_s: float | None = Field(None, gt=0, description="instrument-clock seconds of this plan")


Step = Annotated[
    SurveyStep | SeedStep | ActiveScanStep | SpectrumAtStep | InterventionRule | StopCondition,
    Field(discriminator="kind"),
]


class Plan(BaseModel):
    """A typed, instrument-agnostic experiment plan for one hypothesis."""

    model_config = ConfigDict(extra="forbid")

    hypothesis_id: str = Field(pattern=r"^H[0-9]{1,3}$")
    rationale: str = Field(min_length=10, description="why this plan tests the hypothesis")
    steps: list[Step] = Field(min_length=1, max_length=32)
    author: str = ""

    @model_validator(mode="after")
    def _shape(self) -> Plan:
        kinds = [s.kind for s in self.steps]
        if kinds[0] != "survey" or kinds.count("survey") != 1:
            raise ValueError("a plan starts with exactly one survey step (and has no other)")
        if kinds.count("active_scan") > 1:
            raise ValueError("a plan has at most one active_scan step")
        if kinds.count("seed") > 1 or kinds.count("stop_when") > 1:
            raise ValueError("a plan has at most one seed step and one stop_when step")
        if "seed" in kinds and (
            "active_scan" not in kinds or kinds.index("seed") > kinds.index("active_scan")
        ):
            raise ValueError("a seed step comes before the active_scan it seeds")
        if "active_scan" not in kinds and "spectrum_at" not in kinds:
            raise ValueError("a plan measures something: add an active_scan or a spectrum_at step")
        monitors = [s.monitor for s in self.steps if isinstance(s, InterventionRule)]
        if len(monitors) != len(set(monitors)):
            raise ValueError("one intervention rule per monitor")
        return self

    def _one(self, cls):
        return next((s for s in self.steps if isinstance(s, cls)), None)

    @property
    def survey(self) -> SurveyStep:
        return self._one(SurveyStep)

    @property
    def active(self) -> ActiveScanStep | None:
        return self._one(ActiveScanStep)

    @property
    def seed(self) -> SeedStep | None:
        return self._one(SeedStep)

    @property
    def stop(self) -> StopCondition | None:
        return self._one(StopCondition)

    @property
    def spectra_at(self) -> list[SpectrumAtStep]:
        return [s for s in self.steps if isinstance(s, SpectrumAtStep)]

    @property
    def interventions(self) -> list[InterventionRule]:
        return [s for s in self.steps if isinstance(s, InterventionRule)]

    def spectra(self) -> int:
        """Spectra this plan may acquire (the active budget, capped by a stop condition, plus point spectra)."""
        n = self.active.budget if self.active else 0
        if self.stop and self.stop.max_measurements:
            n = min(n, self.stop.max_measurements)
        return n + len(self.spectra_at)

    def summary(self) -> str:
        parts = []
        for s in self.steps:
            if isinstance(s, SurveyStep):
                parts.append(f"survey {s.fov_nm:g} nm/{s.pixels} px at {s.current_pA:g} pA")
            elif isinstance(s, SeedStep):
                parts.append(f"{s.points} seeds")
            elif isinstance(s, ActiveScanStep):
                parts.append(f"{s.model}/{s.acquisition.kind} scan of {s.budget} spectra")
            elif isinstance(s, SpectrumAtStep):
                parts.append(f"spectrum at ({s.x_nm:g}, {s.y_nm:g}) nm")
            elif isinstance(s, InterventionRule):
                parts.append(f"{s.monitor}→{s.action}")
            else:
                parts.append("stop when " + ", ".join(f"{k}={v:g}" for k, v in _set_fields(s).items()))
        return "; ".join(parts)


def _set_fields(model: BaseModel) -> dict[str, float]:
    return {k: v for k, v in model.model_dump(exclude={"kind"}).items() if v is not None}


def plan_schema() -> dict:
    """The published JSON schema of a plan (``autoscope plan-schema``)."""
    return Plan.model_json_schema()


# ------------------------------------------------------------------- checks
def check_hypothesis(h: Hypothesis, caps: Capabilities) -> None:
    """Refuse a hypothesis whose signal lies outside what the spectrometer records."""
    lo, hi = _signal_window(h)
    if lo < caps.energy_min_eV or hi > caps.energy_max_eV:
        raise PlanValidationError(
            f"signal: its energies {lo:g}–{hi:g} eV lie outside the spectrometer's "
            f"{caps.energy_min_eV:g}–{caps.energy_max_eV:g} eV"
        )


def _signal_window(h: Hypothesis) -> tuple[float, float]:
    s = h.signal.model_dump()  # the windows it reads (lo/hi, pre-edge, a/b bands), not widths or references
    values = [float(v) for k, v in s.items() if k.endswith(("lo_eV", "hi_eV")) and isinstance(v, int | float)]
    return (min(values), max(values)) if values else (0.0, 0.0)


def check_plan(plan: Plan, h: Hypothesis, caps: Capabilities) -> None:
    """Refuse a plan that the instrument cannot carry out or that does not test ``h``."""
    if plan.hypothesis_id != h.id:
        raise PlanValidationError(f"hypothesis_id: the plan is for {plan.hypothesis_id}, not {h.id}")
    sv = plan.survey
    if sv.fov_nm > caps.max_fov_nm:
        raise PlanValidationError(
            f"steps.0.fov_nm: {sv.fov_nm:g} nm exceeds the instrument's {caps.max_fov_nm:g}"
        )
    lo, hi = _signal_window(h)
    windows = [(s.energy_min_eV, s.energy_max_eV) for s in plan.steps if hasattr(s, "energy_min_eV")]
    for i, (a, b) in enumerate(windows):
        if a < caps.energy_min_eV or b > caps.energy_max_eV:
            raise PlanValidationError(
                f"energy window {a:g}–{b:g} eV (step {i}) lies outside the spectrometer's "
                f"{caps.energy_min_eV:g}–{caps.energy_max_eV:g} eV"
            )
        if lo < a or hi > b:
            raise PlanValidationError(
                f"energy window {a:g}–{b:g} eV does not cover the hypothesis signal ({lo:g}–{hi:g} eV)"
            )
    if plan.active and plan.seed and plan.seed.points >= plan.active.budget:
        raise PlanValidationError("seed.points: the seeds use the whole active_scan budget")


# ------------------------------------------------------------------- dry run
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


class DryRun(BaseModel):
    """What a plan would cost, and whether it stays within the limits; nothing touched the instrument."""

    spectra: int
    images: int
    dose_e: float
    dose_e_per_A2: float = Field(description="this plan's dose averaged over its survey field")
    peak_dose_e_per_A2: float = Field(description="survey dose plus one probe spot, per dose cell")
    time_s: float
    checks: list[LimitCheck]
    survey_reused: bool

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
) -> DryRun:
    """Dose, time and limit checks of ``plan`` after what the run has ``used``; touches nothing."""
    sv = plan.survey
    reused = used.survey is not None and used.survey == sv
    images = 0 if reused else 1
    image_e = 0.0 if reused else electrons(sv.current_pA, sv.dwell_s * sv.pixels**2)
    spectra = plan.spectra()
    scan, at = plan.active, plan.spectra_at
    n_scan = spectra - len(at)
    spectrum_e = (electrons(sv.current_pA, scan.spectrum_dwell_s) * n_scan if scan else 0.0) + sum(
        electrons(sv.current_pA, s.dwell_s) for s in at
    )
    drift_checks = sum(
        n_scan // r.check_every for r in plan.interventions if r.check_every and r.monitor in ("drift", "ood")
    )
    images += drift_checks
    image_e += drift_checks * electrons(sv.current_pA, sv.dwell_s * sv.pixels**2)
    dose_e = image_e + spectrum_e
    field_A2 = sv.fov_nm**2 * NM2_TO_A2
    survey_areal = electrons(sv.current_pA, sv.dwell_s * sv.pixels**2) / field_A2 * (1 + drift_checks)
    dwell_max = max(([scan.spectrum_dwell_s] if scan else []) + [s.dwell_s for s in at], default=0.0)
    spot = electrons(sv.current_pA, dwell_max) / (caps.probe_fwhm_nm**2 * NM2_TO_A2)
    time_s = (
        images * (sv.dwell_s * sv.pixels**2 + OVERHEAD_PER_ACQUISITION_S)
        + (n_scan * (scan.spectrum_dwell_s + MODEL_STEP_S) if scan else 0.0)
        + sum(s.dwell_s for s in at)
        + spectra * OVERHEAD_PER_ACQUISITION_S
    )
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
        _check("max_dose_e_per_A2", survey_areal + spot, limits.max_dose_e_per_A2, "peak dose (e/Å²)"),
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
    for s in at:
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
        peak_dose_e_per_A2=survey_areal + spot,
        time_s=time_s,
        checks=checks,
        survey_reused=reused,
    )


__all__ = [
    "ActiveScanStep",
    "DryRun",
    "Hypothesis",
    "InterventionRule",
    "LimitCheck",
    "Plan",
    "PlanValidationError",
    "Prediction",
    "SeedStep",
    "SpectrumAtStep",
    "Step",
    "StopCondition",
    "SurveyStep",
    "Usage",
    "check_hypothesis",
    "check_plan",
    "dry_run",
    "plan_schema",
]
