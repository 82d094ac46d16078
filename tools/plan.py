"""The plan language: hypotheses and plans as typed data.

A ``Hypothesis`` says what to measure (a scalarizer), with which structural descriptor
(a patch), what the outcome should be and what would refute it, in a form the
analysis can check (a ``Prediction``, ``tools/predictions.py``, naming feature classes of
the survey map). A ``Plan`` is a program of typed, instrument-agnostic steps;
``autoscope plan-schema`` publishes its JSON schema. ``tools/dry_run.py`` walks a plan's
steps for dose, time and limit checks without touching the instrument; the engine that
carries a plan out is ``tools/plan_engine.py``.

Nothing here runs text: a plan is data, validated field by field, and the safety
limits below it hold whatever a plan says.
"""

from __future__ import annotations

import copy
from typing import Annotated, Any, Literal, get_args

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from autoscope.instruments.records import MIN_FOV_NM, Capabilities
from autoscope.tools.grounding.classes import CLASS_GROUPS, ClassName, FeatureClass, members
from autoscope.tools.grounding.model import SurveyMap
from autoscope.tools.ml.acquisition import AcquisitionSpec
from autoscope.tools.ml.base import MonitorKind
from autoscope.tools.ml.descriptors import PatchSpec
from autoscope.tools.ml.scalarizers import Scalarizer, require_kind
from autoscope.tools.predictions import (
    ENERGY_SIGNALS,
    PARTICLE_COVARIATES,
    Covariate,
    Identity,
    LocalizedAt,
    Prediction,
    Trend,
    kinds_for_signal,
)


class PlanValidationError(ValueError):
    """A hypothesis or plan that is well-formed but cannot be carried out here; the message says why."""


def _signal_prediction_pairs(schema: dict[str, Any]) -> None:
    """Write the signal/prediction rule into the JSON schema itself: one object variant per group
    of signal kinds that admit the same predictions (``kinds_for_signal``).

    A back end that compiles the schema into a grammar (llama.cpp) or enforces it server-side
    then cannot emit a pair the validator would refuse, such as an edge onset with a
    ``localized_at`` prediction: once the model has written the signal, only predictions that
    can judge it remain open. Validation is unchanged (``_signal_fits_prediction`` still runs).
    """
    props = schema["properties"]
    sig, pred = props["signal"], props["prediction"]
    smap, pmap = sig["discriminator"]["mapping"], pred["discriminator"]["mapping"]

    def union(field: dict, mapping: dict[str, str], kinds: list[str]) -> dict:
        out = {k: v for k, v in field.items() if k not in ("oneOf", "discriminator")}
        out["oneOf"] = [{"$ref": mapping[k]} for k in kinds]
        out["discriminator"] = {"propertyName": "kind", "mapping": {k: mapping[k] for k in kinds}}
        return out

    groups: dict[tuple[str, ...], list[str]] = {}
    for s in smap:
        groups.setdefault(tuple(k for k in kinds_for_signal(s) if k in pmap), []).append(s)
    body = {k: v for k, v in schema.items() if k not in ("title", "description")}
    variants = []
    for preds, sigs in groups.items():
        v = copy.deepcopy(body)
        v["properties"]["signal"] = union(sig, smap, sigs)
        v["properties"]["prediction"] = union(pred, pmap, list(preds))
        variants.append(v)
    head = {k: schema[k] for k in ("title", "description") if k in schema}
    schema.clear()
    schema.update(head, type="object", anyOf=variants)


class Hypothesis(BaseModel):
    """A testable idea: the signal, the descriptor, the expected outcome and its refutation.

    Text fields have no maximum length on purpose: a JSON-schema ``maxLength`` becomes a
    deeply nested grammar rule in llama.cpp that slows constrained decoding to seconds a token.
    """

    model_config = ConfigDict(extra="forbid", json_schema_extra=_signal_prediction_pairs)

    id: str = Field("H1", pattern=r"^H[0-9]{1,3}$")
    statement: str = Field(min_length=10)
    signal: Scalarizer = Field(description="the scalar measured from each spectrum")
    patch: PatchSpec = Field(description="the structural descriptor the model learns from")
    expected: str = Field(min_length=3, description="the outcome if it holds")
    refuted_if: str = Field(min_length=3, description="the outcome that refutes it")
    prediction: Prediction = Field(
        description="the checkable claim: where or how the signal behaves, and its threshold"
    )
    author: str = Field("", description="who proposed it: an LLM model name or the deterministic planner")

    @model_validator(mode="after")
    def _signal_fits_prediction(self) -> Hypothesis:
        kinds = self.prediction.signal_kinds()
        if kinds is not None and self.signal.kind not in kinds:
            raise ValueError(
                f"prediction: a {self.prediction.kind} prediction needs a signal of kind "
                f"{' or '.join(sorted(kinds))}, not {self.signal.kind}; keep the signal with a "
                f"{' or '.join(kinds_for_signal(self.signal.kind))} prediction, or change the signal"
            )
        return self

    @property
    def energy_signal(self) -> bool:
        """The signal is an energy (eV): a peak position or an edge onset."""
        return self.signal.kind in ENERGY_SIGNALS


