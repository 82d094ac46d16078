"""Test helper: kill a command with SIGKILL once its run has logged enough events."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


def log_count(events: Path, needle: str) -> int:
    """How many times ``needle`` occurs in an event log (0 before the log exists)."""
    try:
        return events.read_text().count(needle)
    except FileNotFoundError:
        return 0


def sigkill_when(cmd: list[str], events: Path, needle: str, at_least: int, timeout_s: float = 300.0) -> None:
    """Start ``cmd``, SIGKILL it as soon as ``events`` holds ``needle`` ``at_least`` times."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout_s
    while log_count(events, needle) < at_least and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the command ended before it could be killed"
