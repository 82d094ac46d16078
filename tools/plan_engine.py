"""The one engine that carries out a plan on a microscope, into the run store.

It runs the plan's acquiring steps in the order written, each by its kind:

- ``survey``: the run's stored survey is reused when the plan repeats it, else ``H2-survey-image``;
- ``seed`` + ``active_scan``: the active-learning campaign (``H2-al-0000``…, repeated surveys
  ``H2-drift-000``…), seeded by the seed step before it;
- ``audit``: a stratified random sample of the survey map's classes (``H2-audit-0000``…), each
  event tagged with its ``stratum``; equal allocation interleaves the strata, discriminating
  allocation gives each next spectrum to the stratum that narrows the effect's interval most
  and stops once the interval decides; when every step has run and the verdict is still
  inconclusive, an audit with ``top_up`` goes on with the spectra the plan leaves unspent
  under its stop rule (same draws, same step ids), until the stricter interval decides;
- ``sites``: the probe on the sites of a class (``H2-site-0000``…), tagged with the stratum and
  the feature (particle) a key point belongs to;
- ``spectrum_at``: one spectrum at a position (``H2-at-00``…).

Every acquisition is an exactly-once store step and every random draw is seeded, so a
plan re-run after a crash reads its finished steps back and acquires only what is missing.
The stop condition holds over the whole plan; a person's interrupt ends it after the
current spectrum; monitor events stop the active scan where the plan's rules say so, and
then nothing after it runs until a person lets the plan continue.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from autoscope.instruments.protocols import Microscope
from autoscope.instruments.records import NM2_TO_A2, ImageRecord, SpectrumRecord
from autoscope.tools.acquisition import Acquirer
from autoscope.tools.campaign import Campaign, CampaignConfig, CampaignResult, CampaignStop, StepInfo
from autoscope.tools.evidence import judge_strata, population_sizes, site_targets, stratum_population
from autoscope.tools.figures import campaign_figure
from autoscope.tools.grounding.model import SurveyMap
from autoscope.tools.plan import ActiveScanStep, AuditStep, Hypothesis, Plan, SitesStep, SpectrumAtStep
from autoscope.tools.predictions import Identity
from autoscope.tools.queries import StratumValue, per_site, strata_values, with_shot_noise
from autoscope.tools.store import RunStore
from autoscope.tools.survey import IMAGE_STEP, SurveyPlan
from autoscope.tools.verdicts import ENERGY_TRIM, LEVEL, SEQUENTIAL_LEVEL, judge, next_stratum

log = logging.getLogger(__name__)


class RoundResult(BaseModel):
    """What one plan produced: references into the run store and figures, never arrays."""

    prefix: str
    survey_step: str
    measurements: int
    distinct: int
    dose_e: float
    dose_e_per_A2: float
    by_step: dict[str, int] = {}  # spectra per step kind
    strata: dict[str, int] = {}  # audit and site spectra per class
    audit_decided_early: bool = False
    audit_top_up: int = 0  # audit spectra added after the plan's steps because the verdict was open
    best_step: str | None = None
    best_xy_nm: tuple[float, float] | None = None
    stopped_by: str | None = None  # a monitor kind, "stop_when: ...", "human: ..."
    monitor_events: list[dict] = []
    figure: str | None = None


def compile_campaign(plan: Plan, h: Hypothesis, seed: int, budget: int | None = None) -> CampaignConfig:
    """The campaign configuration of a plan's active scan (the loop under the plan's control)."""
    scan, sv = plan.active, plan.survey
    assert scan is not None
    stop_on = tuple(r.monitor for r in plan.interventions if r.action in ("stop", "ask"))
    every = [r.check_every for r in plan.interventions if r.monitor in ("drift", "ood") and r.check_every]
    return CampaignConfig(
        method=scan.model,
        budget=budget if budget is not None else scan.budget,
        seed_points=plan.seed.points if plan.seed else 8,
        seed=seed,
        survey=SurveyPlan(
            fov_nm=sv.fov_nm,
            pixels=sv.pixels,
            dwell_s=sv.dwell_s,
            current_pA=sv.current_pA,
            spectra=0,
            spectrum_dwell_s=scan.spectrum_dwell_s,
            energy_min_eV=scan.energy_min_eV,
            energy_max_eV=scan.energy_max_eV,
        ),
        stride_px=scan.stride_px,
        patch=h.patch,
        scalarizer=h.signal,
        acquisition=scan.acquisition,
        y_transform=scan.y_transform,
        spectrum_dwell_s=scan.spectrum_dwell_s,
        energy_min_eV=scan.energy_min_eV,
        energy_max_eV=scan.energy_max_eV,
        drift_check_every=min(every) if every else None,
        stop_on=stop_on,
    )


@dataclass
class _Run:
    """The state of one plan's execution: counters and the stop rules."""

    microscope: Microscope
    store: RunStore
    acq: Acquirer
    plan: Plan
    prefix: str
    field_A2: float
    t0: float
    should_stop: Callable[[], str | None]
    on_step: Callable[[StepInfo], None] | None
    dose_e: float = 0.0
    n: int = 0
    by_step: dict[str, int] = field(default_factory=dict)
    strata: dict[str, int] = field(default_factory=dict)

    def observe(self, info: StepInfo, kind: str = "active_scan") -> None:
        """Count a spectrum and apply the plan's stop rules (raises ``CampaignStop``)."""
        self.dose_e += info.record.dose_e if info.record is not None else 0.0
        self.n += 1
        self.by_step[kind] = self.by_step.get(kind, 0) + 1
        if self.on_step:
            self.on_step(info)
        reason = self.should_stop()
        if reason:
            raise CampaignStop(f"human: {reason}")
        stop = self.plan.stop  # its max_measurements already caps every step's budget
        if stop and stop.max_dose_e_per_A2 and self.dose_e / self.field_A2 >= stop.max_dose_e_per_A2:
            raise CampaignStop(f"stop_when: field dose reached {stop.max_dose_e_per_A2:g} e/Å²")
        if stop and stop.max_time_s and float(self.microscope.now_s()) - self.t0 >= stop.max_time_s:
            raise CampaignStop(f"stop_when: {stop.max_time_s:g} s of instrument time")

    def point(
        self, step_id: str, kind: str, xy, dwell_s: float, lo: float, hi: float, **extra
    ) -> SpectrumRecord:
        reused = self.store.has_step(step_id)
        rec = self.acq.spectrum(
            step_id,
            x_nm=float(xy[0]),
            y_nm=float(xy[1]),
            dwell_s=dwell_s,
            energy_min_eV=lo,
            energy_max_eV=hi,
            **extra,
        )
        stratum = extra.get("stratum")
        if stratum:
            self.strata[stratum] = self.strata.get(stratum, 0) + 1
        self.observe(StepInfo(self.n, step_id, -1, "baseline", float("nan"), rec, reused, 0.0, None), kind)
        return rec


