"""The four human gates: after a hypothesis, after a plan's dry run, at a monitor
intervention and after the analysis. Each only asks (``agents/gates.py``) and turns
the accepted answer into a state update; the routing functions read ``last_gate``.
"""

from __future__ import annotations

from langchain_core.runnables import RunnableConfig
from langgraph.runtime import Runtime

from autoscope.agents.context import RunContext
from autoscope.agents.gates import Decision, GateRequest, GateResponse, ask, gate_update
from autoscope.agents.state import GraphState
from autoscope.tools.dry_run import DryRun
from autoscope.tools.grounding import population_grid
from autoscope.tools.plan import Hypothesis, Plan, check_grounded, check_hypothesis, check_plan
from autoscope.tools.survey import IMAGE_STEP
from autoscope.tools.verdicts import Verdict


def _limits(ctx: RunContext) -> dict[str, float]:
    return {k: float(v) for k, v in ctx.microscope.limits.model_dump().items()}


def _edited_plan(plan: dict, resp: GateResponse, h: Hypothesis, ctx: RunContext) -> GraphState:
    """The plan with a person's edit applied, validated and checked again; its dry run is redone."""
    edited = Plan.model_validate({**plan, **(resp.edit or {}), "hypothesis_id": h.id})
    check_plan(edited, h, ctx.microscope.capabilities())
    return {"plan": edited.model_dump(mode="json"), "dry_run": None}


def _record(ctx: RunContext, decision: Decision, state: GraphState) -> Decision:
    """Log the decision the routing acts on, numbered by its place in the run's decisions.

    A gate re-run after a kill (its answer logged, the state that holds it never checkpointed)
    comes back with the same number: the same answer again is not logged twice; another answer
    is logged as replacing the first, which was never acted on."""
    decision = decision.model_copy(update={"index": len(state.get("decisions") or [])})
    fields = decision.model_dump()
    same = [e for e in ctx.store.events("decision") if e.get("index") == decision.index]
    keys = ("gate", "round", "action", "actor", "who", "reason")
    if same and all(same[-1].get(k) == fields[k] for k in keys):
        return decision
    extra = {"replaces": same[-1]["seq"]} if same else {}
    ctx.store.append_event("decision", **fields, **extra)
    return decision


def hypothesis_gate(state: GraphState, config: RunnableConfig, runtime: Runtime[RunContext]) -> GraphState:
    ctx = runtime.context
    h = state["hypothesis"]
    caps = ctx.microscope.capabilities()
    smap = ctx.survey_map()
    grid = population_grid(ctx.store.load(IMAGE_STEP)).xy_nm
    req = GateRequest(
        gate="hypothesis",
        round=state["round"],
        question=f"Test {h['id']}: {h['statement']}",
        proposal=h,
        limits=_limits(ctx),
    )

    def validate(resp: GateResponse) -> GraphState:
        if resp.action != "edit":
            return {}
        edited = Hypothesis.model_validate(
            {**h, **(resp.edit or {}), "id": h["id"], "author": f"edited by {resp.actor} ({resp.who})"}
        )
        check_hypothesis(edited, caps)
        check_grounded(edited, smap, grid)
        return {"hypothesis": edited.model_dump(mode="json")}

    resp, update, decision = ask(req, ctx.gate_policy(), validate, config)
    ctx.gate_answered()
    decision = _record(ctx, decision, state)
    if update.get("hypothesis"):  # the log holds the hypothesis that is tested, not only the proposal
        ctx.store.append_event("hypothesis", **update["hypothesis"])
    return gate_update(resp, decision, update)


def plan_gate(state: GraphState, config: RunnableConfig, runtime: Runtime[RunContext]) -> GraphState:
    ctx = runtime.context
    p = state["plan"]
    h = Hypothesis.model_validate(state["hypothesis"])
    dry = DryRun.model_validate(state["dry_run"])
    req = GateRequest(
        gate="plan",
        round=state["round"],
        question=f"Run this plan for {h.id}? {Plan.model_validate(p).summary()}",
        proposal=p,
        dry_run=dry,
        limits=_limits(ctx),
    )

    def validate(resp: GateResponse) -> GraphState:
        return _edited_plan(p, resp, h, ctx) if resp.action == "edit" else {}

    resp, update, decision = ask(req, ctx.gate_policy(), validate, config)
    ctx.gate_answered()
    decision = _record(ctx, decision, state)
    return gate_update(resp, decision, update)


def intervention_gate(state: GraphState, config: RunnableConfig, runtime: Runtime[RunContext]) -> GraphState:
    ctx = runtime.context
    result = state["result"]
    events = result.get("monitor_events") or []
    kind = (result.get("stopped_by") or "").split(":")[0]
    last = next((e for e in reversed(events) if e.get("kind") == kind or e.get("monitor") == kind), {})
    req = GateRequest(
        gate="intervention",
        round=state["round"],
        question=f"The scan stopped: {result['stopped_by']}. {last.get('message', '')} "
        + (
            "reject = end the round and analyze what was measured, edit = change the plan "
            "(approve is refused: nothing continues past a limit)."
            if kind == "safety_stop"
            else "approve = continue the scan, reject = end it and analyze, edit = change the plan."
        ),
        proposal={"kind": kind, **last, "measurements": result["measurements"]},
        limits=_limits(ctx),
    )
    p = state["plan"]
    h = Hypothesis.model_validate(state["hypothesis"])

    def validate(resp: GateResponse) -> GraphState:
        if resp.action == "approve" and kind == "safety_stop":
            raise ValueError(
                "nothing continues past a safety limit: reject ends the round (the analysis uses what "
                "was measured), edit changes the plan, which is dry-run and asked about again"
            )
        if resp.action == "approve":
            return {"acknowledged": sorted({*state.get("acknowledged", []), kind})}
        if resp.action == "edit":
            return _edited_plan(p, resp, h, ctx)
        return {}

    resp, update, decision = ask(req, ctx.gate_policy(), validate, config)
    ctx.gate_answered()
    decision = _record(ctx, decision, state)
    return gate_update(resp, decision, update)


def analysis_gate(state: GraphState, config: RunnableConfig, runtime: Runtime[RunContext]) -> GraphState:
    ctx = runtime.context
    v = state["verdict"]
    req = GateRequest(
        gate="analysis",
        round=state["round"],
        question=f"{v['hypothesis_id']} is {v['outcome']}: {'; '.join(v['evidence'])}. Accept and go on?",
        proposal=v,
        limits=_limits(ctx),
    )

    def validate(resp: GateResponse) -> GraphState:
        verdict = v
        if resp.action == "edit":
            verdict = Verdict.model_validate({**v, **(resp.edit or {}), "hypothesis_id": v["hypothesis_id"]})
            verdict = verdict.model_copy(update={"author": f"edited by {resp.actor}"}).model_dump(mode="json")
        done = {
            "hypothesis": state["hypothesis"],
            "plan": state["plan"],
            "dry_run": state["dry_run"],
            "result": state["result"],
            "verdict": verdict,
        }
        return {
            "verdict": verdict,
            "rounds": [done],
            "spent_spectra": state.get("spent_spectra", 0) + int(state["result"]["measurements"]),
        }

    resp, update, decision = ask(req, ctx.gate_policy(), validate, config)
    ctx.gate_answered()
    decision = _record(ctx, decision, state)
    return gate_update(resp, decision, update)
