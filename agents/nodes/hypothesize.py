"""Ideation: the hypothesis agent proposes the next testable hypothesis."""

from __future__ import annotations

from langgraph.runtime import Runtime

from autoscope.agents import deterministic
from autoscope.agents.context import RunContext
from autoscope.agents.proposing import propose
from autoscope.agents.state import GraphState
from autoscope.tools.plan import Hypothesis, PlanValidationError, check_hypothesis


def hypothesize(state: GraphState, runtime: Runtime[RunContext]) -> GraphState:
    ctx = runtime.context
    n = state.get("round", 0) + 1
    hid = f"H{n}"
    feedback = state.get("feedback")
    caps = ctx.microscope.capabilities()
    tpl = ctx.spec.template
    ctx.status(f"hypothesis {hid}")

    def fallback() -> Hypothesis:
        return deterministic.hypothesis(ctx.spec, n, feedback)

    tested = {r["hypothesis"]["statement"].strip().lower() for r in state.get("rounds", [])}

    def check(h: Hypothesis) -> None:
        check_hypothesis(h, caps)
        if h.statement.strip().lower() in tested:
            raise PlanValidationError(
                "statement: this hypothesis was tested already; propose a different one"
            )

    previous = [
        {
            "id": r["hypothesis"]["id"],
            "statement": r["hypothesis"]["statement"],
            "verdict": r["verdict"]["outcome"],
        }
        for r in state.get("rounds", [])
    ]
    h, fell_back = propose(
        ctx,
        role="hypothesis agent",
        prompt="hypothesis",
        variables={
            "goal": state.get("goal") or ctx.spec.goal,
            "notes": state.get("notes") or ctx.spec.notes,
            "survey": state["survey"],
            "energy_min_eV": tpl.energy_min_eV,
            "energy_max_eV": tpl.energy_max_eV,
            "previous": previous,
            "feedback": feedback,
            "hypothesis_id": hid,
            "example": fallback().model_copy(update={"author": ""}).model_dump_json(exclude={"author"}),
        },
        schema=Hypothesis,
        check=check,
        fallback=fallback,
        purpose=f"hypothesis {hid}",
    )
    author = h.author if h.author == deterministic.AUTHOR else f"{ctx.llm.backend}:{ctx.llm.model}"
    h = h.model_copy(update={"id": hid, "author": author})
    ctx.store.append_event("hypothesis", **h.model_dump(mode="json"))
    out: GraphState = {
        "round": n,
        "hypothesis": h.model_dump(mode="json"),
        "plan": None,
        "plan_attempts": 0,
        "dry_run": None,
        "result": None,
        "verdict": None,
        "acknowledged": [],
        "feedback": None,
    }
    if fell_back:
        out["fallbacks"] = [fell_back]
    return out
