"""Structured output over any back end: ask, validate, send the error back, retry a bounded number of times."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from autoscope.agents.llm.base import LLM, LLMCall, Message, StructuredOutputError, schema_json
from autoscope.prompts import render

log = logging.getLogger("autoscope.agents.llm")

T = TypeVar("T", bound=BaseModel)


def extract_json(raw: str) -> str:
    """The outermost ``{...}`` of a model answer: drops code fences and prose around the object."""
    start, end = raw.find("{"), raw.rfind("}")
    if start == -1 or end < start:
        return raw.strip()
    return raw[start : end + 1]


def _path(loc: tuple) -> str:
    return ".".join(str(part) for part in loc) or "(the whole object)"


def describe_errors(err: ValidationError) -> tuple[str, list[str]]:
    """A short, model-readable list of what is wrong and the field paths concerned."""
    lines, fields = [], []
    for e in err.errors(include_url=False):
        path = _path(tuple(e.get("loc", ())))
        got = e.get("input")
        got_text = json.dumps(got, default=str)[:80] if e.get("type") != "json_invalid" else ""
        lines.append(f"- {path}: {e['msg']}" + (f" (got {got_text})" if got_text else ""))
        if path not in fields:
            fields.append(path)
    return "\n".join(lines), fields


def _report(calls: list[LLMCall], on_call: Callable[[LLMCall], None] | None) -> None:
    if on_call is not None:
        for call in calls:
            on_call(call)


def structured(
    llm: LLM,
    messages: list[Message],
    schema: type[T],
    *,
    purpose: str,
    retries: int = 2,
    on_call: Callable[[LLMCall], None] | None = None,
    example: str | None = None,
) -> T:
    """Ask ``llm`` for a ``schema`` instance; repair invalid answers at most ``retries`` times.

    After an invalid answer the conversation continues with that answer and a user message
    (``prompts/repair.j2``) carrying the validation errors. Every call is passed to ``on_call``,
    failed ones and invalid answers included (an invalid answer's call is marked ``ok=False``).
    Raises ``StructuredOutputError`` when no attempt validates, ``LLMError`` when the model
    cannot be asked at all. ``example``: a valid instance each repair message shows (for a
    prompt that asked without one, so that the model's first answer was its own). Measured
    with the embedded model: showing it only at the last repair lost a proposal to the
    fallback (a 1.5 B model at temperature 0 repeats an invalid answer given the errors alone).
    """
    conversation = [Message(role=m["role"], content=m["content"]) for m in messages]
    attempts: list[str] = []
    raw = ""
    for attempt in range(retries + 1):
        seen = len(llm.calls)
        try:
            raw = llm.complete_json(conversation, schema, purpose=purpose)
        except Exception:
            _report(llm.calls[seen:], on_call)
            raise
        try:
            result = schema.model_validate_json(extract_json(raw))
        except ValidationError as err:
            text, fields = describe_errors(err)
        else:
            _report(llm.calls[seen:], on_call)
            return result
        attempts.append(text)
        log.info(
            "%s: invalid %s answer (attempt %d of %d):\n%s",
            purpose,
            schema.__name__,
            attempt + 1,
            retries + 1,
            text,
        )
        if len(llm.calls) > seen:
            llm.calls[-1].ok = False
            llm.calls[-1].error = f"invalid {schema.__name__}: {text}"
        _report(llm.calls[seen:], on_call)
        if attempt < retries:
            conversation.append(Message(role="assistant", content=raw))
            repair = render(
                "repair",
                schema_name=schema.__name__,
                errors=text,
                fields=fields,
                # a backend that enforces the schema itself (grammar, json_schema) needs no copy of it
                schema=""
                if llm.calls and llm.calls[-1].mode in ("grammar", "json_schema")
                else json.dumps(schema_json(schema), separators=(",", ":")),
                example=example,
            )
            conversation.append(Message(role="user", content=repair))
    raise StructuredOutputError(
        f"{purpose}: {llm.backend} model {llm.model!r} gave no valid {schema.__name__} in {retries + 1} "
        f"attempt(s); last errors:\n{attempts[-1]}",
        attempts=attempts,
        raw=raw,
    )
