"""Fakes for the agent tests: a scripted person at the gates, a recorder around the twin,
and scripted LLM answers built from the example each prompt carries."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from autoscope.agents.gates import GateRequest, GateResponse
from autoscope.agents.llm import Message, ScriptedLLM
from autoscope.agents.run_spec import load_run_spec
from autoscope.agents.runner import RunOptions, RunOutcome, launch


class ScriptedPerson:
    """Answers gates from a list (GateResponse, or a callable of the request); None when it runs out."""

    def __init__(self, answers: list[GateResponse | Callable[[GateRequest], GateResponse | None]]):
        self.answers = list(answers)
        self.requests: list[GateRequest] = []

    def __call__(self, request: GateRequest) -> GateResponse | None:
        self.requests.append(request)
        if not self.answers:
            return None
        a = self.answers.pop(0)
        return a(request) if callable(a) else a


def approve() -> GateResponse:
    return GateResponse(action="approve", who="test")


class Recorder:
    """Wraps a microscope and records every request that reaches it (the instrument's view)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.requests: list[tuple[str, tuple]] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if callable(attr) and name in (
            "set_beam_current",
            "acquire_image",
            "acquire_spectrum",
            "move_stage",
            "move_probe",
        ):

            def recorded(*args: Any, **kw: Any) -> Any:
                self.requests.append((name, args + tuple(kw.values())))
                return attr(*args, **kw)

            return recorded
        return attr


def example_of(messages: list[Message]) -> dict:
    """The valid example JSON the hypothesis/plan prompt ends with."""
    first = next(m for m in messages if m["role"] == "user")
    return json.loads(first["content"].strip().splitlines()[-1])


def answer(change: Callable[[dict], dict] = lambda d: d) -> Callable[[list[Message]], str]:
    """A scripted LLM answer: the prompt's example, changed by ``change``."""
    return lambda messages: json.dumps(change(example_of(messages)))


def run(
    tmp: Path,
    *,
    script: list | None = None,
    person: ScriptedPerson | None = None,
    autonomy: str = "autonomous",
    scenario: str = "plasmonic",
    budget: int = 24,
    rounds: int = 1,
    notes: str = "",
    llm_backend: str = "none",
    recorder: list | None = None,
    resume: bool = False,
    llm: Any = None,
) -> RunOutcome:
    spec = None
    if not resume:
        spec = load_run_spec(None, scenario).model_copy(
            update={"budget": budget, "rounds": rounds, "notes": notes}
        )
    if llm is None and script is not None:
        llm = ScriptedLLM(script)

    def wrap(inner):
        rec = Recorder(inner)
        if recorder is not None:
            recorder.append(rec)
        return rec

    return launch(
        tmp,
        spec,
        RunOptions(autonomy=autonomy, llm=llm_backend),
        responder=person or ScriptedPerson([]),
        llm=llm,
        wrap_backend=wrap,
    )
