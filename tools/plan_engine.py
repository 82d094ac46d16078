"""The one engine that carries out a plan on a microscope, into the run store.

A plan for hypothesis ``H2`` becomes a campaign whose steps are named ``H2-al-0000``,
``H2-drift-000``, ``H2-at-00`` (and ``H2-survey-image`` when the plan asks for a
survey other than the run's): every acquisition is an exactly-once store step, so a
plan re-run after a crash reads its finished steps back and acquires only what is
missing. Stop conditions and a person's interrupt end the scan cleanly after the
current spectrum; monitor events stop it where the plan's intervention rules say so.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from autoscope.instruments.protocols import Microscope
from autoscope.instruments.records import NM2_TO_A2, ImageRecord
from autoscope.tools.acquisition import Acquirer
from autoscope.tools.campaign import Campaign, CampaignConfig, CampaignResult, CampaignStop, StepInfo
from autoscope.tools.figures import campaign_figure
from autoscope.tools.plan import Hypothesis, Plan
from autoscope.tools.store import RunStore
from autoscope.tools.survey import IMAGE_STEP, SurveyPlan

log = logging.getLogger(__name__)


class RoundResult(BaseModel):
    """What one plan produced: references into the run store and figures, never arrays."""

    prefix: str
    survey_step: str
    measurements: int
    distinct: int
    dose_e: float
    dose_e_per_A2: float
    y_median: float | None = None
    y_p90: float | None = None
    y_max: float | None = None
    best_step: str | None = None
    best_xy_nm: tuple[float, float] | None = None
    stopped_by: str | None = None  # a monitor kind, "stop_when: ...", "human: ..."
    monitor_events: list[dict] = []
    figure: str | None = None


def compile_campaign(plan: Plan, h: Hypothesis, seed: int) -> CampaignConfig:
    """The campaign configuration of a plan (the active-learning loop under the plan's control)."""
    scan, sv = plan.active, plan.survey
    assert scan is not None
    stop_on = tuple(r.monitor for r in plan.interventions if r.action in ("stop", "ask"))
    every = [r.check_every for r in plan.interventions if r.monitor in ("drift", "ood") and r.check_every]
    budget = scan.budget
    if plan.stop and plan.stop.max_measurements:
        budget = min(budget, plan.stop.max_measurements)
    return CampaignConfig(
        method=scan.model,
        budget=budget,
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


def execute_plan(
    microscope: Microscope,
    store: RunStore,
    plan: Plan,
    h: Hypothesis,
    *,
    seed: int,
    run_survey_matches: bool,
    acknowledged: frozenset[str] = frozenset(),
    should_stop: Callable[[], str | None] = lambda: None,
    on_step: Callable[[StepInfo], None] | None = None,
    figure_dir: Path | None = None,
) -> RoundResult:
    """Run (or resume) ``plan`` for ``h``; see the module doc.

    ``run_survey_matches``: the plan's survey is the run's stored one (reused, no new dose).
    ``acknowledged``: monitor kinds a person already let continue in this round.
    """
    prefix = f"{h.id}-"
    sv = plan.survey
    acq = Acquirer(microscope, store)
    microscope.set_beam_current(sv.current_pA)  # the interlock refuses a current beyond the limit
    if run_survey_matches:
        survey_step = IMAGE_STEP
        survey: ImageRecord = store.load(IMAGE_STEP)  # type: ignore[assignment]
    else:
        survey_step = f"{prefix}survey-image"
        microscope.unblank_beam()
        try:
            survey = acq.image(survey_step, fov_nm=sv.fov_nm, pixels=sv.pixels, dwell_s=sv.dwell_s)
        finally:
            microscope.blank_beam()
    t0 = float(microscope.now_s())
    dose0 = 0.0 if run_survey_matches else survey.dose_e
    field_A2 = survey.fov_nm**2 * NM2_TO_A2
    stop = plan.stop
    spent = {"dose_e": dose0, "n": 0}

    def observe(info: StepInfo) -> None:
        spent["dose_e"] += info.record.dose_e
        spent["n"] += 1
        if on_step:
            on_step(info)
        reason = should_stop()
        if reason:
            raise CampaignStop(f"human: {reason}")
        if stop and stop.max_dose_e_per_A2 and spent["dose_e"] / field_A2 >= stop.max_dose_e_per_A2:
            raise CampaignStop(f"stop_when: field dose reached {stop.max_dose_e_per_A2:g} e/Å²")
        if stop and stop.max_time_s and float(microscope.now_s()) - t0 >= stop.max_time_s:
            raise CampaignStop(f"stop_when: {stop.max_time_s:g} s of instrument time")

    result: CampaignResult | None = None
    stopped_by: str | None = None
    if plan.active is not None:
        cfg = compile_campaign(plan, h, seed)
        if acknowledged:
            cfg = cfg.with_(stop_on=[k for k in cfg.stop_on if k not in acknowledged])
        result = Campaign(microscope, store, cfg, prefix=prefix, survey=survey).run(on_step=observe)
        stopped_by = result.stop_reason or (result.stopped_by.kind if result.stopped_by else None)
    points = []
    if stopped_by is None:
        microscope.unblank_beam()
        try:
            for i, s in enumerate(plan.spectra_at):
                points.append(
                    acq.spectrum(
                        f"{prefix}at-{i:02d}",
                        x_nm=s.x_nm,
                        y_nm=s.y_nm,
                        dwell_s=s.dwell_s,
                        energy_min_eV=s.energy_min_eV,
                        energy_max_eV=s.energy_max_eV,
                        reason=s.reason,
                    )
                )
        finally:
            microscope.blank_beam()
    ys = [float(h.signal(p)) for p in points]
    names = [f"{prefix}at-{i:02d}" for i in range(len(points))]
    xy = [(p.x_nm, p.y_nm) for p in points]
    dose = dose0 + sum(p.dose_e for p in points)
    figure = None
    events: list[dict] = []
    if result is not None:
        ys = [s.y for s in result.steps] + ys
        names = [s.step_id for s in result.steps] + names
        xy = [(s.record.x_nm, s.record.y_nm) for s in result.steps] + xy
        dose += sum(s.record.dose_e for s in result.steps)
        events = [e.model_dump(mode="json") for e in result.events]
        if figure_dir is not None and result.measured:
            figure = str(
                campaign_figure(result, Path(figure_dir) / f"{h.id}.png", title=f"{h.id}: {h.statement[:70]}")
            )
    arr = np.asarray(ys, dtype=float)
    best = int(np.argmax(arr)) if arr.size else None
    return RoundResult(
        prefix=prefix,
        survey_step=survey_step,
        measurements=len(ys),
        distinct=len(set(names)),
        dose_e=dose,
        dose_e_per_A2=dose / field_A2,
        y_median=float(np.median(arr)) if arr.size else None,
        y_p90=float(np.percentile(arr, 90)) if arr.size else None,
        y_max=float(arr.max()) if arr.size else None,
        best_step=names[best] if best is not None else None,
        best_xy_nm=xy[best] if best is not None else None,
        stopped_by=stopped_by,
        monitor_events=events,
        figure=figure,
    )


__all__ = ["RoundResult", "compile_campaign", "execute_plan"]