def execute_plan(
    microscope: Microscope,
    store: RunStore,
    plan: Plan,
    h: Hypothesis,
    *,
    seed: int,
    run_survey_matches: bool,
    smap: SurveyMap | None = None,
    acknowledged: frozenset[str] = frozenset(),
    should_stop: Callable[[], str | None] = lambda: None,
    on_step: Callable[[StepInfo], None] | None = None,
    figure_dir: Path | None = None,
    pipeline: bool = False,
) -> RoundResult:
    """Run (or resume) ``plan`` for ``h``; see the module doc.

    ``run_survey_matches``: the plan's survey is the run's stored one (reused, no new dose).
    ``smap``: the survey map audit and sites steps draw from (needed when the plan has them).
    ``acknowledged``: monitor kinds a person already let continue in this round.
    ``pipeline``: the active scan's model runs beside the instrument (``tools/pipeline.py``) and
    every step is written to the store while the next one is measured.
    """
    acq = Acquirer(microscope, store, on_conflict="rekey", background_saves=pipeline)
    try:
        return _execute(
            acq,
            plan,
            h,
            seed,
            run_survey_matches,
            smap,
            acknowledged,
            should_stop,
            on_step,
            figure_dir,
            pipeline,
        )
    finally:
        acq.close()  # what was measured is in the store, whatever ended the round