# ------------------------------------------------------------------- plan steps
class SurveyStep(BaseModel):
    """An overview image (reused from the store when the run's survey has the same settings)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=require_kind)
    kind: Literal["survey"] = "survey"
    fov_nm: float = Field(ge=MIN_FOV_NM, allow_inf_nan=False)
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


class AuditStep(BaseModel):
    """A stratified random sample: ``per_class`` spectra drawn uniformly within each class.

    What the verdict estimates class means from, free of the active learner's choices:
    the positions are drawn (seeded) from each class's population in the survey map, not
    from where a model expects signal. ``allocation="discriminating"`` measures a few per
    class, then gives each next spectrum to the class that narrows the interval of the
    hypothesis' effect most, and stops as soon as the interval decides (at most the same
    total as ``equal``).

    ``top_up``: when every other step has run and the verdict is still inconclusive, the
    audit goes on with the spectra the plan leaves unspent under ``stop_when.max_measurements``,
    each to the class that narrows the interval most, until the interval decides at the
    stricter sequential level or those spectra are spent (a plan without that bound has
    nothing to top up).
    """

    model_config = ConfigDict(extra="forbid", json_schema_extra=require_kind)
    kind: Literal["audit"] = "audit"
    classes: list[ClassName | Literal["elsewhere"]] = Field(
        min_length=1, max_length=12, description="strata; 'elsewhere' = outside the hypothesis' class"
    )
    per_class: int = Field(10, ge=2, le=500, description="spectra per class (the most, when discriminating)")
    allocation: Literal["equal", "discriminating"] = "equal"
    top_up: bool = Field(
        True,
        description="while the verdict is inconclusive after the plan's other steps, spend the spectra "
        "the plan leaves of stop_when.max_measurements on more of this audit",
    )
    spectrum_dwell_s: float = Field(gt=0, le=60.0)
    energy_min_eV: float
    energy_max_eV: float

    @model_validator(mode="after")
    def _distinct(self) -> AuditStep:
        if len(set(self.classes)) != len(self.classes):
            raise ValueError("classes: each class once")
        return self

    @property
    def spectra(self) -> int:
        return self.per_class * len(self.classes)


class SitesStep(BaseModel):
    """Spectra with the probe on the sites of a class: lattice columns, or particle tips and corners."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=require_kind)
    kind: Literal["sites"] = "sites"
    at: ClassName = Field(description="a site class (lattice columns) or a key class (rod_tip, *_corner)")
    max_sites: int = Field(40, ge=1, le=2000, description="sites measured at most (a seeded sample if more)")
    repeats: int = Field(1, ge=1, le=20)
    dwell_s: float = Field(gt=0, le=60.0)
    energy_min_eV: float
    energy_max_eV: float

    @property
    def spectra(self) -> int:
        return self.max_sites * self.repeats


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
    SurveyStep
    | SeedStep
    | ActiveScanStep
    | AuditStep
    | SitesStep
    | SpectrumAtStep
    | InterventionRule
    | StopCondition,
    Field(discriminator="kind"),
]
#: steps that acquire spectra, in the order the engine runs them
ACQUIRING = ("active_scan", "audit", "sites", "spectrum_at")


