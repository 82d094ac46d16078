"""What a person does with runs, whatever the front door: the terminal chat and the web workspace.

- the runs in a runs folder, each with its status (``running``, ``killed``, ``stopped``,
  ``done``), scenario or instrument, spectra, dose and verdicts (``list_runs``, ``run_status``);
- a new run's spec from a form's or a prompt's fields (``new_spec``);
- the gate a stopped run waits at, with a key that names exactly that question (``pending_gate``):
  an answer given for another key (the run moved on, or someone answered first) is refused;
- a person's answer as the typed ``GateResponse`` (``respond``: actor ``human``, ``who`` their
  name), an edit checked field by field before the run is resumed (``edit_errors``);
- a question about the data answered by the read-only query tools, the LLM choosing the tool
  where one is configured (``route_question``, ``answer_question``).

Nothing here starts a thread or touches the instrument: ``agents/chat.py`` and ``agents/web``
drive runs with ``agents/runner.launch`` and use these for everything else.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from autoscope.agents.gates import GateRequest, GateResponse
from autoscope.agents.llm import LLM, LLMError, Message, structured
from autoscope.agents.run_spec import RunSpec, load_run_spec
from autoscope.instruments.errors import InvalidRequest
from autoscope.prompts import render
from autoscope.tools import queries
from autoscope.tools.store import EVENTS, RunStore

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
SUMMARY = "summary.json"
WRITER_OPEN = ".writer-open"  # the store's marker while a writer holds the run (left by a kill)
ACTIONS = ("approve", "edit", "reject", "redirect")


# ---------------------------------------------------------------------------- runs
def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def writer_pid(run_dir: Path) -> int | None:
    """The pid of the process writing the run, or of the one that was killed writing it."""
    try:
        return int((Path(run_dir) / WRITER_OPEN).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def run_status(run_dir: Path) -> str:
    """``running`` (a live process writes it), ``killed`` (its writer died: resume it), else the
    status its last stop wrote (``stopped`` at a gate, ``done``); ``new`` before anything ran."""
    run_dir = Path(run_dir)
    pid = writer_pid(run_dir)
    if pid is not None:
        return "running" if _pid_alive(pid) else "killed"
    summ = _read_json(run_dir / SUMMARY)
    if summ is None:
        return "killed" if (run_dir / EVENTS).exists() else "new"
    return str(summ.get("status") or "stopped")


def run_row(run_dir: Path) -> dict[str, Any]:
    """One line of the runs page: status, scenario or instrument, spectra, dose, verdicts."""
    run_dir = Path(run_dir)
    record = _read_json(run_dir / RUN_FILE) or {}
    spec = record.get("spec") or {}
    summ = _read_json(run_dir / SUMMARY) or {}
    status = run_status(run_dir)
    instrument = record.get("remote") or record.get("replay") or record.get("backend") or "twin"
    row = {
        "name": run_dir.name,
        "status": status,
        "scenario": spec.get("scenario"),
        "instrument": instrument,
        "goal": spec.get("goal", ""),
        "autonomy": record.get("autonomy"),
        "llm": record.get("llm"),
        "budget": spec.get("budget"),
        "rounds": spec.get("rounds"),
        "spectra": summ.get("measurements", 0),
        "dose_e": summ.get("dose_e", 0.0),
        "dose_e_per_A2": summ.get("dose_e_per_A2"),
        "verdicts": [
            {"id": h["id"], "verdict": h["verdict"], "statement": h["statement"]}
            for h in summ.get("hypotheses", [])
        ],
        "pending_gate": (summ.get("pending_gate") or {}).get("gate") if status == "stopped" else None,
        "modified": (run_dir / EVENTS).stat().st_mtime if (run_dir / EVENTS).exists() else 0.0,
    }
    if status in ("running", "killed") and (run_dir / EVENTS).exists():
        acq = RunStore.open(run_dir, read_only=True).events("acquisition")
        row["spectra"] = sum(1 for e in acq if e.get("record") == "spectrum")
        row["dose_e"] = sum(float(e.get("dose_e", 0.0)) for e in acq)
    return row


def list_runs(runs_dir: Path) -> list[dict[str, Any]]:
    """Every run in ``runs_dir`` (a folder with a ``run.json``), the latest first."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    rows = []
    for d in runs_dir.iterdir():
        if (d / RUN_FILE).exists():
            try:
                rows.append(run_row(d))
            except Exception as exc:  # one unreadable run does not hide the others
                log.warning("run %s cannot be read: %s", d, exc)
    return sorted(rows, key=lambda r: r["modified"], reverse=True)