def _execute(
    acq: Acquirer,
    plan: Plan,
    h: Hypothesis,
    seed: int,
    run_survey_matches: bool,
    smap: SurveyMap | None,
    acknowledged: frozenset[str],
    should_stop: Callable[[], str | None],
    on_step: Callable[[StepInfo], None] | None,
    figure_dir: Path | None,
    pipeline: bool,
) -> RoundResult:
    microscope, store = acq.microscope, acq.store
    prefix = f"{h.id}-"
    sv = plan.survey
    microscope.set_beam_current(sv.current_pA)  # the interlock refuses a current beyond the limit
    if run_survey_matches:
        survey_step = IMAGE_STEP
        survey: ImageRecord = store.load(IMAGE_STEP)  # type: ignore[assignment]
    else:
        survey_step = f"{prefix}survey-image"
        survey = acq.image(survey_step, fov_nm=sv.fov_nm, pixels=sv.pixels, dwell_s=sv.dwell_s)
    if (plan.audit or plan.sites) and smap is None:
        raise ValueError("a plan with audit or sites steps needs the survey map")
    run = _Run(
        microscope,
        store,
        acq,
        plan,
        prefix,
        survey.fov_nm**2 * NM2_TO_A2,
        float(microscope.now_s()),
        should_stop,
        on_step,
    )
    run.dose_e = 0.0 if run_survey_matches else survey.dose_e
    result: CampaignResult | None = None
    stopped_by: str | None = None
    decided_early = False
    n_site = 0
    rng = np.random.default_rng([seed, int(h.id[1:])])
    budgets = plan.step_spectra()
    audit: _Audit | None = None
    extra = 0  # what the plan leaves unspent, for the audit's top-up
    n_point = 0  # spectrum_at steps so far (identical ones are separate acquisitions)
    for step, budget in zip(plan.steps, budgets, strict=True):
        if stopped_by is not None:
            break
        if isinstance(step, AuditStep) and budget > step.spectra:
            budget, extra = step.spectra, budget - step.spectra
        try:
            if isinstance(step, ActiveScanStep) and budget:
                cfg = compile_campaign(plan, h, seed, budget).with_(pipeline=pipeline)
                if acknowledged:
                    cfg = cfg.with_(stop_on=[k for k in cfg.stop_on if k not in acknowledged])
                result = Campaign(microscope, store, cfg, prefix=prefix, survey=survey).run(
                    on_step=run.observe
                )
                stopped_by = result.stop_reason or (result.stopped_by.kind if result.stopped_by else None)
            elif isinstance(step, AuditStep) and budget:
                audit = _Audit(run, step, h, smap, survey, rng)
                decided_early = _audit(audit, budget)
            elif isinstance(step, SitesStep) and budget:
                n_site = _sites(run, step, budget, smap, rng, n_site)
            elif isinstance(step, SpectrumAtStep) and budget:
                run.point(
                    f"{prefix}at-{n_point:02d}",
                    "spectrum_at",
                    (step.x_nm, step.y_nm),
                    step.dwell_s,
                    step.energy_min_eV,
                    step.energy_max_eV,
                    reason=step.reason,
                )
            if isinstance(step, SpectrumAtStep):
                n_point += 1
        except CampaignStop as stop:
            stopped_by = str(stop) or "stopped"
            store.append_event("campaign_stopped", reason=stopped_by, step=run.n, prefix=prefix)
            log.info("%s stopped after %d spectra: %s", h.id, run.n, stopped_by)
    top_up = 0
    if stopped_by is None and audit is not None and extra:
        cap = plan.stop.max_measurements if plan.stop and plan.stop.max_measurements else run.n
        try:
            top_up = _top_up(audit, min(extra, cap - run.n), smap, survey)
        except CampaignStop as stop:
            stopped_by = str(stop) or "stopped"
            store.append_event("campaign_stopped", reason=stopped_by, step=run.n, prefix=prefix)
    figure = None
    best_step = best_xy = None
    events: list[dict] = []
    if result is not None:
        events = [e.model_dump(mode="json") for e in result.events]
        usable = [s for s in result.steps if s.failed is None and s.record is not None]
        if usable:
            best = max(usable, key=lambda s: s.y)
            best_step, best_xy = best.step_id, (best.record.x_nm, best.record.y_nm)
        if result.mean is not None:
            store.write_artifact(prediction_artifact(h.id), _prediction_json(result))
        if figure_dir is not None and result.measured:
            figure = str(
                campaign_figure(result, Path(figure_dir) / f"{h.id}.png", title=f"{h.id}: {h.statement[:70]}")
            )
    acq.flush()
    steps = [e["step_id"] for e in store.events("acquisition") if e["step_id"].startswith(prefix)]
    return RoundResult(
        prefix=prefix,
        survey_step=survey_step,
        measurements=run.n,
        distinct=len(set(steps)),
        dose_e=run.dose_e,
        dose_e_per_A2=run.dose_e / run.field_A2,
        by_step=run.by_step,
        strata=run.strata,
        audit_decided_early=decided_early,
        audit_top_up=top_up,
        best_step=best_step,
        best_xy_nm=best_xy,
        stopped_by=stopped_by,
        monitor_events=events,
        figure=figure,
    )


