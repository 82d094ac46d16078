"""``autoscope eval``: every task of a suite under every backend, in parallel on Dask, resumable.

A **backend** is one row of the leaderboard: ``none`` (the deterministic planner, the floor
every LLM must beat), ``random`` and ``raster`` (the same planner with random or raster
acquisition in its active scans), ``local`` (the embedded model, ``local:smollm2`` or
``local:qwen2.5-coder-1.5b`` to choose), ``openai`` (any OpenAI-compatible endpoint, by URL).
Every backend runs the same tasks with the same seeds, so differences are paired.

Tasks run on Dask distributed: a ``LocalCluster`` on 127.0.0.1 by default (``workers``
processes, one thread each), an existing scheduler by address, or in this process. Each task's
run gets its own directory (``runs/<backend>/<task>-<attempt>``) and its result is written to
``results/<backend>/<task>.json`` as soon as it finishes, atomically, so a killed evaluation
resumes with what is done and every task ends scored once. Results do not depend on where a task
ran: torch and BLAS run one thread per task everywhere, and every random draw is seeded. The
embedded model's rows run in this process, one at a time, after the cluster's work: no other
process shares the cores with llama.cpp (its threads spin while they wait).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from autoscope.agents.gates import GateRequest, GateResponse
from autoscope.agents.run_spec import load_run_spec
from autoscope.agents.runner import RunOptions, headless, launch
from autoscope.evals.fuzz import LimitRecorder
from autoscope.evals.scoring import result_header, score_task
from autoscope.evals.tasks import Split, Suite, Task, tasks
from autoscope.instruments.errors import ConfigError
from autoscope.instruments.safety import SafetyLimits

log = logging.getLogger(__name__)
PLANNERS = ("none", "random", "raster")
LOCAL_MODELS = ("smollm2", "qwen2.5-coder-1.5b")
LIMITS = Path(__file__).parents[1] / "agents" / "limits.default.yaml"
_LLMS: dict[str, Any] = {}  # one loaded model per process and backend


def parse_backends(text: str) -> list[str]:
    """``none,local,…`` → names; an unknown one is a ``ConfigError`` naming ``backends``."""
    names = [b.strip() for b in text.split(",") if b.strip()]
    ok = {*PLANNERS, "local", "openai", *(f"local:{m}" for m in LOCAL_MODELS)}
    bad = [b for b in names if b not in ok]
    if bad or not names:
        raise ConfigError(
            "backends", f"unknown or no backend: {', '.join(bad) or '(none)'}; known: {', '.join(sorted(ok))}"
        )
    if len(set(names)) != len(names):
        raise ConfigError("backends", "a backend is named twice")
    return names


def slug(backend: str) -> str:
    return backend.replace(":", "_")


def _llm(backend: str, settings_update: dict[str, Any]) -> Any:
    """The model client of an LLM backend, loaded once per process."""
    key = f"{backend} {sorted(settings_update.items())}"
    if key not in _LLMS:
        from autoscope.agents.llm import make_llm
        from autoscope.agents.settings import load_settings

        update = dict(settings_update)
        kind, _, model = backend.partition(":")
        if model:
            update["local_model"] = model
        _LLMS[key] = make_llm(kind, load_settings().model_copy(update=update))
    return _LLMS[key]


def person(task: Task) -> Callable[[GateRequest], GateResponse | None]:
    """The task's scripted person: its listed answers at each gate in order, then approve; a safety
    stop is always ended (approve is refused there)."""
    queue = {g: list(a) for g, a in task.person.items()}

    def answer(req: GateRequest) -> GateResponse | None:
        if req.proposal.get("kind") == "safety_stop":
            return GateResponse(action="reject", reason="stopped by a limit", who="eval person")
        action = (queue.get(req.gate) or ["approve"]).pop(0)
        if action == "reject":
            return GateResponse(action="reject", reason="that is enough: report now", who="eval person")
        return GateResponse(action="approve", who="eval person")

    return answer


@contextlib.contextmanager
def _limit_threads() -> Iterator[None]:
    """One torch and BLAS thread for the task (results do not depend on where it ran); the
    process's own settings come back after it. (llama.cpp sets its threads itself.)"""
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        torch.set_num_threads(before)