def new_spec(
    *,
    scenario: str | None = None,
    campaign_file: Path | None = None,
    goal: str = "",
    notes: str = "",
    budget: int | None = None,
    rounds: int | None = None,
) -> RunSpec:
    """A run's spec from the scenario (or a run file) and a person's fields; ``ConfigError`` /
    ``ValidationError`` name the field that is wrong."""
    spec = load_run_spec(campaign_file, scenario)
    changes: dict[str, Any] = {"budget": budget, "rounds": rounds, "notes": notes or None}
    fields = {**spec.model_dump(), **{k: v for k, v in changes.items() if v is not None}}
    if goal and goal.strip():
        fields["goal"] = goal.strip()
    return RunSpec.model_validate(fields)


# ---------------------------------------------------------------------------- gates
@dataclass
class PendingGate:
    """The question a stopped run waits on, and the key that names exactly this question."""

    request: GateRequest
    key: str
    checkpoint_id: str | None

    def as_json(self) -> dict[str, Any]:
        return {**self.request.model_dump(mode="json"), "key": self.key, "checkpoint_id": self.checkpoint_id}


def _checkpoint_id(run_dir: Path, run_id: str) -> str | None:
    from autoscope.agents.runner import open_checkpointer
    from autoscope.agents.settings import load_settings

    if not (run_dir / "checkpoints.sqlite").exists() and not load_settings().checkpoint_url:
        return None
    with open_checkpointer(run_dir, load_settings().checkpoint_url) as saver:
        tup = saver.get_tuple({"configurable": {"thread_id": run_id}})
        return tup.config["configurable"].get("checkpoint_id") if tup else None


