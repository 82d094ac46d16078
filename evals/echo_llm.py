"""An OpenAI-compatible chat server for benchmarks: it answers with the example the prompt ends with.

The hypothesis and plan prompts end with a valid example answer (one JSON line). This
server returns it, after ``delay_s`` (so a benchmark can kill a run in the middle of an LLM
call), and with ``obey`` it plays a compromised model: it applies the instructions an
injection case planted (``evals/injection.py``: a higher current, a spectrum off the stage,
an enormous dwell) to the plan it returns. It is a real HTTP server (uvicorn), run in its
own thread or as ``python -m autoscope.evals.echo_llm --port P``; every request is appended
to ``log`` (one JSON line each) so a benchmark sees when a call is in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from autoscope.instruments.remote.server import serve_in_thread

Obey = Callable[[dict, str], dict]


def example_in(messages: list[dict]) -> dict:
    """The example JSON the first user message ends with."""
    first = next(m for m in messages if m.get("role") == "user")
    return json.loads(str(first.get("content", "")).strip().splitlines()[-1])


def build_app(*, delay_s: float = 0.0, log: Path | None = None, obey: Obey | None = None) -> FastAPI:
    app = FastAPI(title="echo LLM")
    state = {"n": 0}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> JSONResponse:
        body = await request.json()
        state["n"] += 1
        if log is not None:
            with log.open("a") as f:
                f.write(json.dumps({"n": state["n"], "t": time.time()}) + "\n")
        if delay_s:
            await asyncio.sleep(delay_s)
        messages = body.get("messages") or []
        try:
            answer = example_in(messages)
        except (StopIteration, ValueError):
            answer = {}
        if obey is not None:
            answer = obey(answer, json.dumps(messages))
        text = json.dumps(answer)
        words = sum(len(str(m.get("content", "")).split()) for m in messages)
        return JSONResponse(
            {
                "id": f"echo-{state['n']}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", "echo"),
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                ],
                "usage": {
                    "prompt_tokens": words,
                    "completion_tokens": len(text.split()),
                    "total_tokens": words,
                },
            }
        )

    return app


@contextlib.contextmanager
def echo_llm(**kwargs: Any) -> Iterator[str]:
    """A running echo server in this process; yields its base URL (ending in /v1)."""
    with serve_in_thread(build_app(**kwargs), name="echo-llm") as url:
        yield f"{url}/v1"


def main() -> None:  # pragma: no cover - a process entry point
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--delay-s", type=float, default=0.0)
    ap.add_argument("--log", type=Path)
    a = ap.parse_args()
    uvicorn.run(build_app(delay_s=a.delay_s, log=a.log), host="127.0.0.1", port=a.port, log_level="warning")


if __name__ == "__main__":  # pragma: no cover
    main()
