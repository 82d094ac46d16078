"""What ``autoscope mcp`` lets an outside agent do, in plain Python (``agents/mcp_server.py`` wires it).

One ``Workbench`` holds one instrument behind its ``SafeMicroscope`` and one run store
(the workbench run): every survey and spectrum an outside agent asks for goes through the
interlocks and is stored exactly once (``tools/survey.py``, ``tools/acquisition.py``), and
every refusal is a typed error (``SafetyLimitExceeded``, ``InvalidRequest``) naming the limit
or the field. Graph runs it starts live in their own run directories under ``runs_dir``,
each one ``autoscope run`` in its own process (the runner with its headless responder, so
it stops at every gate that needs a person; one process a run, since the figures' matplotlib
is not thread-safe, and a run goes on when an stdio client goes away). A plan an outside
agent submits answers such a gate as an agent's edit (``agents/gates.py``), through
``runner.launch`` here: it is dry-run and waits for a person again.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.image import imsave

from autoscope.agents.gates import GateRequest, GateResponse, Level
from autoscope.agents.run_spec import load_run_spec
from autoscope.agents.runner import RunOptions, launch, load_run_file
from autoscope.instruments.errors import InvalidRequest
from autoscope.instruments.factory import DEFAULT_SCENARIO, survey_defaults
from autoscope.instruments.records import ImageRecord, SpectrumRecord
from autoscope.instruments.safety import SafeMicroscope, SafetyLimits
from autoscope.tools.acquisition import Acquirer
from autoscope.tools.dry_run import DryRun, Usage, dry_run
from autoscope.tools.figures import survey_figure
from autoscope.tools.plan import Plan
from autoscope.tools.queries import answer
from autoscope.tools.store import RunStore, check_step_id
from autoscope.tools.survey import IMAGE_STEP, SurveyPlan, SurveyResult, run_survey, spectrum_step

log = logging.getLogger(__name__)

LEVELS: tuple[Level, ...] = ("manual", "supervised", "autonomous")
#: what names a run an outside agent may address: a directory right under ``runs_dir``
_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
#: the workbench run's name in ``query``
WORKBENCH = "workbench"
SPECTRUM_PREFIX = "mcp-spectrum-"
MAX_WAIT_S = 300.0


@dataclass(frozen=True)
class Instrument:
    """The instrument the server opened, as the other commands name it (runs it starts use it too)."""

    scenario: str | None = None
    seed: int = 0
    limits: Path | None = None
    sim_config: Path | None = None
    replay: Path | None = None
    remote: str | None = None
    token: str | None = None
    backend: str | None = None
    nion_config: Path | None = None

    @property
    def twin_scenario(self) -> str | None:
        """The twin's scenario, or None for a remote, replayed or Nion instrument."""
        if self.remote or self.replay or self.backend == "nion":
            return None
        return self.scenario or DEFAULT_SCENARIO

    def label(self) -> str:
        return str(self.twin_scenario or self.remote or self.replay or self.backend)


@dataclass
class _Run:
    """A run this server started: its ``autoscope run`` process and that process's log."""

    proc: subprocess.Popen
    log: Path

    def error(self) -> str | None:
        """The end of the log when the process failed (exit 0 is done, 3 stopped for a person)."""
        code = self.proc.poll()
        if code in (None, 0, 3):
            return None
        tail = self.log.read_text(errors="replace").strip().splitlines()[-5:] if self.log.exists() else []
        return f"autoscope run exited {code}: " + " ".join(line.strip() for line in tail)


