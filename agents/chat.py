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
from pathlib import Path
from typing import Any, TextIO

from autoscope.agents import session
from autoscope.agents.gates import GateRequest, GateResponse
from autoscope.agents.llm import LLM
from autoscope.instruments.errors import InvalidRequest

HELP = __doc__.split("stdin (so a script of answers can drive it):")[1].split("End of input")[0]


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
    """Answers gates from a stream of lines (a terminal or a script); see the module doc.

    The answers and questions go through ``agents/session.py``, as the web workspace's do."""

    def __init__(
        self,
        lines: TextIO,
        out: Callable[[str], None],
        run_dir: Path,
        llm: Callable[[], LLM | None],
        who: str = "scientist",
    ) -> None:
        self.lines = lines
        self.out = out
        self.run_dir = Path(run_dir)
        self.llm = llm
        self.who = who

    def read(self, prompt: str) -> str | None:
        self.out(prompt)
        line = self.lines.readline()
        if not line:
            return None
        return line.strip()

    def question(self, text: str) -> None:
        self.out(session.answer_question(self.run_dir, text, self.llm()))

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
            action = {"a": "approve", "yes": "approve", "y": "approve", "r": "reject", "no": "reject"}.get(
                word, word
            )
            try:
                if action == "edit":
                    try:
                        edited = apply_edit(request.proposal, rest)
                    except (ValueError, KeyError, IndexError) as exc:
                        self.out(f"edit not applied: {exc}")
                        continue
                    return session.respond("edit", self.who, edit=edited)
                if action in ("approve", "reject", "redirect"):
                    return session.respond(
                        action,
                        self.who,
                        reason=rest if action == "reject" else "",
                        instruction=rest if action == "redirect" else "",
                    )
            except InvalidRequest as exc:
                self.out(str(exc))
                continue
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
