"""The runs of the web workspace: each one executes in a thread of the server via ``runner.launch``.

A run goes until it is done or a gate needs a person; the headless responder stops it there
(status ``stopped``, the request in its summary) and the thread ends. An answer resumes it from
its checkpoint exactly as ``autoscope resume --answer`` does: ``launch(run_dir, None, options,
responder=<the answer, once>)``. One lock per run makes one answer win: an answer whose key is
not the pending gate's (someone answered first, the run moved on) is refused with who answered.

A run the server drives carries ``WEB_MARKER`` in its directory. When the server starts, such a
run whose writer died (the server was killed) is resumed from its checkpoint in the background;
the run store reads back every stored step, so nothing is acquired twice.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from autoscope.agents import session
from autoscope.agents.gates import GateRequest, GateResponse
from autoscope.agents.llm.base import LLMUnavailable
from autoscope.agents.run_spec import RunSpec
from autoscope.agents.runner import RunOptions, launch
from autoscope.instruments.errors import ConfigError, InstrumentError
from autoscope.tools.store import RunStore

log = logging.getLogger(__name__)

WEB_MARKER = ".web-driven"


class GateConflict(Exception):
    """The gate was answered already (or the run is no longer waiting there)."""


class StartFailed(Exception):
    """A new run failed before it wrote anything (its message says why)."""


class Once:
    """A responder that gives one answer, at the gate and round it was given for, then nobody is
    there (the run stops at its next gate). At any other gate it answers nothing: an answer is
    never carried to a question it was not given to."""

    def __init__(self, answer: GateResponse | None, gate: str, round_: int) -> None:
        self.answer, self.gate, self.round = answer, gate, round_

    def __call__(self, request: GateRequest) -> GateResponse | None:
        answer, self.answer = self.answer, None
        if answer is not None and (request.gate, request.round) != (self.gate, self.round):
            log.warning(
                "an answer for the %s gate (round %d) reached the %s gate (round %d): not used",
                self.gate,
                self.round,
                request.gate,
                request.round,
            )
            return None
        return answer


class RunManager:
    """Starts, resumes and answers the runs in ``runs_dir``; one thread per running run."""

    def __init__(self, runs_dir: Path, launcher: Callable[..., Any] = launch) -> None:
        self.runs_dir = Path(runs_dir)
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self._launch = launcher
        self._threads: dict[str, threading.Thread] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._answered: dict[str, str] = {}  # gate key -> who answered it (this process)
        self.errors: dict[str, str] = {}  # run name -> why its last thread failed
        #: a remote instrument's token given in the form (never written to disk; after a restart
        #: the setting AUTOSCOPE_TOKEN serves)
        self._remote_tokens: dict[str, str] = {}

    # ------------------------------------------------------------------ helpers
    def run_dir(self, name: str) -> Path:
        d = (self.runs_dir / name).resolve()
        if d.parent != self.runs_dir.resolve() or not (d / session.RUN_FILE).exists():
            raise KeyError(name)
        return d

    def _lock(self, name: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(name, threading.Lock())

    def is_running(self, name: str) -> bool:
        t = self._threads.get(name)
        return t is not None and t.is_alive()

    def status(self, name: str) -> str:
        """``running`` while its thread runs; ``failed`` when its last thread raised (the page
        shows why; resume continues from the checkpoint); else what the run directory says."""
        if self.is_running(name):
            return "running"
        if name in self.errors:
            return "failed"
        return session.run_status(self.runs_dir / name)

    def _options(self, name: str) -> RunOptions:
        return RunOptions(token=self._remote_tokens.get(name))

    def _spawn(self, name: str, target: Callable[[], Any]) -> None:
        def body() -> None:
            try:
                outcome = target()
                self.errors.pop(name, None)
                log.info("web run %s: %s", name, outcome.status)
            except (ConfigError, InstrumentError, LLMUnavailable) as exc:  # a person can act on these
                log.error("web run %s: %s", name, exc)
                self.errors[name] = f"{type(exc).__name__}: {exc}"
            except Exception as exc:  # shown on the run's page; the run resumes from its checkpoint
                log.exception("web run %s failed", name)
                self.errors[name] = f"{type(exc).__name__}: {exc}"

        t = threading.Thread(target=body, name=f"run-{name}", daemon=True)
        self._threads[name] = t
        t.start()

    # ------------------------------------------------------------------ actions
    def start(self, spec: RunSpec, options: RunOptions, who: str) -> str:
        """A new run in the runs folder, started in the background; returns its name."""
        name = f"web-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
        run_dir = self.runs_dir / name
        run_dir.mkdir(parents=True)
        (run_dir / WEB_MARKER).write_text(f"started by {who}\n")
        if options.token:
            self._remote_tokens[name] = options.token
        ready = threading.Event()

        def target():
            try:
                return self._launch(run_dir, spec, options, on_status=lambda _t: ready.set())
            finally:
                ready.set()

        with self._lock(name):
            self._spawn(name, target)
        # the run file is written before the instrument opens: the page can show the run at once
        deadline = time.monotonic() + 30
        while not (run_dir / session.RUN_FILE).exists() and time.monotonic() < deadline:
            if ready.wait(0.05):
                break
        if not (run_dir / session.RUN_FILE).exists():
            self._threads[name].join(5)
            if name in self.errors:  # refused before anything was written (an LLM backend not set up…)
                why = self.errors.pop(name)
                shutil.rmtree(run_dir, ignore_errors=True)
                raise StartFailed(why)
        log.info("web run %s started by %s", name, who)
        return name

    def resume(self, name: str, who: str) -> None:
        """Resume a killed (or stopped) run from its checkpoint, without an answer."""
        run_dir = self.run_dir(name)
        with self._lock(name):
            status = self.status(name)
            if status == "running":
                raise GateConflict(f"run {name} is running already")
            if status == "done":
                raise GateConflict(f"run {name} is done; there is nothing to resume")
            (run_dir / WEB_MARKER).write_text(f"resumed by {who}\n")
            self._spawn(name, lambda: self._launch(run_dir, None, self._options(name)))

    def answer(self, name: str, key: str, response: GateResponse) -> None:
        """Answer the gate named by ``key`` and resume the run; ``GateConflict`` when another
        answer came first (or the run is not waiting there)."""
        run_dir = self.run_dir(name)
        with self._lock(name):
            if self.is_running(name):
                raise GateConflict(self._conflict(name, key, "the run is running again"))
            pending = session.pending_gate(run_dir)
            if pending is None or pending.key != key:
                raise GateConflict(self._conflict(name, key, "the run is no longer waiting at this gate"))
            self._answered[key] = response.who or "someone"
            (run_dir / WEB_MARKER).write_text(f"answered by {response.who}\n")
            self._spawn(
                name,
                lambda: self._launch(
                    run_dir,
                    None,
                    self._options(name),
                    responder=Once(response, pending.request.gate, pending.request.round),
                ),
            )
        log.info(
            "web run %s: %s %s at the %s gate", name, response.who, response.action, pending.request.gate
        )

    def _conflict(self, name: str, key: str, why: str) -> str:
        who = self._answered.get(key)
        if who is None:  # answered before a restart, or by another front door: the decision log says
            events = RunStore.open(self.runs_dir / name, read_only=True).events("decision")
            human = [e for e in events if e.get("actor") == "human"]
            if human:
                last = human[-1]
                who = f"{last.get('who') or 'a person'} ({last['action']} at the {last['gate']} gate)"
        if who:
            return f"this gate was answered already by {who}; {why}. The page now shows the current state."
        return f"{why}; the page now shows the current state."

    def resume_killed(self) -> list[str]:
        """Resume, in the background, every run this server drove whose writer was killed."""
        resumed = []
        for d in sorted(self.runs_dir.iterdir()) if self.runs_dir.is_dir() else []:
            if (
                (d / WEB_MARKER).exists()
                and (d / session.RUN_FILE).exists()
                and session.run_status(d) == "killed"
            ):
                log.warning("web run %s was killed mid-run: resuming it from its checkpoint", d.name)
                with self._lock(d.name):
                    self._spawn(d.name, lambda d=d: self._launch(d, None, self._options(d.name)))
                resumed.append(d.name)
        return resumed

    def join(self, timeout_s: float = 5.0) -> None:
        """Wait for the running threads (tests, and a clean server stop)."""
        for t in list(self._threads.values()):
            t.join(timeout_s)