@dataclass
class Workbench:
    """The outside agent's bench: the instrument, its run store, and the graph runs it started."""

    store: RunStore
    scope: SafeMicroscope
    instrument: Instrument
    runs_dir: Path
    #: the most autonomy a run started here may have (the person who started the server chose it)
    autonomy: Level = "supervised"
    llm: str | None = None
    campaign: Path | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    _runs: dict[str, _Run] = field(default_factory=dict)
    _busy: set[str] = field(default_factory=set)

    @property
    def limits(self) -> SafetyLimits:
        return self.scope.limits

    # ---------------------------------------------------------------- the instrument
    def status(self) -> dict[str, Any]:
        """The instrument's own status, and what the interlocks have counted."""
        with self.lock:
            st = self.scope.status().model_dump(mode="json", exclude={"capabilities"})
        acq = self.store.events("acquisition")
        return {
            "instrument": st,
            "interlocks": {
                "total_dose_e": self.scope.total_dose_e,
                "acquisitions": self.scope.acquisitions,
                "safety_stops": len(self.store.events("safety_stop")),
            },
            "workbench": {
                "run_dir": str(self.store.dir),
                "survey": self.store.has_step(IMAGE_STEP),
                "spectra": sum(1 for e in acq if e.get("record") == "spectrum"),
            },
        }

    def capabilities(self) -> dict[str, Any]:
        """What the instrument can do and the limits a person set (which no agent can change)."""
        return {
            "capabilities": self.scope.capabilities().model_dump(mode="json"),
            "limits": self.limits.model_dump(mode="json"),
            "survey_defaults": self.survey_defaults(),
            "autonomy": self.autonomy,
        }

    def survey_defaults(self) -> dict[str, Any]:
        return survey_defaults(
            self.scope.capabilities(),
            self.instrument.twin_scenario,
            max_current_pA=self.limits.max_current_pA,
        )

    def survey(self, fields: dict[str, Any]) -> tuple[SurveyPlan, SurveyResult]:
        """The workbench survey (an overview image and spectra): acquired once, stored; the same
        survey asked again is read back; another one is refused (naming what differs)."""
        plan = SurveyPlan(**{**self.survey_defaults(), **{k: v for k, v in fields.items() if v is not None}})
        with self.lock:
            result = run_survey(self.scope, self.store, plan)
            survey_figure(
                result.image,
                result.spectra,
                self.store.dir / "survey.png",
                title=f"{self.instrument.label()} — seed {self.instrument.seed}",
            )
        return plan, result

    def survey_image(self) -> ImageRecord:
        if not self.store.has_step(IMAGE_STEP):
            raise InvalidRequest("survey", "no survey yet: take one with the survey tool")
        rec = self.store.load(IMAGE_STEP)
        assert isinstance(rec, ImageRecord)
        return rec

    def survey_png(self) -> bytes:
        """The survey image as a grey PNG, one pixel per scan pixel (row 0 at the top)."""
        buf = io.BytesIO()
        imsave(buf, self.survey_image().data, cmap="gray", format="png")
        return buf.getvalue()

    def spectrum_at(
        self,
        x_nm: float,
        y_nm: float,
        dwell_s: float,
        *,
        current_pA: float | None = None,
        energy_min_eV: float | None = None,
        energy_max_eV: float | None = None,
        name: str | None = None,
    ) -> tuple[str, SpectrumRecord]:
        """One spectrum at a sample-frame position, stored as a new step (or, with a ``name`` used
        before for the same request, read back): the current is set first, through the interlocks."""
        defaults = self.survey_defaults()
        lo = defaults["energy_min_eV"] if energy_min_eV is None else energy_min_eV
        hi = defaults["energy_max_eV"] if energy_max_eV is None else energy_max_eV
        with self.lock:
            if name is not None:
                try:
                    step_id = check_step_id(f"{SPECTRUM_PREFIX}{name}")
                except ValueError as exc:
                    raise InvalidRequest("name", str(exc)) from None
            else:
                taken = {s for s in self.store.completed_steps() if s.startswith(SPECTRUM_PREFIX)}
                n = len(taken)
                while f"{SPECTRUM_PREFIX}{n:04d}" in taken:
                    n += 1
                step_id = f"{SPECTRUM_PREFIX}{n:04d}"
            if current_pA is not None:
                self.scope.set_beam_current(current_pA)
            rec = Acquirer(self.scope, self.store).spectrum(
                step_id, x_nm=x_nm, y_nm=y_nm, dwell_s=dwell_s, energy_min_eV=lo, energy_max_eV=hi
            )
        return step_id, rec

    def dry_run(self, plan: dict[str, Any]) -> DryRun:
        """A plan's dose, time and limit checks on this instrument after what the workbench spent;
        nothing touches the instrument."""
        p = Plan.model_validate(plan)
        acq = self.store.events("acquisition")
        used = Usage(
            dose_e=sum(float(e.get("dose_e", 0.0)) for e in acq),
            acquisitions=len(acq),
            spectra=sum(1 for e in acq if e.get("record") == "spectrum"),
            time_s=sum(float(e.get("t_end_s", 0.0)) - float(e.get("t_start_s", 0.0)) for e in acq),
        )
        with self.lock:
            return dry_run(
                p,
                self.scope.capabilities(),
                self.limits,
                used,
                run_budget_left=self.limits.max_acquisitions,  # no budget of its own: the limits bind
                center_nm=self.scope.stage_position_nm(),
                ledger=self.scope.dose_ledger(),
            )

    # ---------------------------------------------------------------- graph runs
    def run_dir(self, run: str) -> Path:
        """The directory of the run named ``run`` under ``runs_dir`` (nothing outside it)."""
        if not _RUN_NAME.match(run or ""):
            raise InvalidRequest("run", f"{run!r} is not a run name (letters, digits, '.', '_', '-')")
        d = self.runs_dir / run
        if not (d / "run.json").exists():
            raise InvalidRequest("run", f"no run named {run!r} in {self.runs_dir}; start one with start_run")
        return d

    def start_run(
        self,
        *,
        goal: str = "",
        notes: str = "",
        budget: int | None = None,
        rounds: int | None = None,
        seed: int | None = None,
        autonomy: Level | None = None,
    ) -> str:
        """Start a graph run on this instrument in the background; its name (a directory in runs_dir)."""
        level = autonomy or self.autonomy
        if level not in LEVELS:
            raise InvalidRequest("autonomy", f"{level!r}: choose {', '.join(LEVELS)}")
        if LEVELS.index(level) > LEVELS.index(self.autonomy):
            raise InvalidRequest(
                "autonomy",
                f"{level!r} is more autonomy than this server gives an outside agent's runs "
                f"(at most {self.autonomy!r}, chosen by the person who started it with --autonomy)",
            )
        spec = load_run_spec(self.campaign, self.instrument.scenario or DEFAULT_SCENARIO)
        changes = {
            "goal": goal or None,
            "notes": notes or None,
            "budget": budget,
            "rounds": rounds,
            "seed": seed,
        }
        if seed is None:
            changes["seed"] = self.instrument.seed
        spec = spec.model_validate(
            {**spec.model_dump(), **{k: v for k, v in changes.items() if v is not None}}
        )
        name = f"mcp-run-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        asked = self.store.dir / "runs"  # what the agent asked for, and each run's log
        asked.mkdir(exist_ok=True)
        run_file = asked / f"{name}.json"
        run_file.write_text(spec.model_dump_json(indent=2) + "\n")
        i = self.instrument
        cmd = [sys.executable, "-m", "autoscope", "run", str(run_file), "--out", str(self.runs_dir / name)]
        cmd += ["--autonomy", level, *(["--llm", self.llm] if self.llm else [])]
        for flag, value in (
            ("--limits", i.limits),
            ("--sim-config", i.sim_config),
            ("--remote", i.remote),
            ("--replay", i.replay),
            ("--backend", i.backend),
            ("--nion-config", i.nion_config),
        ):
            if value is not None:
                cmd += [flag, str(Path(value).resolve()) if isinstance(value, Path) else value]
        env = {**os.environ, **({"AUTOSCOPE_TOKEN": i.token} if i.token else {})}  # not on the command line
        log_path = asked / f"{name}.log"
        with log_path.open("wb") as out:  # a file, not a pipe nobody reads
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env
            )
        self._runs[name] = _Run(proc, log_path)
        log.info("started run %s (%s autonomy, pid %d) for an outside agent", name, level, proc.pid)
        return name

    def running(self, run: str) -> bool:
        r = self._runs.get(run)
        return run in self._busy or (r is not None and r.proc.poll() is None)

    def run_status(self, run: str, wait_s: float = 0.0) -> dict[str, Any]:
        """Where a run stands (its summary.json, written by the runner), after waiting up to
        ``wait_s`` for a run still going to stop."""
        run_dir = self.run_dir(run) if run not in self._runs else self.runs_dir / run
        r = self._runs.get(run)
        if r is not None and wait_s > 0:
            with contextlib.suppress(subprocess.TimeoutExpired):
                r.proc.wait(min(float(wait_s), MAX_WAIT_S))
        running = self.running(run)
        error = r.error() if r else None
        path = run_dir / "summary.json"
        if not path.exists():
            return {"run": run, "status": "running" if running else "not started", "error": error}
        s = _summary(run_dir)
        pending = s.get("pending_gate")
        out = {
            "run": run,
            "run_dir": str(run_dir.resolve()),
            "status": "running" if running else s["status"],
            "error": error,
            "stop_reason": s.get("stop_reason"),
            "pending_gate": None if running or not pending else _pending(pending),
            "measurements": s["measurements"],
            "images": s["images"],
            "dose_e": s["dose_e"],
            "dose_e_per_A2": s["dose_e_per_A2"],
            "safety_stops": s["safety_stops"],
            "hypotheses": [
                {
                    k: h.get(k)
                    for k in ("id", "statement", "author", "plan_author", "verdict", "estimate", "ci")
                }
                for h in s["hypotheses"]
            ],
            "decisions": [
                {k: d.get(k) for k in ("gate", "round", "action", "actor", "who", "reason")}
                for d in s["decisions"]
            ],
            "report": f"autoscope://runs/{run}/report",
        }
        if out["pending_gate"]:
            out["how_a_person_answers"] = f"autoscope resume {run_dir.resolve()} --answer approve|reject|edit"
        return out

    @contextlib.contextmanager
    def _exclusive(self, run: str) -> Iterator[None]:
        with self.lock:
            if self.running(run):
                raise InvalidRequest("run", f"{run} is still going; wait until run_status says it stopped")
            self._busy.add(run)
        try:
            yield
        finally:
            self._busy.discard(run)

    def submit_plan(self, run: str, plan: dict[str, Any], who: str) -> dict[str, Any]:
        """Answer the run's pending plan (or intervention) gate with ``plan`` as an outside agent's
        edit: the gate validates it, the run dry-runs it and stops for a person at the plan gate."""
        run_dir = self.run_dir(run)
        with self._exclusive(run):
            s = _summary(run_dir) if (run_dir / "summary.json").exists() else {}
            pending = s.get("pending_gate")
            if not pending:
                raise InvalidRequest("run", f"{run} is not waiting at a gate (status {s.get('status')!r})")
            # which gates take an agent's plan is the gate's to say (agents/gates.py), not ours
            resp = GateResponse(action="edit", edit=plan, actor="agent", who=who)
            asked: list[GateRequest] = []

            def responder(request: GateRequest) -> GateResponse | None:
                asked.append(request)
                if len(asked) == 1 and (request.gate, request.round) == (pending["gate"], pending["round"]):
                    return resp  # the gate the agent saw (a killed run may stop at another first)
                log.info("%s waits for a person at the %s gate: %s", run, request.gate, request.question)
                return None  # nobody here: the run stops for a person

            before = len(_events(run_dir, "decision"))
            record = load_run_file(run_dir)
            outcome = launch(run_dir, None, RunOptions(token=self.instrument.token), responder=responder)
            decisions = _events(run_dir, "decision")[before:]
        accepted = any(d.get("actor") == "agent" and d.get("who") == who for d in decisions)
        if not accepted:
            why = (outcome.pending.error if outcome.pending else None) or "the gate did not take it"
            raise InvalidRequest("plan", f"the {pending['gate']} gate refused the plan: {why}")
        log.info("%s submitted a plan to %s (%s autonomy)", who, run, record["autonomy"])
        return self.run_status(run)

    def query(self, run: str, tool: str, args: dict[str, Any]) -> str:
        """A read-only question (``tools/queries.py``) about a run, or the workbench."""
        if run == WORKBENCH:
            with self.lock:
                return answer(self.store, tool, **args)
        with RunStore.open(self.run_dir(run), read_only=True) as store:
            return answer(store, tool, **args)

    def report(self, run: str) -> str:
        path = self.run_dir(run) / "report.md"
        if not path.exists():
            raise InvalidRequest("run", f"{run} has no report yet (the runner writes it when the run stops)")
        return path.read_text()

    def close(self) -> None:
        """Runs still going go on in their own processes (their logs are in the workbench's runs/)."""
        for name, r in self._runs.items():
            if r.proc.poll() is None:
                log.info("run %s (pid %d) goes on without this server", name, r.proc.pid)


