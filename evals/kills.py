"""Runs killed and resumed, instruments faulty and restarted: is every acquisition taken once?

``kill_runs``: ``autoscope run`` as a real process, SIGKILLed at chosen moments — during an
acquisition and its store write (after the k-th acquisition event), at a gate and its
checkpoint write (right after a ``decision`` or ``dry_run`` event), in the middle of an LLM
call (the agents talk to an OpenAI-compatible server that takes its time) — then
``autoscope resume`` until the run is done. ``fault_runs``: whole runs against
``autoscope instrument serve`` with injected timeouts, disconnects and corrupted frames,
the server SIGKILLed and restarted mid-run (same port, same state directory).

Every finished run is audited the same way (``audit_run``): status done; no acquisition
repeated (a revision ``.rN`` of a step is a repeat when no plan was edited; two events of a
spectrum campaign at one candidate are a repeat); nothing lost (every acquisition event has
its step file, ``data.h5`` indexes exactly the stored steps); the spectra counted in the
summary are those in the log; the decisions in the log are those of the final state.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import h5py

from autoscope.agents.gates import effective_decisions
from autoscope.tools.store import RunStore

log = logging.getLogger(__name__)

#: where a kill lands: (name, what to watch, which occurrence, extra delay range in s)
MOMENTS: list[tuple[str, str, int, tuple[float, float]]] = [
    ("survey", "survey_started", 1, (0.05, 0.3)),
    ("acquisition", "acquisition", 2, (0.0, 0.05)),
    ("store write", "acquisition", 3, (0.0, 0.004)),
    ("gate", "decision", 1, (0.0, 0.01)),
    ("checkpoint write", "dry_run", 1, (0.0, 0.003)),
    ("LLM call", "llm", 1, (0.1, 0.4)),
]
_REVISION = re.compile(r"\.r\d+$")


def _count(path: Path, kind: str) -> int:
    if not path.exists():
        return 0
    n = 0
    for line in path.read_text(errors="replace").splitlines():
        if kind == "llm":
            n += 1
            continue
        try:
            if json.loads(line).get("kind") == kind:
                n += 1
        except ValueError:
            pass  # a line being written
    return n


def _autoscope(args: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "autoscope", *args]
    with log_path.open("ab") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)


def _kill_at(
    proc: subprocess.Popen,
    watch: Path,
    kind: str,
    nth: int,
    delay: tuple[float, float],
    rng: random.Random,
    timeout_s: float,
) -> bool:
    """SIGKILL ``proc`` once ``watch`` holds ``nth`` more ``kind`` entries than now; False if it ended first."""
    start = _count(watch, kind)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if _count(watch, kind) >= start + nth:
            time.sleep(rng.uniform(*delay))
            if proc.poll() is not None:
                return False
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return True


def audit_run(run_dir: Path, *, edited: bool = False) -> dict[str, Any]:
    """Duplicates, losses and inconsistencies of a finished run (see the module doc)."""
    problems: list[str] = []
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    if summary.get("status") != "done":
        problems.append(f"status {summary.get('status')!r}, not done")
    store = RunStore.open(run_dir, read_only=True)
    acq = store.events("acquisition")
    ids = [e["step_id"] for e in acq]
    duplicates = len(ids) - len(set(ids))
    if not edited:
        duplicates += sum(1 for s in ids if _REVISION.search(s))
    aimed = Counter(
        (e["step_id"].rsplit("-", 1)[0], e["candidate"]) for e in acq if e.get("candidate") is not None
    )
    duplicates += sum(n - 1 for n in aimed.values() if n > 1)
    lost = [s for s in ids if not (run_dir / "steps" / f"{s}.h5").exists()]
    try:
        with h5py.File(run_dir / "data.h5", "r") as f:
            indexed = set(f.keys())
    except OSError as exc:
        indexed = set()
        problems.append(f"data.h5 unreadable: {exc}")
    if indexed != set(ids) - set(lost):
        problems.append(f"data.h5 indexes {len(indexed)} steps, the log {len(set(ids) - set(lost))}")
    spectra = sum(1 for e in acq if e["record"] == "spectrum")
    if summary and summary.get("measurements") != spectra:
        problems.append(f"summary counts {summary.get('measurements')} spectra, the log {spectra}")
    keys = ("gate", "round", "action", "actor")
    logged = [{k: e.get(k) for k in keys} for e in effective_decisions(store.events("decision"))]
    state = [{k: d.get(k) for k in keys} for d in summary.get("decisions", [])]
    if summary and logged != state:
        problems.append("the decision log differs from the final state's decisions")
    return {
        "run": run_dir.name,
        "acquisitions": len(ids),
        "spectra": spectra,
        "duplicates": duplicates,
        "lost": len(lost),
        "problems": problems,
    }


def kill_runs(
    out: Path,
    *,
    kills: int = 20,
    per_run: int = 4,
    seed: int = 0,
    budget: int = 36,
    rounds: int = 2,
    llm_delay_s: float = 0.8,
) -> dict[str, Any]:
    """``kills`` SIGKILLs spread over runs of ``per_run`` kills each; every run resumed to the end."""
    from autoscope.evals.echo_llm import echo_llm

    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    runs: list[dict] = []
    kill_log: list[dict] = []
    max_runs = 4 * max(1, -(-kills // per_run))
    llm_log = out / "llm-requests.jsonl"
    with echo_llm(delay_s=llm_delay_s, log=llm_log) as url:
        env = {
            **os.environ,
            "AUTOSCOPE_LOG_LEVEL": "WARNING",
            "AUTOSCOPE_OPENAI_BASE_URL": url,
            "AUTOSCOPE_OPENAI_API_KEY": "bench",
            "AUTOSCOPE_OPENAI_MODEL": "echo",
        }
        r = 0
        while len([k for k in kill_log if k["killed"]]) < kills and r < max_runs:
            run_dir = out / f"run-{r:02d}"
            proc_log = out / f"run-{r:02d}.log"
            args = ["run", "--scenario", "plasmonic", "--seed", str(seed + r), "--llm", "openai"]
            args += ["--budget", str(budget), "--rounds", str(rounds), "--out", str(run_dir)]
            finished = False
            for _ in range(per_run):
                if len([k for k in kill_log if k["killed"]]) >= kills:
                    break
                name, kind, nth, delay = rng.choice(MOMENTS)
                proc = _autoscope(args, env, proc_log)
                watch = llm_log if kind == "llm" else run_dir / "events.jsonl"
                killed = _kill_at(proc, watch, kind, nth, delay, rng, timeout_s=600)
                kill_log.append({"run": run_dir.name, "moment": name, "killed": killed})
                args = ["resume", str(run_dir)]
                if not killed:  # it finished first: this run is done
                    finished = True
                    break
            if not finished:  # resumed once more, to the end
                proc = _autoscope(args, env, proc_log)
                proc.wait(1800)
            rc = proc.returncode
            runs.append(audit_run(run_dir) | {"exit": rc})
            r += 1
    return _totals(runs, kill_log)


def _totals(runs: list[dict], kill_log: list[dict]) -> dict[str, Any]:
    return {
        "kills": sum(k["killed"] for k in kill_log),
        "kill_moments": dict(Counter(k["moment"] for k in kill_log if k["killed"])),
        "runs": len(runs),
        "completed": sum(1 for r in runs if not r["problems"]),
        "duplicates": sum(r["duplicates"] for r in runs),
        "lost": sum(r["lost"] for r in runs),
        "problems": [f"{r['run']}: {p}" for r in runs for p in r["problems"]],
        "per_run": runs,
        "kill_log": kill_log,
    }


def _server(port: int, token: str, state: Path, sim_config: Path, log_path: Path) -> subprocess.Popen:
    args = ["instrument", "serve", "--scenario", "plasmonic", "--sim-config", str(sim_config)]
    args += ["--port", str(port), "--token", token, "--state-dir", str(state), "--idle-exit-s", "300"]
    return _autoscope(args, {**os.environ, "AUTOSCOPE_LOG_LEVEL": "WARNING"}, log_path)


def wait_healthy(
    proc: subprocess.Popen, url: str, log_path: Path | None = None, timeout_s: float = 60.0
) -> None:
    """Wait until the server process at ``url`` answers ``/health``; its log in the error if it exits."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log_text = log_path.read_text(errors="replace") if log_path and log_path.exists() else ""
            raise RuntimeError(f"instrument server exited {proc.returncode}:\n{log_text}")
        try:
            if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError(f"instrument server at {url} did not answer /health")


