"""Orchestration: the planner compiles the approved hypothesis into a typed plan."""

from __future__ import annotations

from langgraph.runtime import Runtime

from autoscope.agents import deterministic
from autoscope.agents.answer import answer_classes
from autoscope.agents.context import RunContext
from autoscope.agents.proposing import propose
from autoscope.agents.state import GraphState
from autoscope.agents.untrusted import screen
from autoscope.tools.dry_run import longest_stay_s
from autoscope.tools.plan import Hypothesis, Plan, PlanValidationError, SurveyStep, check_plan

#: fewest audit spectra per class an LLM-written plan may ask for (fewer give no useful interval)
MIN_PER_CLASS = 3


def run_survey_step(state: GraphState) -> SurveyStep:
    """The run's stored survey as a plan step (a plan that repeats it exactly reuses it)."""
    s = state["survey"]
    return SurveyStep(
        fov_nm=s["fov_nm"], pixels=s["pixels"], dwell_s=s["dwell_s"], current_pA=s["current_pA"]
    )


def budget_left(state: GraphState, ctx: RunContext) -> int:
    return ctx.spec.total_budget - state.get("spent_spectra", 0)


def rounds_left(state: GraphState, ctx: RunContext) -> int:
    """Hypotheses still allowed, the current one included."""
    return ctx.spec.rounds - state.get("round", 1) + 1


def plan(state: GraphState, runtime: Runtime[RunContext]) -> GraphState:
    ctx = runtime.context
    h = Hypothesis.model_validate(state["hypothesis"])
    caps = ctx.microscope.capabilities()
    feedback = state.get("feedback")
    left, rounds = budget_left(state, ctx), rounds_left(state, ctx)
    survey = run_survey_step(state)
    ctx.status(f"plan for {h.id}")

    present = state["survey"].get("classes") or {}
    screen(ctx.store, f"{h.id} statement", h.statement)  # a model's words, now in the planner's prompt

    stay = longest_stay_s(
        ctx.microscope.limits,
        caps,
        survey,
        frames=0,  # the run's survey is in the ledger already
        ledger=ctx.microscope.dose_ledger(),
        center_nm=tuple(state["survey"]["center_nm"]),
    )

    def fallback() -> Plan:
        return deterministic.plan(
            ctx.spec,
            h,
            survey,
            caps,
            budget_left=left,
            rounds_left=rounds,
            present=present,
            max_stay_s=stay,
            feedback=feedback,
        )

    def check(p: Plan) -> None:
        p.hypothesis_id = h.id  # the plan is for the hypothesis at hand, whatever the model wrote
        check_plan(p, h, caps)
        if p.audit is not None and p.audit.per_class < MIN_PER_CLASS:
            raise PlanValidationError(
                f"audit.per_class: {p.audit.per_class} spectra per class cannot give an interval; "
                f"plan at least {MIN_PER_CLASS}"
            )

    p, fell_back = propose(
        ctx,
        role="planner",
        prompt="plan",
        variables={
            "hypothesis": h.model_dump_json(exclude={"author"}),
            "hypothesis_id": h.id,
            "budget_left": left,
            "rounds_left": rounds,
            "energy_min_eV": caps.energy_min_eV,
            "energy_max_eV": caps.energy_max_eV,
            "survey_step": survey.model_dump_json(),
            "feedback": feedback,
            "question_classes": answer_classes(ctx.spec.question, h, present),
            "example": fallback().model_dump_json(exclude={"author"}),
        },
        schema=Plan,
        check=check,
        fallback=fallback,
        purpose=f"plan for {h.id}",
    )
    author = p.author if p.author == deterministic.AUTHOR else f"{ctx.llm.backend}:{ctx.llm.model}"
    p = p.model_copy(update={"author": author})
    ctx.store.append_event("plan", **p.model_dump(mode="json"))
    out: GraphState = {
        "plan": p.model_dump(mode="json"),
        "plan_attempts": state.get("plan_attempts", 0) + 1,
        "feedback": None,
    }
    if fell_back:
        out["fallbacks"] = [fell_back]
    return out
