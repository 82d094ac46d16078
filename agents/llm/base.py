"""The shared LLM interface: messages, call records, errors and usage accounting."""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from typing import Literal, Protocol, TypedDict, runtime_checkable

from pydantic import BaseModel


class Message(TypedDict):
    role: Literal["system", "user", "assistant"]
    content: str


@dataclass
class LLMCall:
    """One request to a model: what for, which back end, how, what it cost."""

    purpose: str
    backend: str
    model: str
    #: "json_schema" | "json_object" | "prompt" | "grammar" | "scripted"
    mode: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    ok: bool
    error: str | None = None

    def as_event(self) -> dict:
        event = dataclasses.asdict(self)
        event["latency_s"] = round(self.latency_s, 4)
        event["tokens"] = self.prompt_tokens + self.completion_tokens
        return event


class LLMError(RuntimeError):
    """The model could not be asked (transport or back-end failure); the message says what to check."""


class LLMUnavailable(LLMError):
    """No model is available with this configuration; the message names the fix."""


class StructuredOutputError(LLMError):
    """Every attempt, repairs included, gave an answer that does not validate."""

    def __init__(self, message: str, attempts: list[str], raw: str) -> None:
        super().__init__(message)
        #: the validation error of each attempt, in order
        self.attempts = attempts
        #: the last raw text the model produced
        self.raw = raw


@runtime_checkable
class LLM(Protocol):
    #: "openai" | "local" | "none" | "scripted"
    backend: str
    #: human-readable model name
    model: str
    calls: list[LLMCall]
    # optional ``enforces_schema: bool`` (read with getattr, False when absent): the back end
    # can only emit JSON of the schema's shape (a grammar), so prompts need no example for it

    def complete_json(self, messages: list[Message], schema: type[BaseModel], *, purpose: str) -> str:
        """One call; the raw text the model produced (meant to be JSON for ``schema``). Appends an LLMCall."""
        ...


def estimate_tokens(text: str) -> int:
    """A rough token count (whitespace-separated words) when a back end reports none."""
    return len(text.split())


def prompt_text(messages: list[Message]) -> str:
    return "\n".join(m["content"] for m in messages)


def usage(llm: LLM) -> dict:
    """Totals over every call the client made, failed ones included."""
    prompt = sum(c.prompt_tokens for c in llm.calls)
    completion = sum(c.completion_tokens for c in llm.calls)
    return {
        "backend": llm.backend,
        "model": llm.model,
        "calls": len(llm.calls),
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "tokens": prompt + completion,
        "latency_s": round(sum(c.latency_s for c in llm.calls), 4),
    }


def schema_json(schema: type[BaseModel]) -> dict:
    return schema.model_json_schema()


def with_schema_instruction(messages: list[Message], schema: type[BaseModel]) -> list[Message]:
    """A copy of ``messages`` whose system message asks for one JSON object conforming to ``schema``.

    For servers that cannot enforce a schema themselves; the answer is still validated.
    """
    instruction = (
        "Answer with one JSON object and nothing else (no prose, no code fences). "
        f"It must conform to this JSON schema:\n{json.dumps(schema_json(schema), separators=(',', ':'))}"
    )
    out = [Message(role=m["role"], content=m["content"]) for m in messages]
    if out and out[0]["role"] == "system":
        out[0]["content"] = f"{out[0]['content']}\n\n{instruction}"
    else:
        out.insert(0, Message(role="system", content=instruction))
    return out


def record_call(
    llm: LLM,
    purpose: str,
    mode: str,
    prompt_tokens: int,
    completion_tokens: int,
    start: float,
    error: str | None = None,
) -> LLMCall:
    """Append the accounting of one call (latency since ``start``, a ``perf_counter`` reading) to ``llm.calls``."""
    call = LLMCall(
        purpose=purpose,
        backend=llm.backend,
        model=llm.model,
        mode=mode,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        latency_s=time.perf_counter() - start,
        ok=error is None,
        error=error,
    )
    llm.calls.append(call)
    return call
