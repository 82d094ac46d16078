"""Test helper: a real OpenAI-compatible HTTP server on loopback with canned answers.

It rejects a ``response_format`` above its capability with HTTP 400, as servers that do
not support JSON schemas (or JSON mode) do, and records every request it got.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from autoscope.instruments.remote.server import serve_in_thread

LEVELS = {"prompt": 0, "json_object": 1, "json_schema": 2}


def _words(text: str) -> int:
    return len(text.split())


class FakeOpenAI:
    """State of one fake server: capability, canned answers, recorded requests, reported usage."""

    def __init__(self, capability: str, answers: list[str], api_key: str | None = None) -> None:
        if capability not in LEVELS:
            raise ValueError(f"capability is one of {list(LEVELS)}")
        self.capability = capability
        self.answers = deque(answers)
        self.api_key = api_key
        #: JSON bodies of every chat completion request, rejected ones included
        self.requests: list[dict[str, Any]] = []
        #: (prompt_tokens, completion_tokens) of every answered request
        self.usage: list[tuple[int, int]] = []
        self.url = ""
        self.app = self._build()

    def requested_formats(self) -> list[str]:
        return [(r.get("response_format") or {}).get("type", "none") for r in self.requests]

    def _build(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> JSONResponse:
            body = await request.json()
            self.requests.append(body)
            if self.api_key is not None and request.headers.get("authorization") != f"Bearer {self.api_key}":
                return _error(401, "Incorrect API key provided", "invalid_api_key")
            kind = (body.get("response_format") or {}).get("type", "prompt")
            if kind == "text":
                kind = "prompt"
            if LEVELS.get(kind, 99) > LEVELS[self.capability]:
                return _error(400, f"response_format type {kind!r} is not supported by this server", None)
            if not self.answers:
                return _error(500, "fake server has no canned answer left", None)
            answer = self.answers.popleft()
            prompt_tokens = sum(_words(m.get("content") or "") for m in body["messages"])
            completion_tokens = _words(answer)
            self.usage.append((prompt_tokens, completion_tokens))
            return JSONResponse(
                {
                    "id": f"chatcmpl-{len(self.requests)}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body.get("model", "fake"),
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": answer},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": completion_tokens,
                        "total_tokens": prompt_tokens + completion_tokens,
                    },
                }
            )

        return app


def _error(status: int, message: str, code: str | None) -> JSONResponse:
    payload = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
    return JSONResponse(payload, status_code=status)


@contextlib.contextmanager
def fake_openai(
    capability: str = "json_schema", answers: list[str] | None = None, **kwargs: Any
) -> Iterator[FakeOpenAI]:
    """A running fake server (``.url`` ends in /v1), stopped on exit."""
    fake = FakeOpenAI(capability, answers or [], **kwargs)
    with serve_in_thread(fake.app, name="fake-openai") as url:
        fake.url = f"{url}/v1"
        yield fake