def _summary(run_dir: Path) -> dict[str, Any]:
    """The run's summary.json (the runner rewrites it when the run stops: a torn read is read again)."""
    for _ in range(20):
        with contextlib.suppress(json.JSONDecodeError):
            return json.loads((run_dir / "summary.json").read_text())
        time.sleep(0.1)
    return json.loads((run_dir / "summary.json").read_text())


def _events(run_dir: Path, kind: str) -> list[dict[str, Any]]:
    with RunStore.open(run_dir, read_only=True) as store:
        return store.events(kind)


def _pending(p: dict[str, Any]) -> dict[str, Any]:
    dry = p.get("dry_run")
    return {
        "gate": p["gate"],
        "round": p["round"],
        "question": p["question"],
        "proposal": p["proposal"],
        "dry_run": None if dry is None else DryRun.model_validate(dry).summary(),
        "previous_answer_refused": p.get("error"),
    }


def spectrum_summary(step_id: str, rec: SpectrumRecord) -> dict[str, Any]:
    return {
        "step_id": step_id,
        **{k: v for k, v in rec.metadata().items() if isinstance(v, int | float | str | bool)},
        "energy_eV": [round(float(v), 4) for v in rec.energy_eV],
        "counts": [round(float(v), 3) for v in rec.counts],
    }


def survey_summary(plan: SurveyPlan, result: SurveyResult) -> dict[str, Any]:
    img = result.image
    return {
        "plan": plan.model_dump(mode="json"),
        "image": {
            "step_id": IMAGE_STEP,
            "pixels": img.pixels,
            "rows": img.n_rows,
            "fov_nm": img.fov_nm,
            "center_nm": [img.center_x_nm, img.center_y_nm],
            "dose_e": img.dose_e,
            "dose_e_per_A2": img.dose_e_per_A2,
        },
        "spectra": [
            {"step_id": spectrum_step(i), "x_nm": s.x_nm, "y_nm": s.y_nm, "dose_e": s.dose_e}
            for i, s in enumerate(result.spectra)
        ],
        "reused_steps": result.reused_steps,
        "image_resource": "autoscope://survey/image",
        "figure_resource": "autoscope://survey/figure",
    }
