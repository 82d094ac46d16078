"""The idle shutdown every loopback server here shares (the instrument server, ``autoscope web``,
``autoscope mcp``): a watcher thread that stops a uvicorn server once no request came for
``--idle-exit-s`` (tests start servers that stop by themselves)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


def watch_idle(
    server: Any,
    idle_s: Callable[[], float],
    idle_exit_s: float,
    what: str,
    *,
    busy: Callable[[], bool] | None = None,
) -> threading.Thread:
    """Start a daemon thread that sets ``server.should_exit`` once ``idle_s()`` (seconds since the
    last request) reaches ``idle_exit_s``; while ``busy()`` is true the server is not idle."""

    def watch() -> None:
        last_busy = time.monotonic()
        while not server.should_exit:
            if busy is not None and busy():
                last_busy = time.monotonic()
            idle = min(idle_s(), time.monotonic() - last_busy)
            if idle >= idle_exit_s:
                log.info("no request for %.1f s: shutting %s down", idle, what)
                server.should_exit = True
                return
            time.sleep(min(0.25, max(idle_exit_s - idle, 0.01)))

    thread = threading.Thread(target=watch, name=f"{what}-idle-exit".replace(" ", "-"), daemon=True)
    thread.start()
    return thread
