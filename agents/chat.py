"""``autoscope chat``: a scientist converses with the planner in the terminal.

The scientist states a goal, sees each proposal with its dry-run figures and answers
at the gates. Driven line by line from stdin (so a script of answers can drive it):

    approve | a                       accept the proposal
    edit FIELD=VALUE ...              change fields (dotted paths, or a bare field name
                                      found anywhere in the proposal), validated again
    edit {JSON}                       replace fields with a JSON object
    reject REASON                     refuse, with a reason for the agents
    redirect INSTRUCTION              a new instruction for the next hypothesis
    show                              the whole proposal as JSON
    ? QUESTION                        a question about the data (read-only tools)
    help

End of input at a gate stops the run there (``autoscope resume`` continues it).
Ctrl-C during a scan ends the scan after the current spectrum; the round is analysed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, TextIO

from pydantic import BaseModel, Field

from autoscope.agents.gates import GateRequest, GateResponse
from autoscope.agents.llm import LLM, LLMError, Message, structured
from autoscope.prompts import render
from autoscope.tools import queries
from autoscope.tools.store import RunStore

HELP = __doc__.split("stdin (so a script of answers can drive it):")[1].split("End of input")[0]


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


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _find(obj: Any, key: str) -> tuple[Any, str | int] | None:
    """The container holding ``key`` (depth first), for a bare field name."""
    if isinstance(obj, dict):
        if key in obj:
            return obj, key
        children = obj.values()
    elif isinstance(obj, list):
        children = obj
    else:
        return None
    for child in children:
        hit = _find(child, key)
        if hit is not None:
            return hit
    return None


def apply_edit(proposal: dict, text: str) -> dict:
    """The proposal with ``FIELD=VALUE`` pairs (or a JSON object) applied; raises ValueError."""
    text = text.strip()
    if text.startswith("{"):
        changes = json.loads(text)
        if not isinstance(changes, dict):
            raise ValueError("edit JSON must be an object")
        return {**proposal, **changes}
    edited = json.loads(json.dumps(proposal))
    pairs = re.findall(r"([\w.]+)=(\S+)", text)
    if not pairs:
        raise ValueError("write edit FIELD=VALUE (e.g. edit budget=40) or edit {JSON}")
    for path, raw in pairs:
        parts = path.split(".")
        if len(parts) == 1:
            hit = _find(edited, parts[0])
            if hit is None:
                raise ValueError(f"no field {parts[0]!r} in the proposal")
            container, key = hit
        else:
            container = edited
            for p in parts[:-1]:
                container = container[int(p)] if isinstance(container, list) else container[p]
            key = int(parts[-1]) if isinstance(container, list) else parts[-1]
        container[key] = _parse_value(raw)
    return edited


class ChatResponder:
    """Answers gates from a stream of lines (a terminal or a script); see the module doc."""

    def __init__(
        self,
        lines: TextIO,
        out: Callable[[str], None],
        store: Callable[[], RunStore | None],
        llm: Callable[[], LLM | None],
        who: str = "scientist",
    ) -> None:
        self.lines = lines
        self.out = out
        self.store = store
        self.llm = llm
        self.who = who

    def read(self, prompt: str) -> str | None:
        self.out(prompt)
        line = self.lines.readline()
        if not line:
            return None
        return line.strip()

    def question(self, text: str) -> None:
        store = self.store()
        if store is None:
            self.out("No data yet.")
            return
        q = route_question(text, self.llm())
        self.out(queries.answer(store, q.tool, x_nm=q.x_nm, y_nm=q.y_nm, n=q.n))

    def __call__(self, request: GateRequest) -> GateResponse | None:
        self.out("\n" + request.text())
        self.out(_brief(request))
        while True:
            line = self.read(f"{request.gate}> ")
            if line is None:
                self.out("(end of input: the run stops at this gate; `autoscope resume` continues it)")
                return None
            if not line:
                continue
            word, _, rest = line.partition(" ")
            word = word.lower()
            if word in ("approve", "a", "yes", "y"):
                return GateResponse(action="approve", actor="human", who=self.who)
            if word in ("reject", "r", "no"):
                return GateResponse(action="reject", reason=rest or "rejected", actor="human", who=self.who)
            if word == "redirect":
                if not rest:
                    self.out("redirect needs an instruction")
                    continue
                return GateResponse(action="redirect", instruction=rest, actor="human", who=self.who)
            if word == "edit":
                try:
                    edited = apply_edit(request.proposal, rest)
                except (ValueError, KeyError, IndexError) as exc:
                    self.out(f"edit not applied: {exc}")
                    continue
                return GateResponse(action="edit", edit=edited, actor="human", who=self.who)
            if word == "show":
                self.out(json.dumps(request.proposal, indent=2))
                continue
            if word.startswith("?"):
                self.question((word[1:] + " " + rest).strip())
                continue
            self.out(HELP)


def _brief(request: GateRequest) -> str:
    p = request.proposal
    if request.gate == "hypothesis":
        return f"  signal: {p['signal']}\n  expected: {p['expected']}\n  refuted if: {p['refuted_if']}"
    if request.gate == "plan":
        return f"  rationale: {p.get('rationale', '')}"
    return ""
