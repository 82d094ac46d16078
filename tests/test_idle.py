"""The idle shutdown shared by the instrument server, the web workspace and the MCP server."""

from __future__ import annotations

import time
from types import SimpleNamespace

from autoscope.instruments.remote.idle import watch_idle


def test_an_idle_server_is_stopped_and_a_busy_one_is_not():
    idle = SimpleNamespace(should_exit=False)
    watch_idle(idle, lambda: 10.0, 0.2, "idle server").join(2.0)
    assert idle.should_exit

    busy = SimpleNamespace(should_exit=False)
    state = {"busy": True}
    thread = watch_idle(busy, lambda: 10.0, 0.2, "busy server", busy=lambda: state["busy"])
    time.sleep(0.6)
    assert not busy.should_exit and thread.is_alive()  # a run still going keeps it up
    state["busy"] = False
    thread.join(2.0)
    assert busy.should_exit