class Plan(BaseModel):
    """A typed, instrument-agnostic experiment plan for one hypothesis: a program of steps.

    The engine (``tools/plan_engine.py``) runs the acquiring steps in the order written
    (survey first; a seed step seeds the active scan after it); intervention rules and the
    stop condition are rules that hold for the whole plan wherever they are written. The
    dry run walks the same steps.
    """

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
        if kinds.count("active_scan") > 1 or kinds.count("audit") > 1:
            raise ValueError("a plan has at most one active_scan step and one audit step")
        if kinds.count("seed") > 1 or kinds.count("stop_when") > 1:
            raise ValueError("a plan has at most one seed step and one stop_when step")
        if "seed" in kinds and (
            "active_scan" not in kinds or kinds.index("seed") > kinds.index("active_scan")
        ):
            raise ValueError("a seed step comes before the active_scan it seeds")
        if not any(k in ACQUIRING for k in kinds):
            raise ValueError(
                "a plan measures something: add an active_scan, audit, sites or spectrum_at step"
            )
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
    def audit(self) -> AuditStep | None:
        return self._one(AuditStep)

    @property
    def spectra_at(self) -> list[SpectrumAtStep]:
        return [s for s in self.steps if isinstance(s, SpectrumAtStep)]

    @property
    def sites(self) -> list[SitesStep]:
        return [s for s in self.steps if isinstance(s, SitesStep)]

    @property
    def interventions(self) -> list[InterventionRule]:
        return [s for s in self.steps if isinstance(s, InterventionRule)]

    def step_spectra(self) -> list[int]:
        """Spectra each step may acquire, in order (0 for non-acquiring steps), capped by the stop rule."""
        cap = self.stop.max_measurements if self.stop and self.stop.max_measurements else None
        out, total = [], 0
        for s in self.steps:
            n = {"active_scan": getattr(s, "budget", 0), "spectrum_at": 1}.get(
                s.kind, getattr(s, "spectra", 0)
            )
            if not isinstance(n, int) or s.kind not in ACQUIRING:
                n = 0
            if cap is not None:
                n = max(0, min(n, cap - total))
            out.append(n)
            total += n
        top = self.top_up_step()
        if top is not None and cap is not None:
            out[top] += max(0, cap - total)  # the most the top-up may add, after every step
        return out

    def top_up_step(self) -> int | None:
        """Index of the audit step that tops up the verdict (the first with ``top_up``), or None."""
        return next((i for i, s in enumerate(self.steps) if isinstance(s, AuditStep) and s.top_up), None)

    def spectra(self) -> int:
        """Spectra this plan may acquire at most (every acquiring step, capped by the stop rule)."""
        return sum(self.step_spectra())

    def summary(self) -> str:
        parts = []
        for s in self.steps:
            if isinstance(s, SurveyStep):
                parts.append(f"survey {s.fov_nm:g} nm/{s.pixels} px at {s.current_pA:g} pA")
            elif isinstance(s, SeedStep):
                parts.append(f"{s.points} seeds")
            elif isinstance(s, ActiveScanStep):
                parts.append(f"{s.model}/{s.acquisition.kind} scan of {s.budget} spectra")
            elif isinstance(s, AuditStep):
                top = (
                    ", topped up while inconclusive"
                    if s.top_up and self.stop and self.stop.max_measurements
                    else ""
                )
                parts.append(
                    f"audit of {s.per_class} spectra in each of {', '.join(s.classes)} ({s.allocation}{top})"
                )
            elif isinstance(s, SitesStep):
                parts.append(f"spectra on up to {s.max_sites} {s.at} sites ×{s.repeats}")
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
    lo, hi = signal_window(h)
    if lo < caps.energy_min_eV or hi > caps.energy_max_eV:
        raise PlanValidationError(
            f"signal: its energies {lo:g}–{hi:g} eV lie outside the spectrometer's "
            f"{caps.energy_min_eV:g}–{caps.energy_max_eV:g} eV"
        )


def signal_window(h: Hypothesis) -> tuple[float, float]:
    """The lowest and highest energy (eV) the hypothesis' signal reads."""
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
    lo, hi = signal_window(h)
    for i, step in enumerate(plan.steps):
        if not hasattr(step, "energy_min_eV"):
            continue
        a, b = step.energy_min_eV, step.energy_max_eV
        bad = "energy_min_eV" if a < caps.energy_min_eV else "energy_max_eV"
        if a < caps.energy_min_eV or b > caps.energy_max_eV:
            raise PlanValidationError(
                f"steps.{i}.{bad}: energy window {a:g}–{b:g} eV lies outside the spectrometer's "
                f"{caps.energy_min_eV:g}–{caps.energy_max_eV:g} eV"
            )
        if lo < a or hi > b - caps.dispersion_eV / 2:  # the last channel's centre is one channel below b
            bad = "energy_min_eV" if lo < a else "energy_max_eV"
            raise PlanValidationError(
                f"steps.{i}.{bad}: energy window {a:g}–{b:g} eV does not cover the hypothesis signal "
                f"({lo:g}–{hi:g} eV)"
            )
    if plan.active and plan.seed and plan.seed.points >= plan.active.budget:
        raise PlanValidationError("seed.points: the seeds use the whole active_scan budget")
    missing = [c for c in verdict_strata(h) if c not in measured_strata(plan)]
    if missing:
        raise PlanValidationError(
            f"steps: no audit or sites step measures {', '.join(missing)}; the verdict on {h.id} "
            "needs unbiased spectra there (add an audit step over its classes)"
        )


def verdict_strata(h: Hypothesis) -> list[str]:
    """The classes the verdict on ``h`` needs spectra of ('elsewhere' for a default reference)."""
    p = h.prediction
    if isinstance(p, LocalizedAt):
        return [p.at, p.versus]
    if isinstance(p, Identity):
        return []  # judged on the survey image itself
    return p.classes()


