"""Test helper: ``autoscope web`` as a real process on a free loopback port, and waiting on runs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from autoscope.instruments.remote.server import free_port

TOKENS = {"alice-token-0001": "alice", "bob-token-00002": "bob"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


ALICE = bearer("alice-token-0001")
BOB = bearer("bob-token-00002")


class WebServer:
    """``autoscope web`` on ``runs_dir``; ``start`` again after ``kill`` serves the same folder."""

    def __init__(self, runs_dir: Path, log: Path) -> None:
        self.runs_dir = runs_dir
        self.log = log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 60.0) -> WebServer:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOSCOPE_")}
        tokens = ",".join(f"{t}={n}" for t, n in TOKENS.items())
        cmd = [sys.executable, "-m", "autoscope", "web", "--port", str(self.port)]
        cmd += ["--runs-dir", str(self.runs_dir), "--tokens", tokens, "--idle-exit-s", "120"]
        out = self.log.open("a")
        self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"autoscope web exited {self.proc.returncode}: {self.log.read_text()[-2000:]}"
                )
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"autoscope web did not start: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


def wait_for(
    get_state: Callable[[], dict[str, Any]], ok: Callable[[dict[str, Any]], bool], timeout_s: float = 120.0
):
    """Poll ``get_state`` until ``ok`` holds for it; the last state on timeout is in the error."""
    deadline = time.monotonic() + timeout_s
    state: dict[str, Any] = {}
    while time.monotonic() < deadline:
        state = get_state()
        if ok(state):
            return state
        time.sleep(0.2)
    raise AssertionError(
        f"timed out waiting; last state: status={state.get('status')} error={state.get('error')}"
    )


def stopped_at(gate: str) -> Callable[[dict[str, Any]], bool]:
    return lambda s: s.get("status") == "stopped" and (s.get("pending") or {}).get("gate") == gate
