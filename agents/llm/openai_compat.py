"""Any OpenAI-compatible endpoint (OpenAI, vLLM, Ollama, llama.cpp server, LM Studio).

The first call probes what the server enforces: a JSON schema, a JSON object, or neither
(the schema then travels in the prompt and ``structured`` validates and repairs). The
result is cached on the client and logged.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from pydantic import BaseModel

from autoscope.agents.llm.base import (
    LLMCall,
    LLMError,
    LLMUnavailable,
    Message,
    estimate_tokens,
    prompt_text,
    record_call,
    schema_json,
    with_schema_instruction,
)

log = logging.getLogger("autoscope.agents.llm")

#: strongest first; the probe walks down until the server accepts one
MODES = ("json_schema", "json_object", "prompt")
#: statuses with which servers reject a request they cannot serve (an unsupported response_format)
_REJECTED = (400, 422)


class OpenAILLM:
    backend = "openai"

    def __init__(
        self,
        base_url: str | None,
        api_key: str | None,
        model: str,
        timeout_s: float = 120.0,
        max_tokens: int = 1024,
        *,
        max_retries: int = 2,
        temperature: float = 0.0,
    ) -> None:
        if not base_url:
            raise LLMUnavailable(
                "backend openai needs an endpoint: set AUTOSCOPE_OPENAI_BASE_URL (for example "
                "http://127.0.0.1:8000/v1 for a vLLM or llama.cpp server) or use AUTOSCOPE_LLM=local"
            )
        if not api_key:
            raise LLMUnavailable(
                "backend openai needs a key: set AUTOSCOPE_OPENAI_API_KEY (any non-empty value for a "
                "local server that does not check keys)"
            )
        try:
            import openai
        except ImportError as exc:
            raise LLMUnavailable("backend openai needs the OpenAI SDK: pip install openai") from exc
        self._openai = openai
        self.base_url = base_url
        self.model = model
        self.timeout_s = timeout_s
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.calls: list[LLMCall] = []
        #: the response_format mode the server accepted; None until the first successful call
        self.mode: str | None = None
        self._client = openai.OpenAI(
            base_url=base_url, api_key=api_key, timeout=timeout_s, max_retries=max_retries
        )

    def complete_json(self, messages: list[Message], schema: type[BaseModel], *, purpose: str) -> str:
        modes = (self.mode,) if self.mode else MODES
        last: Exception | None = None
        for mode in modes:
            try:
                text = self._ask(mode, messages, schema, purpose)
            except self._openai.APIStatusError as exc:
                if exc.status_code not in _REJECTED or self.mode:
                    raise self._status_error(exc) from exc
                last = exc
                log.info(
                    "%s rejected response_format %s (HTTP %d: %s); trying the next mode",
                    self.base_url,
                    mode,
                    exc.status_code,
                    _message(exc),
                )
                continue
            if self.mode is None:
                self.mode = mode
                log.info("%s (%s) accepts structured output mode %s", self.base_url, self.model, mode)
            return text
        assert last is not None
        raise LLMError(
            f"{self.base_url} rejected every request mode ({', '.join(MODES)}) for model {self.model!r}; "
            f"last answer: {_message(last)}"
        ) from last

    # ---- one request

    def _ask(self, mode: str, messages: list[Message], schema: type[BaseModel], purpose: str) -> str:
        kwargs: dict[str, Any] = {}
        if mode == "json_schema":
            sent = list(messages)
            kwargs["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": _schema_name(schema), "schema": schema_json(schema), "strict": False},
            }
        else:
            sent = with_schema_instruction(messages, schema)
            if mode == "json_object":
                kwargs["response_format"] = {"type": "json_object"}
        start = time.perf_counter()
        prompt_estimate = estimate_tokens(prompt_text(sent))
        try:
            response = self._client.chat.completions.create(
                model=self.model,
                messages=sent,
                max_tokens=self.max_tokens,
                temperature=self.temperature,
                **kwargs,
            )
        except self._openai.APITimeoutError as exc:
            record_call(self, purpose, mode, 0, 0, start, f"timeout after {self.timeout_s} s")
            raise LLMError(
                f"{self.base_url} did not answer within {self.timeout_s} s (AUTOSCOPE_LLM_TIMEOUT_S)"
            ) from exc
        except self._openai.APIConnectionError as exc:
            record_call(self, purpose, mode, 0, 0, start, f"cannot connect: {exc}")
            raise LLMError(
                f"cannot reach the OpenAI-compatible endpoint at {self.base_url} ({exc}); check "
                "AUTOSCOPE_OPENAI_BASE_URL and that the server is running"
            ) from exc
        except self._openai.APIStatusError as exc:
            record_call(self, purpose, mode, 0, 0, start, f"HTTP {exc.status_code}: {_message(exc)}")
            raise
        choice = response.choices[0] if response.choices else None
        text = (choice.message.content if choice is not None else None) or ""
        if choice is not None and choice.finish_reason == "length":
            log.warning(
                "%s: answer cut at max_tokens=%d (AUTOSCOPE_LLM_MAX_TOKENS)", purpose, self.max_tokens
            )
        used = response.usage
        prompt_tokens = used.prompt_tokens if used and used.prompt_tokens is not None else prompt_estimate
        completion = (
            used.completion_tokens if used and used.completion_tokens is not None else estimate_tokens(text)
        )
        record_call(self, purpose, mode, prompt_tokens, completion, start, None)
        return text

    def _status_error(self, exc: Any) -> LLMError:
        status = exc.status_code
        hint = {
            401: "check AUTOSCOPE_OPENAI_API_KEY",
            403: "check AUTOSCOPE_OPENAI_API_KEY and its permissions",
            404: f"check AUTOSCOPE_OPENAI_BASE_URL (usually ends in /v1) and AUTOSCOPE_OPENAI_MODEL={self.model!r}",
            429: "the server is rate limiting; wait or lower the request rate",
        }.get(status, "see the server's log")
        return LLMError(f"{self.base_url} answered HTTP {status}: {_message(exc)} ({hint})")


def _schema_name(schema: type[BaseModel]) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", schema.__name__)[:64] or "answer"


def _message(exc: Exception) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
        if isinstance(inner, str):
            return inner
    return str(getattr(exc, "message", None) or exc)
