"""Report node: the run is done; the runner writes report.md and summary.json from the state."""

from __future__ import annotations

from langgraph.runtime import Runtime

from autoscope.agents.context import RunContext
from autoscope.agents.state import GraphState


def report(state: GraphState, runtime: Runtime[RunContext]) -> GraphState:
    ctx = runtime.context
    rounds = state.get("rounds") or []
    decisions = state.get("decisions") or []
    last = decisions[-1] if decisions else {}
    if last.get("action") in ("reject", "redirect") and last.get("gate") != "plan":
        reason = f"{last['actor']} {last['action']}ed at the {last['gate']} gate: {last.get('reason', '')}"
    elif state.get("stop_reason"):
        reason = state["stop_reason"]
    elif state.get("spent_spectra", 0) >= state.get("budget", 0):
        reason = "the run's spectrum budget is spent"
    else:
        reason = f"{len(rounds)} of {state.get('max_rounds', 0)} hypotheses tested"
    ctx.store.append_event("run_complete", rounds=len(rounds), stop_reason=reason)
    return {"status": "done", "stop_reason": reason}