def prediction_artifact(hypothesis_id: str) -> str:
    """The artifact holding the active scan's final prediction over its candidates."""
    return f"{hypothesis_id}-prediction.json"


def _prediction_json(result: CampaignResult) -> str:
    """The model's posterior mean and standard deviation at each candidate (nm), as JSON."""

    def finite(a: np.ndarray) -> list[float | None]:
        return [float(v) if np.isfinite(v) else None for v in np.asarray(a, dtype=float)]

    xy = result.grid.xy_nm
    return json.dumps(
        {
            "x_nm": finite(xy[:, 0]),
            "y_nm": finite(xy[:, 1]),
            "mean": finite(result.mean),
            "std": finite(result.std if result.std is not None else np.full(len(xy), np.nan)),
        }
    )


class _Audit:
    """One audit step's seeded draws: each stratum's population in a random order, taken in turn
    (without replacement), so a top-up continues the same sample."""

    def __init__(self, run: _Run, step: AuditStep, h: Hypothesis, smap, survey, rng) -> None:
        self.run, self.step, self.h = run, step, h
        pops = {c: stratum_population(smap, c, h, survey) for c in step.classes}
        self.draws = {c: pop[rng.permutation(len(pop))] for c, pop in pops.items()}
        self.size = {c: len(pop) for c, pop in pops.items()}
        for c, n in self.size.items():
            if n < step.per_class:
                log.warning("audit: %s has %d members, fewer than the %d asked", c, n, step.per_class)
        self.taken = {c: 0 for c in step.classes}
        self.k = 0

    def measure(self, c: str) -> tuple[str, SpectrumRecord, float]:
        """One spectrum at the next drawn member of ``c``: its step id, record and signal (nan when unreadable)."""
        step = self.step
        sid = f"{self.run.prefix}audit-{self.k:04d}"
        rec = self.run.point(
            sid,
            "audit",
            self.draws[c][self.taken[c]],
            step.spectrum_dwell_s,
            step.energy_min_eV,
            step.energy_max_eV,
            stratum=c,
            draw=int(self.taken[c]),
        )
        self.taken[c] += 1
        self.k += 1
        try:
            return sid, rec, float(self.h.signal(rec))
        except ValueError as exc:  # a spectrum the signal cannot be read from: a failed measurement
            log.warning("%s: %s", sid, exc)
            return sid, rec, float("nan")


