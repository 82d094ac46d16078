"""Human gates and the autonomy policy.

A gate node does nothing but ask: when the ``AutonomyPolicy`` lets the policy decide,
it records that decision; otherwise it ``interrupt()``s with a typed ``GateRequest``
and validates the typed ``GateResponse`` it is resumed with. LangGraph re-runs a node
from its start on resume, so nothing with a side effect comes before the interrupt.
An edit that fails validation is answered by asking again with the error.

Policy levels:

- ``manual``: a person decides at every gate.
- ``supervised``: a person approves plans (what spends dose) and monitor interventions;
  the agents' hypotheses and verdicts pass by policy.
- ``autonomous``: the policy approves a plan only when its dry run is within the limits
  a person set; beyond them it stops for a person (the run exits 3 and resumes at that
  gate). Monitor events end the scan; a safety stop always waits for a person.

An outside agent (``actor="agent"``, e.g. through ``autoscope mcp``) never decides for a
person: at a gate that needs one it may only submit an edited plan, at the plan or the
intervention gate, and any other answer is refused (the person is asked again). Its edit
is marked in the plan's ``author``, and a plan so marked always needs a person at the plan
gate, whatever the autonomy level.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from langchain_core.runnables import RunnableConfig
from langgraph.types import interrupt
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from autoscope.agents.state import GateAction, GraphState
from autoscope.tools.dry_run import DryRun

GateName = Literal["hypothesis", "plan", "intervention", "analysis"]
Actor = Literal["human", "agent", "policy"]
Level = Literal["manual", "supervised", "autonomous"]
#: the gates where an outside agent may answer, with an edit only: the edited plan is dry-run and
#: asked about again, by a person (``AutonomyPolicy.needs_person``)
AGENT_EDIT_GATES: tuple[GateName, ...] = ("plan", "intervention")
#: how an outside agent's edit marks the plan's ``author``
AGENT_EDIT = "edited by agent"


class GateRequest(BaseModel):
    """What a person is asked: the proposal, its dry-run figures and the limits that hold."""

    gate: GateName
    round: int
    question: str
    proposal: dict[str, Any]
    dry_run: DryRun | None = None
    limits: dict[str, float] = {}
    error: str | None = Field(None, description="why the previous answer was refused")

    def text(self) -> str:
        lines = [f"[{self.gate} gate, round {self.round}] {self.question}"]
        if self.dry_run is not None:
            lines.append("dry run: " + self.dry_run.summary())
        if self.error:
            lines.append("previous answer refused: " + self.error)
        return "\n".join(lines)


class GateResponse(BaseModel):
    """approve; edit (``edit`` holds the modified proposal, validated again); reject with a
    ``reason``; redirect with a new ``instruction``."""

    model_config = ConfigDict(extra="forbid")

    action: GateAction
    edit: dict[str, Any] | None = None
    reason: str = ""
    instruction: str = ""
    actor: Actor = "human"
    who: str = ""


class Decision(BaseModel):
    gate: GateName
    round: int
    action: GateAction
    actor: Actor
    who: str = ""
    reason: str = ""
    checkpoint_id: str | None = None
    #: its place in the run's decisions (0, 1, …): a gate re-run after a kill keeps it
    index: int | None = None


class AutonomyPolicy(BaseModel):
    """Which gates need a person (see the module doc)."""

    level: Level = "autonomous"

    def needs_person(self, request: GateRequest) -> bool:
        if request.proposal.get("kind") == "safety_stop":
            return True
        if request.gate == "plan" and edited_by_agent(request.proposal):
            return True
        if self.level == "manual":
            return True
        if self.level == "supervised":
            return request.gate in ("plan", "intervention")
        return request.gate == "plan" and request.dry_run is not None and not request.dry_run.ok

    def decide(self, request: GateRequest) -> GateResponse:
        """The policy's own answer at a gate that does not need a person."""
        if request.gate == "intervention":
            return GateResponse(
                action="reject",
                reason=f"{self.level} policy ends the scan on a {request.proposal.get('kind')} event",
                actor="policy",
                who=self.level,
            )
        return GateResponse(
            action="approve", actor="policy", who=self.level, reason="within the human-set limits"
        )


def edited_by_agent(proposal: dict[str, Any]) -> bool:
    """The proposal is a plan an outside agent edited (a person must approve it)."""
    return str(proposal.get("author") or "").startswith(AGENT_EDIT)


def agent_answer(request: GateRequest, resp: GateResponse) -> GateResponse:
    """An outside agent's answer at a gate that needs a person: an edit at the plan or intervention
    gate, marked as the agent's; anything else raises ``ValueError`` (the person is asked again)."""
    if resp.action != "edit" or request.gate not in AGENT_EDIT_GATES:
        raise ValueError(
            f"an outside agent cannot {resp.action} at the {request.gate} gate: a person decides here "
            "(an agent may only submit an edited plan at the plan or intervention gate, for a person "
            "to approve)"
        )
    mark = f"{AGENT_EDIT} ({resp.who or 'outside agent'})"
    return resp.model_copy(update={"edit": {**(resp.edit or {}), "author": mark}})


def effective_decisions(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The logged ``decision`` events that were acted on: without those a later one ``replaces``
    (an answer given before a kill, at a checkpoint the run resumed from)."""
    replaced = {e["replaces"] for e in events if e.get("replaces") is not None}
    return [e for e in events if e["seq"] not in replaced]


def checkpoint_id(config: RunnableConfig) -> str | None:
    """The id of the checkpoint this node runs from (what a person saw when asked)."""
    conf = config.get("configurable", {})
    return conf.get("checkpoint_map", {}).get("") or conf.get("checkpoint_id")


def ask(
    request: GateRequest,
    policy: AutonomyPolicy,
    validate: Callable[[GateResponse], dict[str, Any]],
    config: RunnableConfig,
) -> tuple[GateResponse, dict[str, Any], Decision]:
    """The response at a gate (policy or person), its validated state update and the decision.

    ``validate`` turns an accepted response into the state update (e.g. the edited, re-validated
    plan) and raises ``ValueError``/``ValidationError`` to refuse it; a person is then asked again.
    """
    if not policy.needs_person(request):
        resp = policy.decide(request)
        update = validate(resp)
    else:
        while True:
            raw = interrupt(request.model_dump(mode="json"))
            try:
                resp = GateResponse.model_validate(raw)
                if resp.actor == "agent":
                    resp = agent_answer(request, resp)
                update = validate(resp)
                break
            except (ValidationError, ValueError) as exc:
                request = request.model_copy(update={"error": _short(exc)})
    decision = Decision(
        gate=request.gate,
        round=request.round,
        action=resp.action,
        actor=resp.actor,
        who=resp.who,
        reason=resp.reason or resp.instruction,
        checkpoint_id=checkpoint_id(config),
    )
    return resp, update, decision


def _short(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        e = exc.errors()[0]
        return f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}"
    return str(exc)


def gate_update(resp: GateResponse, decision: Decision, update: dict[str, Any]) -> GraphState:
    """The state update every gate returns: the outcome for routing, the decision, feedback.

    Routing reads ``last_gate``, which is the logged decision's action and nothing else: a gate
    that cannot act on an answer refuses it (``validate``) instead of acting on another."""
    if update.keys() & {"last_gate", "decisions"}:
        raise ValueError("a gate's update cannot set the routed action or the decisions itself")
    feedback = (
        resp.instruction if resp.action == "redirect" else resp.reason if resp.action == "reject" else None
    )
    out: GraphState = {"last_gate": decision.action, "decisions": [decision.model_dump()], **update}
    if feedback:
        out["feedback"] = feedback
    return out