def measured_strata(plan: Plan) -> set[str]:
    """Classes a plan measures without the active learner's bias: audit strata and sites steps."""
    out = set(plan.audit.classes) if plan.audit else set()
    return out | {s.at for s in plan.sites}


def check_grounded(h: Hypothesis, smap: SurveyMap, candidates_nm: np.ndarray) -> None:
    """Refuse a hypothesis that names a class the survey does not show (the message lists those it does)."""
    present = smap.classes_present(candidates_nm)
    named = [c for c in h.prediction.classes() if c != "elsewhere"]
    absent = [c for c in named if not any(m in present for m in members(c))]
    if absent:
        have = ", ".join(f"{k} ({v})" for k, v in present.items()) or "none"
        raise PlanValidationError(
            f"prediction: this survey shows no {', '.join(absent)}; classes present: {have}"
        )
    if isinstance(h.prediction, Trend):
        _check_covariate(h.prediction, smap)


def covariates_with_values(smap: SurveyMap) -> list[str]:
    """The trend covariates this survey gives values for: particle properties where it shows
    particles, the distance to the interface where it shows one."""
    return [
        c for c in get_args(Covariate) if (smap.particles if c in PARTICLE_COVARIATES else smap.interface)
    ]


def grounded_schema(smap: SurveyMap, present: dict[str, int]) -> dict[str, Any]:
    """The hypothesis JSON schema narrowed to this survey: class names to the classes (and
    groups) it shows (``present``: ``SurveyMap.classes_present`` of the candidates, as the
    survey node stores it), trend covariates to those with values, no trend where none has.

    Given to a model instead of the general schema, a grammar (or a server that enforces the
    schema) keeps it from naming what ``check_grounded`` would refuse, so its first answer is its
    own rather than a repair after an example. The checks still run on every answer.
    """
    names = set(get_args(FeatureClass)) | set(CLASS_GROUPS)
    allowed = {c for c in names if any(m in present for m in members(c))}
    if not allowed:
        raise PlanValidationError("survey: it shows no feature class a hypothesis could name")
    covariates = covariates_with_values(smap)
    schema = Hypothesis.model_json_schema()

    def narrow(node: Any) -> None:
        if isinstance(node, list):
            for v in node:
                narrow(v)
            return
        if not isinstance(node, dict):
            return
        enum = node.get("enum")
        if enum and len(enum) > 1 and set(enum) <= names:
            node["enum"] = [e for e in enum if e in allowed]
        elif enum and set(enum) == set(get_args(Covariate)):
            node["enum"] = covariates
        for v in node.values():
            narrow(v)
        if "anyOf" in node:  # a class-name union loses the alternatives left with no name
            node["anyOf"] = [a for a in node["anyOf"] if a.get("enum", True)]

    narrow(schema)
    if not covariates:
        trend = "#/$defs/Trend"
        for v in schema["anyOf"]:
            pred = v["properties"]["prediction"]
            pred["oneOf"] = [r for r in pred["oneOf"] if r["$ref"] != trend]
            pred["discriminator"]["mapping"] = {
                k: r for k, r in pred["discriminator"]["mapping"].items() if r != trend
            }
        schema["$defs"].pop("Trend", None)
    return schema


def _check_covariate(p: Trend, smap: SurveyMap) -> None:
    """Refuse a trend whose covariate has no value over its class here (``evidence.trend_features``
    would find no feature): a particle property needs particle classes and particles, a distance
    to the interface needs an interface. The message names the covariates that do have values."""
    particle_class = set(members(p.over)) <= set(CLASS_GROUPS["particle"])
    fits = [c for c in covariates_with_values(smap) if particle_class or c not in PARTICLE_COVARIATES]
    if p.covariate not in fits:
        why = (
            f"{p.covariate} is a particle property and {p.over} is not a particle class on this survey"
            if p.covariate in PARTICLE_COVARIATES
            else "this survey shows no interface"
        )
        raise PlanValidationError(
            f"prediction: {why}, so a trend over {p.over} with it has no values; covariates with values "
            f"over {p.over} here: {', '.join(fits) or 'none (choose another class or prediction)'}"
        )


__all__ = [
    "ACQUIRING",
    "ActiveScanStep",
    "AuditStep",
    "Hypothesis",
    "InterventionRule",
    "Plan",
    "PlanValidationError",
    "Prediction",
    "SeedStep",
    "SitesStep",
    "SpectrumAtStep",
    "Step",
    "StopCondition",
    "SurveyStep",
    "check_grounded",
    "check_hypothesis",
    "check_plan",
    "covariates_with_values",
    "grounded_schema",
    "measured_strata",
    "plan_schema",
    "signal_window",
    "verdict_strata",
]