def _audit(audit: _Audit, budget: int) -> bool:
    """Measure the audit; True when a discriminating audit decided before spending all of it."""
    step, h = audit.step, audit.h
    caps = {c: min(step.per_class, audit.size[c]) for c in step.classes}
    values: dict[str, list[float]] = {c: [] for c in step.classes}

    def measure(c: str) -> None:
        values[c].append(audit.measure(c)[2])

    if step.allocation == "equal":
        order = [c for i in range(step.per_class) for c in step.classes if i < caps[c]]
        for c in order[:budget]:
            measure(c)
        return False
    for c in [c for i in range(min(3, step.per_class)) for c in step.classes if i < caps[c]]:
        if audit.k < budget:
            measure(c)
    while audit.k < budget:
        effect, _ = judge(h.prediction, values, energy=h.energy_signal, level=SEQUENTIAL_LEVEL)
        if effect.outcome != "inconclusive":
            log.info("%s: the audit decided (%s) after %d spectra", h.id, effect.outcome, audit.k)
            return True
        c = next_stratum(h.prediction, values, caps, trim=ENERGY_TRIM if h.energy_signal else 0.0)
        if c is None:
            return False
        measure(c)
    return False


def _audit_index(step_id: str, prefix: str) -> int:
    """The index of an audit step id (``H1-audit-0012`` → 12); -1 for any other step."""
    head = f"{prefix}audit-"
    return int(step_id[len(head) :]) if step_id.startswith(head) else -1


def _top_up(audit: _Audit, extra: int, smap, survey) -> int:
    """More audit spectra while the verdict on everything measured (audit and sites, as the
    analysis reads it) is inconclusive: none when it decides at ``LEVEL`` already, then each
    to the stratum that narrows the interval most until it decides at ``SEQUENTIAL_LEVEL`` or
    ``extra`` are spent. Returns the spectra taken."""
    h, run = audit.h, audit.run
    if extra <= 0 or isinstance(h.prediction, Identity):
        return 0
    noise = with_shot_noise(h, run.microscope.capabilities())
    # the top-up's own spectra of an earlier attempt are read again as it replays them, in order
    own = audit.k
    raw = {
        c: [v for v in vs if _audit_index(v.step_id, run.prefix) < own]
        for c, vs in strata_values(run.store, h, noise=noise).items()
    }
    caps = {c: audit.size[c] for c in audit.step.classes}
    population = caps | population_sizes(h, raw, smap, survey)  # fixed while the top-up runs
    trim = ENERGY_TRIM if h.energy_signal else 0.0
    taken = 0

    def decided(strata: dict[str, list[StratumValue]], level: float) -> bool:
        effect, _, _ = judge_strata(h, strata, smap, survey, level=level, population=population)
        return effect.outcome != "inconclusive"

    if decided({c: per_site(vs) for c, vs in raw.items()}, LEVEL):
        return 0
    while taken < extra:
        strata = {c: per_site(vs) for c, vs in raw.items()}  # once per look, for the test and the choice
        # the planned look failed at LEVEL; every later look is held to the stricter level
        if taken and decided(strata, SEQUENTIAL_LEVEL):
            break
        data = {c: [] for c in caps} | {c: [v.value for v in vs] for c, vs in strata.items()}
        c = next_stratum(h.prediction, data, caps, trim=trim)
        if c is None:
            break
        sid, rec, y = audit.measure(c)
        sd = float(h.signal.uncertainty(rec)) if noise and y == y else float("nan")
        raw.setdefault(c, []).append(StratumValue(sid, y, rec.x_nm, rec.y_nm, None, None, sd))
        taken += 1
    log.info("%s: the audit's top-up took %d spectra", h.id, taken)
    return taken


def _sites(run: _Run, step: SitesStep, budget: int, smap, rng, start: int) -> int:
    targets = site_targets(smap, step.at)
    if len(targets) > step.max_sites:
        targets = [targets[i] for i in sorted(rng.choice(len(targets), step.max_sites, replace=False))]
    k = start
    for j, (xy, feature) in enumerate(targets):
        for r in range(step.repeats):
            if k - start >= budget:
                return k
            extra = {"stratum": step.at, "site": j, "repeat": r}
            if feature is not None:
                extra["feature"] = feature
            run.point(
                f"{run.prefix}site-{k:04d}",
                "sites",
                xy,
                step.dwell_s,
                step.energy_min_eV,
                step.energy_max_eV,
                **extra,
            )
            k += 1
    return k


__all__ = ["RoundResult", "compile_campaign", "execute_plan", "site_targets", "stratum_population"]
