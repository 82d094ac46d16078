"""The agent graph: wiring only. Nodes live in ``agents/nodes/``; routing functions are
pure functions of the state that return a ``Literal``.

    survey → hypothesize → hypothesis_gate → plan → dry_run → plan_gate → execute
           → (intervention_gate ↺ execute) → analyze → analysis_gate → hypothesize … → report
"""

from __future__ import annotations

from typing import Literal

from langgraph.graph import END, START, StateGraph

from autoscope.agents.context import RunContext
from autoscope.agents.nodes.analyze import analyze
from autoscope.agents.nodes.dry_run import dry_run_node
from autoscope.agents.nodes.execute import execute
from autoscope.agents.nodes.hypothesize import hypothesize
from autoscope.agents.nodes.plan import plan
from autoscope.agents.nodes.report import report
from autoscope.agents.nodes.review import analysis_gate, hypothesis_gate, intervention_gate, plan_gate
from autoscope.agents.nodes.survey import survey
from autoscope.agents.state import GraphState, InputState

MAX_PLAN_ATTEMPTS = 3


def more_rounds(state: GraphState) -> bool:
    """Another hypothesis is allowed: rounds and spectra remain."""
    return state.get("round", 0) < state.get("max_rounds", 1) and state.get("spent_spectra", 0) < state.get(
        "budget", 0
    )


def after_hypothesize(state: GraphState) -> Literal["hypothesis_gate", "report"]:
    """Nothing left to test (the planner found no untested hypothesis): the run reports."""
    return "hypothesis_gate" if state.get("hypothesis") else "report"


def after_hypothesis_gate(state: GraphState) -> Literal["plan", "hypothesize", "report"]:
    if state.get("last_gate") in ("approve", "edit"):
        return "plan"
    return "hypothesize" if more_rounds(state) else "report"


def after_plan_gate(state: GraphState) -> Literal["execute", "dry_run", "plan", "hypothesize", "report"]:
    action = state.get("last_gate")
    if action == "approve":
        return "execute"
    if action == "edit":
        return "dry_run"
    if action == "reject" and state.get("plan_attempts", 0) < MAX_PLAN_ATTEMPTS:
        return "plan"
    return "hypothesize" if more_rounds(state) else "report"


def after_execute(state: GraphState) -> Literal["intervention_gate", "analyze"]:
    stopped = (state.get("result") or {}).get("stopped_by") or ""
    kind = stopped.split(":")[0]
    if kind == "safety_stop":
        return "intervention_gate"
    rules = [s for s in (state.get("plan") or {}).get("steps", []) if s.get("kind") == "intervention"]
    if any(r["monitor"] == kind and r["action"] == "ask" for r in rules):
        return "intervention_gate"
    return "analyze"


def after_intervention_gate(state: GraphState) -> Literal["execute", "dry_run", "analyze"]:
    action = state.get("last_gate")
    if action == "approve":
        return "execute"
    if action == "edit":
        return "dry_run"
    return "analyze"


def after_analysis_gate(state: GraphState) -> Literal["hypothesize", "report"]:
    if state.get("last_gate") == "reject":
        return "report"
    return "hypothesize" if more_rounds(state) else "report"


def build_graph() -> StateGraph:
    g = StateGraph(GraphState, input_schema=InputState, context_schema=RunContext)
    g.add_node("survey", survey)
    g.add_node("hypothesize", hypothesize)
    g.add_node("hypothesis_gate", hypothesis_gate)
    g.add_node("plan", plan)
    g.add_node("dry_run", dry_run_node)
    g.add_node("plan_gate", plan_gate)
    g.add_node("execute", execute)
    g.add_node("intervention_gate", intervention_gate)
    g.add_node("analyze", analyze)
    g.add_node("analysis_gate", analysis_gate)
    g.add_node("report", report)
    g.add_edge(START, "survey")
    g.add_edge("survey", "hypothesize")
    g.add_conditional_edges("hypothesize", after_hypothesize)
    g.add_conditional_edges("hypothesis_gate", after_hypothesis_gate)
    g.add_edge("plan", "dry_run")
    g.add_edge("dry_run", "plan_gate")
    g.add_conditional_edges("plan_gate", after_plan_gate)
    g.add_conditional_edges("execute", after_execute)
    g.add_conditional_edges("intervention_gate", after_intervention_gate)
    g.add_edge("analyze", "analysis_gate")
    g.add_conditional_edges("analysis_gate", after_analysis_gate)
    g.add_edge("report", END)
    return g