def run_task(
    task: Task | dict,
    backend: str,
    out: str | Path,
    settings_update: dict | None = None,
    figures: bool = False,
    score: bool = True,
    *,
    llm: Any = None,
) -> dict:
    """One task under one backend into a fresh directory under ``out``; its scored result.
    ``figures``: draw each run's PNGs (off by default: the report has its own); ``score``: False
    keeps only what the run itself says (status, spectra, verdicts: the throughput benchmark);
    ``llm``: a client that stands in for the backend's (tests: a scripted model)."""
    task = Task.model_validate(task) if isinstance(task, dict) else task
    out = Path(out)
    run_dir = out / "runs" / slug(backend) / f"{task.id}-{uuid.uuid4().hex[:6]}"
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    spec = load_run_spec(None, task.scenario)
    update: dict[str, Any] = {
        "goal": task.goal,
        "notes": task.notes,
        "seed": task.seed,
        "rounds": task.rounds,
        "budget": task.budget,
        "question": task.question,
        "sample": task.sample,
    }
    if backend in ("random", "raster"):
        update["template"] = spec.template.with_(method=backend)
    if task.pipeline:
        update["template"] = update.get("template", spec.template).with_(pipeline=True)
    spec = spec.model_copy(update=update)
    sim_config = None
    if task.sim:
        sim_config = out / "tasks" / f"{task.id}.sim.json"
        sim_config.parent.mkdir(parents=True, exist_ok=True)
        sim_config.write_text(json.dumps(task.sim))
    limits = SafetyLimits.from_file(LIMITS)
    recorders: list[LimitRecorder] = []

    def wrap(inner: Any) -> Any:
        recorders.append(LimitRecorder(inner, limits))
        return recorders[-1]

    if llm is None and backend not in PLANNERS:
        llm = _llm(backend, settings_update or {})
    options = RunOptions(
        autonomy=task.autonomy, llm="none" if llm is None else None, sim_config=sim_config, limits=LIMITS
    )
    status, error = "error", None
    start = time.perf_counter()
    with _limit_threads():
        try:
            outcome = launch(
                run_dir,
                spec,
                options,
                responder=person(task) if task.person else headless,
                llm=llm,
                wrap_backend=wrap,
                context_hook=lambda ctx: setattr(ctx, "figures", figures),
            )
            status = outcome.status
        except Exception as exc:  # a run that crashes is a failed task, scored as such
            log.exception("task %s on %s failed", task.id, backend)
            error = f"{type(exc).__name__}: {exc}"
        wall = time.perf_counter() - start
        if not score:
            return _unscored(task, backend, run_dir, out, status, wall, error)
        result = score_task(
            task,
            run_dir,
            backend=backend,
            status=status,
            wall_s=wall,
            reached=sum(len(r.violations) for r in recorders),
            violations=[v for r in recorders for v in r.violations],
            error=error,
        )
    result["run_dir"] = str(run_dir.relative_to(out))
    return result


def rescored(task: Task, old: dict, out: Path) -> dict:
    """A stored task result scored again from its run directory with the scorer as it is now."""
    result = score_task(
        task,
        out / old["run_dir"],
        backend=old["backend"],
        status=old["status"],
        wall_s=old["wall_s"],
        reached=old.get("reached", 0),
        violations=old.get("violations", []),
        error=old.get("error"),
    )
    result["run_dir"] = old["run_dir"]
    return result


def _unscored(task: Task, backend: str, run_dir: Path, out: Path, status: str, wall: float, error) -> dict:
    summary_path = run_dir / "summary.json"
    summ = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    return {
        **result_header(task, backend=backend, status=status, wall_s=wall, error=error),
        "spectra": summ.get("measurements", 0),
        "verdicts": [h["verdict"] for h in summ.get("hypotheses", [])],
        "run_dir": str(run_dir.relative_to(out)),
    }


