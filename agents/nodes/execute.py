"""Execution: the plan engine runs the active-learning loop on the microscope.

Re-running this node after a crash is safe: every acquisition is an exactly-once store
step, so the engine reads finished steps back and acquires only what is missing. A
safety stop is not an error of the run: the round ends and a person is asked.
"""

from __future__ import annotations

import logging

from langgraph.runtime import Runtime

from autoscope.agents.context import RunContext
from autoscope.agents.nodes.plan import run_survey_step
from autoscope.agents.state import GraphState
from autoscope.instruments.errors import SafetyLimitExceeded
from autoscope.tools.plan import Hypothesis, Plan
from autoscope.tools.plan_engine import RoundResult, execute_plan

log = logging.getLogger(__name__)


def execute(state: GraphState, runtime: Runtime[RunContext]) -> GraphState:
    ctx = runtime.context
    h = Hypothesis.model_validate(state["hypothesis"])
    p = Plan.model_validate(state["plan"])
    s = state["survey"]
    same_survey = p.survey == run_survey_step(state)
    ctx.status(f"execute {h.id}: {p.summary()}")
    ctx.stop_requested.clear()
    try:
        result = execute_plan(
            ctx.microscope,
            ctx.store,
            p,
            h,
            seed=ctx.spec.seed + state.get("round", 1),
            run_survey_matches=same_survey,
            smap=ctx.survey_map(),
            acknowledged=frozenset(state.get("acknowledged", [])),
            should_stop=ctx.should_stop,
            on_step=ctx.on_step,
            figure_dir=ctx.run_dir if ctx.figures else None,
            pipeline=ctx.spec.template.pipeline,
        )
    except SafetyLimitExceeded as exc:
        log.warning("%s stopped at a safety limit: %s", h.id, exc)
        done = [e for e in ctx.store.events("acquisition") if e["step_id"].startswith(f"{h.id}-")]
        result = RoundResult(
            prefix=f"{h.id}-",
            survey_step=s["step"],
            measurements=sum(1 for e in done if e.get("record") == "spectrum"),
            distinct=len({e["step_id"] for e in done}),
            dose_e=sum(float(e["dose_e"]) for e in done),
            dose_e_per_A2=0.0,
            stopped_by=f"safety_stop: {exc.limit}",
            monitor_events=[{"kind": "safety_stop", "limit": exc.limit, "message": str(exc)}],
        )
    ctx.store.append_event("round_executed", hypothesis_id=h.id, **result.model_dump(mode="json"))
    return {"result": result.model_dump(mode="json")}