def gate_key(request: GateRequest, checkpoint_id: str | None, starts: int) -> str:
    """Gate, round, checkpoint and how often the run was (re)started: an answer moves all of them."""
    text = json.dumps([request.gate, request.round, checkpoint_id, starts, request.error], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def pending_gate(run_dir: Path) -> PendingGate | None:
    """The gate the run in ``run_dir`` is stopped at (None when it is not stopped at one)."""
    run_dir = Path(run_dir)
    if run_status(run_dir) != "stopped":
        return None
    summ = _read_json(run_dir / SUMMARY) or {}
    if not summ.get("pending_gate"):
        return None
    request = GateRequest.model_validate(summ["pending_gate"])
    record = _read_json(run_dir / RUN_FILE) or {}
    cid = _checkpoint_id(run_dir, record.get("run_id", "")) if record.get("run_id") else None
    starts = len(RunStore.open(run_dir, read_only=True).events(("run_started", "run_resumed")))
    return PendingGate(request=request, key=gate_key(request, cid, starts), checkpoint_id=cid)


def respond(
    action: str,
    who: str,
    *,
    edit: dict[str, Any] | None = None,
    reason: str = "",
    instruction: str = "",
) -> GateResponse:
    """A person's answer at a gate; ``InvalidRequest`` names what is missing."""
    if action not in ACTIONS:
        raise InvalidRequest("action", f"{action!r}: choose {', '.join(ACTIONS)}")
    if action == "redirect" and not instruction.strip():
        raise InvalidRequest("instruction", "redirect needs an instruction")
    if action == "edit" and not edit:
        raise InvalidRequest("edit", "edit needs the modified proposal")
    if action == "reject" and not reason.strip():
        reason = "rejected"
    return GateResponse(
        action=action, edit=edit, reason=reason, instruction=instruction, actor="human", who=who
    )


def field_path(loc: tuple | list, value: Any) -> str:
    """A pydantic error's location as a dotted path into ``value``: the tags a union adds to it
    (``steps.1.audit.per_class``) are left out where ``value`` has no such key (``steps.1.per_class``)."""
    out, here = [], value
    for part in loc:
        if (
            isinstance(here, dict)
            and part in here
            or isinstance(here, list)
            and isinstance(part, int)
            and 0 <= part < len(here)
        ):
            here = here[part]
        elif isinstance(part, str) and isinstance(here, dict | list):
            continue  # a union's tag, or a model validator's name
        else:
            here = None
        out.append(str(part))
    return ".".join(out)


def edit_schema(gate: str) -> dict[str, Any]:
    """The JSON schema of what an edit at ``gate`` changes (a plan at the plan and intervention
    gates, a hypothesis, a verdict): the web workspace's edit form is generated from it."""
    from autoscope.tools.plan import Hypothesis, plan_schema
    from autoscope.tools.verdicts import Verdict

    if gate in ("plan", "intervention"):
        return plan_schema()
    if gate == "hypothesis":
        return Hypothesis.model_json_schema()
    if gate == "analysis":
        return Verdict.model_json_schema()
    raise InvalidRequest("gate", f"{gate!r}: choose hypothesis, plan, intervention or analysis")


def edit_errors(gate: str, proposal: dict[str, Any], edit: dict[str, Any]) -> dict[str, str]:
    """Field path → message for an edit the proposal's own model refuses (empty: it validates).
    ``proposal``: what the edit changes (at an intervention gate, the round's plan).

    The run checks an accepted edit again against the instrument and the survey (and refuses it
    at the gate naming the field); this catches what the model alone can tell, before the run
    is resumed."""
    from autoscope.tools.plan import Hypothesis, Plan
    from autoscope.tools.verdicts import Verdict

    model: type[BaseModel] | None = {
        "hypothesis": Hypothesis,
        "plan": Plan,
        "intervention": Plan,
        "analysis": Verdict,
    }.get(gate)
    if model is None:
        return {}
    try:
        merged = {**proposal, **edit}
        model.model_validate(merged)
    except ValidationError as exc:
        out: dict[str, str] = {}
        for e in exc.errors():
            out.setdefault(field_path(e["loc"], merged) or "value", e["msg"])
        return out
    return {}


def error_field(error: str | None) -> dict[str, str]:
    """A gate's refusal ("steps.2.per_class: Input should be …") as field path → message."""
    if not error:
        return {}
    head, sep, msg = error.partition(": ")
    if sep and re.fullmatch(r"[\w.\[\]-]+", head):
        return {head: msg}
    return {"value": error}


# ---------------------------------------------------------------------------- questions
class Question(BaseModel):
    """Which read-only tool answers a question (what the LLM fills in)."""

    tool: str = Field(description="one of: " + ", ".join(queries.TOOLS))
    x_nm: float | None = None
    y_nm: float | None = None
    n: int = 5


_KEYWORDS = (
    ("verdict", "verdicts"),
    ("safety", "safety"),
    ("limit", "safety"),
    ("best", "best"),
    ("strongest", "best"),
    ("highest", "best"),
    ("near", "nearest"),
    ("at (", "nearest"),
)


def route_question(text: str, llm: LLM | None) -> Question:
    """The tool for a question: the LLM chooses when there is one; else keywords decide."""
    if llm is not None and llm.backend != "none":
        try:
            prompt = render("question", question=text, tools={k: v[1] for k, v in queries.TOOLS.items()})
            return structured(llm, [Message(role="user", content=prompt)], Question, purpose="chat question")
        except LLMError:
            pass
    low = text.lower()
    nums = [float(v) for v in re.findall(r"-?\d+(?:\.\d+)?", text)]
    for word, tool in _KEYWORDS:
        if word in low:
            if tool == "nearest" and len(nums) >= 2:
                return Question(tool=tool, x_nm=nums[0], y_nm=nums[1])
            return Question(tool=tool)
    return Question(tool="measurements")


def answer_question(run_dir: Path, text: str, llm: LLM | None) -> str:
    """The answer to a question about the run's data, from its store (read-only)."""
    run_dir = Path(run_dir)
    if not (run_dir / EVENTS).exists():
        return "No data yet."
    store = RunStore.open(run_dir, read_only=True)
    q = route_question(text, llm)
    return queries.answer(store, q.tool, x_nm=q.x_nm, y_nm=q.y_nm, n=q.n)