# ------------------------------------------------------------------ the evaluation directory
MANIFEST = "eval.json"


def result_path(out: Path, backend: str, task_id: str) -> Path:
    return out / "results" / slug(backend) / f"{task_id}.json"


def save_result(out: Path, result: dict) -> None:
    """Write a task's result atomically (a temporary name, fsync, rename)."""
    path = result_path(out, result["backend"], result["task"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps(result, default=str))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _manifest(out: Path, suite: Suite, split: Split, backends: Sequence[str]) -> None:
    """Record what this directory evaluates; a different suite or split there is refused."""
    want = {"suite": suite.model_dump(mode="json"), "split": split}
    path = out / MANIFEST
    if path.exists():
        have = json.loads(path.read_text())
        if {k: have.get(k) for k in want} != want:
            raise ConfigError(
                "out",
                f"{out} holds an evaluation of another suite or split ({have.get('split')}); use a new --out",
            )
        backends = list(dict.fromkeys([*have.get("backends", []), *backends]))
    path.write_text(json.dumps({**want, "backends": list(backends)}, indent=1))


def run_eval(
    suite: Suite,
    backends: Sequence[str],
    out: Path,
    *,
    split: Split = "test",
    scheduler: str | None = None,
    workers: int = 2,
    in_process: bool = False,
    settings_update: dict[str, Any] | None = None,
    figures: bool = False,
    score: bool = True,
    rescore: bool = False,
    progress: Callable[[int], None] | None = None,
) -> list[dict]:
    """Run what is not done yet of (task × backend) and return every result, in task order.
    ``rescore``: score the stored runs again first (after a change to the scorer; nothing is re-run)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _manifest(out, suite, split, backends)
    todo_all = tasks(suite, split)
    pairs = [(t, b) for b in backends for t in todo_all]
    if rescore:
        for t, b in pairs:
            if result_path(out, b, t.id).exists():
                save_result(out, rescored(t, json.loads(result_path(out, b, t.id).read_text()), out))
    todo = [(t, b) for t, b in pairs if not result_path(out, b, t.id).exists()]
    if progress and len(pairs) > len(todo):
        progress(len(pairs) - len(todo))
    log.info(
        "eval %s (%s): %d tasks × %d backends, %d to run",
        suite.name,
        split,
        len(todo_all),
        len(backends),
        len(todo),
    )
    # the embedded model's rows run here, one at a time, after the cluster's: llama.cpp's threads
    # spin while they wait, and any other process on the same cores slows it by orders of magnitude
    here = [
        (t, b) for t, b in todo if in_process or b.startswith("local") or workers <= 1 and scheduler is None
    ]
    there = [p for p in todo if p not in here]
    if there:
        _on_dask(
            there,
            out,
            scheduler=scheduler,
            workers=workers,
            args=(settings_update, figures, score),
            progress=progress,
        )
    for t, b in here:
        save_result(out, run_task(t, b, out, settings_update, figures, score))
        if progress:
            progress(1)
    return [json.loads(result_path(out, b, t.id).read_text()) for t, b in pairs]


def _on_dask(todo, out: Path, *, scheduler, workers, args, progress) -> None:
    from distributed import Client, LocalCluster, as_completed

    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:  # its start and stop narrated at INFO
        logging.getLogger("distributed").setLevel(logging.WARNING)
    cluster = None
    if scheduler is None:
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        )
    try:
        with Client(scheduler or cluster) as client:
            futures = [
                client.submit(
                    run_task,
                    t.model_dump(mode="json"),
                    b,
                    str(out.resolve()),
                    *args,
                    key=f"eval-{slug(b)}-{t.id}-{uuid.uuid4().hex[:6]}",
                    pure=False,
                )
                for t, b in todo
            ]
            for fut in as_completed(futures):
                save_result(out, fut.result())
                if progress:
                    progress(1)
    finally:
        if cluster is not None:
            cluster.close()


__all__ = ["PLANNERS", "parse_backends", "person", "result_path", "run_eval", "run_task", "save_result"]
