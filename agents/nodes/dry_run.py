"""Dry run: what the plan would cost (dose, time, acquisitions) against the limits; touches nothing."""

from __future__ import annotations

from langgraph.runtime import Runtime

from autoscope.agents.context import RunContext
from autoscope.agents.nodes.plan import budget_left, run_survey_step
from autoscope.agents.state import GraphState
from autoscope.tools.dry_run import Usage, dry_run
from autoscope.tools.plan import Plan


def usage_of(ctx: RunContext, state: GraphState) -> Usage:
    """What the run has spent so far, by its own event log (resumes included)."""
    acq = ctx.store.events("acquisition")
    return Usage(
        dose_e=sum(float(e.get("dose_e", 0.0)) for e in acq),
        acquisitions=len(acq),
        spectra=sum(1 for e in acq if e.get("record") == "spectrum"),
        time_s=sum(float(e.get("t_end_s", 0.0)) - float(e.get("t_start_s", 0.0)) for e in acq),
        survey=run_survey_step(state),
    )


def dry_run_node(state: GraphState, runtime: Runtime[RunContext]) -> GraphState:
    ctx = runtime.context
    p = Plan.model_validate(state["plan"])
    s = state["survey"]
    d = dry_run(
        p,
        ctx.microscope.capabilities(),
        ctx.microscope.limits,
        usage_of(ctx, state),
        run_budget_left=budget_left(state, ctx),
        center_nm=tuple(s["center_nm"]),
        ledger=ctx.microscope.dose_ledger(),
    )
    ctx.store.append_event("dry_run", hypothesis_id=p.hypothesis_id, ok=d.ok, **d.model_dump(mode="json"))
    return {"dry_run": d.model_dump(mode="json")}
