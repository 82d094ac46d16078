"""Graph state: small, JSON-able, references into the run store instead of arrays.

``InputState`` is what a caller passes to start a run; ``GraphState`` is everything the
nodes share. Lists that nodes append to carry an ``operator.add`` reducer, so a node
returns only its new items. Hypotheses, plans, dry runs, results and verdicts are the
``model_dump`` of their pydantic types (``tools/plan.py``, ``tools/plan_engine.py``,
``agents/nodes/analyze.py``); gates exchange ``GateRequest``/``GateResponse``.
"""

from __future__ import annotations

import operator
from typing import Annotated, Literal, TypedDict

Status = Literal["running", "done", "stopped"]
GateAction = Literal["approve", "edit", "reject", "redirect"]


class InputState(TypedDict, total=False):
    goal: str
    notes: str


class GraphState(InputState, total=False):
    #: survey reference: step ids, field, pixel size, dose, the survey map (file name, summary, classes)
    survey: dict
    #: the run's bounds from its campaign file, so routing is a pure function of the state
    max_rounds: int
    budget: int
    #: hypotheses proposed so far (also the id of the current one: H<round>)
    round: int
    hypothesis: dict | None
    plan: dict | None
    plan_attempts: int
    dry_run: dict | None
    result: dict | None
    verdict: dict | None
    #: a person's reason or instruction, for the next proposal (cleared once used)
    feedback: str | None
    #: outcome of the last gate, read by the routing functions
    last_gate: GateAction | None
    #: monitor kinds a person let continue in the current round
    acknowledged: list[str]
    #: spectra spent by finished rounds
    spent_spectra: int
    rounds: Annotated[list[dict], operator.add]
    decisions: Annotated[list[dict], operator.add]
    fallbacks: Annotated[list[dict], operator.add]
    status: Status
    stop_reason: str | None