def server_duplicates(state: Path) -> int:
    """Acquisitions the server made twice for one request id (from its own ledger)."""
    import sqlite3

    with sqlite3.connect(state / "server-state.sqlite") as db:
        rows = db.execute(
            "SELECT request_id, COUNT(*) FROM acquisitions WHERE request_id IS NOT NULL GROUP BY request_id"
        ).fetchall()
    return sum(n - 1 for _, n in rows if n > 1)


def fault_runs(
    out: Path, *, runs: int = 3, fault_rate: float = 0.05, seed: int = 0, budget: int = 36, rounds: int = 2
) -> dict[str, Any]:
    """Whole runs against a served twin with ``fault_rate`` of requests failing (timeouts,
    disconnects, corrupted frames in equal shares); in each, the server is SIGKILLed after a few
    acquisitions and restarted on the same port with the same state directory."""
    import secrets

    import yaml

    from autoscope.instruments.remote.server import free_port

    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    sim = out / "faults.yaml"
    third = fault_rate / 3
    sim.write_text(
        yaml.safe_dump({"timeout_rate": third, "disconnect_rate": third, "corrupt_frame_rate": third})
    )
    rows = []
    for r in range(runs):
        port = free_port()
        token, state = secrets.token_urlsafe(12), out / f"server-state-{r:02d}"
        server_log = out / f"server-{r:02d}.log"
        server = _server(port, token, state, sim, server_log)
        wait_healthy(server, f"http://127.0.0.1:{port}", server_log)
        run_dir = out / f"run-{r:02d}"
        env = {**os.environ, "AUTOSCOPE_LOG_LEVEL": "WARNING", "AUTOSCOPE_REMOTE_RETRIES": "8"}
        args = ["run", "--remote", f"http://127.0.0.1:{port}", "--token", token, "--llm", "none"]
        args += [
            "--scenario",
            "plasmonic",
            "--budget",
            str(budget),
            "--rounds",
            str(rounds),
            "--out",
            str(run_dir),
        ]
        proc = _autoscope(args, env, out / f"run-{r:02d}.log")
        restarts = 0
        try:
            watch = run_dir / "events.jsonl"
            nth = rng.randint(3, 12)
            while proc.poll() is None and _count(watch, "acquisition") < nth:
                time.sleep(0.01)
            if proc.poll() is None:
                server.send_signal(signal.SIGKILL)
                server.wait()
                time.sleep(rng.uniform(0.2, 1.0))
                server = _server(port, token, state, sim, server_log)
                wait_healthy(server, f"http://127.0.0.1:{port}", server_log)
                restarts += 1
            rc = proc.wait(1800)
            resumes = 0
            while rc not in (0, 3) and resumes < 3:  # a fault beyond the retries: resume it
                resumes += 1
                rc = _autoscope(
                    ["resume", str(run_dir), "--token", token], env, out / f"run-{r:02d}.log"
                ).wait(1800)
        finally:
            if proc.poll() is None:
                proc.kill()
            server.send_signal(signal.SIGTERM)
            server.wait(20)
        audit = audit_run(run_dir)
        store = RunStore.open(run_dir, read_only=True)
        failures = store.events("acquisition_failed")
        rows.append(
            audit
            | {
                "exit": rc,
                "server_restarts": restarts,
                "resumes": resumes,
                "faults_retried": len(failures),
                "server_duplicates": server_duplicates(state),
            }
        )
    return {
        "fault_rate": fault_rate,
        "runs": len(rows),
        "completed": sum(1 for x in rows if not x["problems"]),
        "server_restarts": sum(x["server_restarts"] for x in rows),
        "faults_retried": sum(x["faults_retried"] for x in rows),
        "duplicates": sum(x["duplicates"] + x["server_duplicates"] for x in rows),
        "lost": sum(x["lost"] for x in rows),
        "problems": [f"{x['run']}: {p}" for x in rows for p in x["problems"]],
        "per_run": rows,
    }
