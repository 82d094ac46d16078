"""Back ends without a model: the deterministic planner's stand-in and a scripted model for tests."""

from __future__ import annotations

import time
from collections.abc import Callable

from pydantic import BaseModel

from autoscope.agents.llm.base import (
    LLMCall,
    LLMError,
    LLMUnavailable,
    Message,
    estimate_tokens,
    prompt_text,
    record_call,
)

ScriptEntry = str | Callable[[list[Message]], str]


class NoLLM:
    """Backend "none": no language model is asked; the deterministic planner decides and says so."""

    backend = "none"
    model = "deterministic planner (no LLM)"

    def __init__(self) -> None:
        self.calls: list[LLMCall] = []

    def complete_json(self, messages: list[Message], schema: type[BaseModel], *, purpose: str) -> str:
        raise LLMUnavailable(
            f"backend none: the deterministic planner decides; no language model is asked for {purpose!r}. "
            "Set AUTOSCOPE_LLM=local (embedded model) or AUTOSCOPE_LLM=openai (any OpenAI-compatible "
            "endpoint) to use one."
        )


class ScriptedLLM:
    """Returns scripted answers in order; a callable entry gets the messages and returns the answer."""

    backend = "scripted"

    def __init__(self, script: list[ScriptEntry], model: str = "scripted") -> None:
        self.model = model
        self.calls: list[LLMCall] = []
        self._script = list(script)
        self._next = 0

    @property
    def remaining(self) -> int:
        return len(self._script) - self._next

    def complete_json(self, messages: list[Message], schema: type[BaseModel], *, purpose: str) -> str:
        start = time.perf_counter()
        prompt_tokens = estimate_tokens(prompt_text(messages))
        if self._next >= len(self._script):
            error = (
                f"scripted LLM has no answer left for {purpose!r} "
                f"(its script had {len(self._script)} answer(s), all used)"
            )
            record_call(self, purpose, "scripted", prompt_tokens, 0, start, error)
            raise LLMError(error)
        entry = self._script[self._next]
        self._next += 1
        answer = entry(messages) if callable(entry) else entry
        record_call(self, purpose, "scripted", prompt_tokens, estimate_tokens(answer), start)
        return answer
