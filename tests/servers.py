"""Test helper: a real instrument server process started through the CLI."""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from autoscope.evals import kills
from autoscope.instruments.remote.server import free_port


def start_server(
    log_dir: Path, *args: str, port: int | None = None, token: str | None = None
) -> tuple[subprocess.Popen, str, str]:
    """Start ``autoscope instrument serve ARGS`` on a (free) loopback port; don't wait.

    Its state (idempotency cache, acquisition ledger) is in ``log_dir/state-<port>`` unless
    ARGS name a ``--state-dir``: a restart on the same port finds it again."""
    port, token = port or free_port(), token or secrets.token_urlsafe(16)
    cmd = [sys.executable, "-m", "autoscope", "instrument", "serve", *args]
    cmd += ["--port", str(port), "--token", token, "--idle-exit-s", "60"]
    if "--state-dir" not in args:
        cmd += ["--state-dir", str(log_dir / f"state-{port}")]
    env = {**os.environ, "AUTOSCOPE_LOG_LEVEL": "WARNING"}
    # output to a file, not a pipe: a full pipe nobody reads would stall the server
    with (log_dir / f"server-{port}.log").open("wb") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    return proc, f"http://127.0.0.1:{port}", token


def wait_healthy(proc: subprocess.Popen, url: str, log_dir: Path, timeout_s: float = 60.0) -> None:
    port = url.rsplit(":", 1)[1]
    kills.wait_healthy(proc, url, log_dir / f"server-{port}.log", timeout_s)


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def instrument_server(log_dir: Path, *args: str) -> Iterator[tuple[str, str]]:
    """(url, token) of a healthy server process, stopped on exit (it also stops itself when idle)."""
    proc, url, token = start_server(log_dir, *args)
    try:
        wait_healthy(proc, url, log_dir)
        yield url, token
    finally:
        stop_server(proc)
