"""Drive the graph: start or resume a run, answer gates, write the report and summary.

One run directory holds the run store (events.jsonl, steps/, data.h5), ``run.json``
(the run file, backend and autonomy it started with), ``checkpoints.sqlite`` (the
graph's checkpoints, unless a PostgreSQL URL is configured), ``report.md`` and
``summary.json``. A gate that needs a person is answered by a ``Responder``; a
responder that has no answer (headless) stops the run there: status ``stopped``,
the pending request saved in the summary, and ``autoscope resume`` picks it up.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from langgraph.types import Command

from autoscope.agents.checkpoint_serde import SafeSerializer
from autoscope.agents.context import RunContext
from autoscope.agents.gates import AutonomyPolicy, GateRequest, GateResponse
from autoscope.agents.graph import build_graph
from autoscope.agents.llm import LLM, make_llm
from autoscope.agents.report import llm_usage, summary, write_outputs
from autoscope.agents.run_spec import RunSpec
from autoscope.agents.settings import Settings, load_settings
from autoscope.instruments.errors import ConfigError
from autoscope.instruments.protocols import Microscope, close_instrument
from autoscope.instruments.safety import DOSE_EVENTS, SafeMicroscope, SafetyLimits
from autoscope.tools.campaign import StepInfo
from autoscope.tools.store import RunStore

log = logging.getLogger(__name__)
RUN_FILE = "run.json"
CHECKPOINTS = "checkpoints.sqlite"


class Responder(Protocol):
    """Answers a gate that needs a person; ``None`` means nobody is there (stop the run)."""

    def __call__(self, request: GateRequest) -> GateResponse | None: ...


def headless(request: GateRequest) -> GateResponse | None:
    log.warning("a person must decide at the %s gate: %s", request.gate, request.question)
    return None


@dataclass
class RunOutcome:
    run_dir: Path
    status: str  # done | stopped
    summary: dict[str, Any]
    pending: GateRequest | None


@contextlib.contextmanager
def open_checkpointer(run_dir: Path, url: str | None) -> Iterator[Any]:
    """SQLite in the run directory by default; PostgreSQL when ``url`` is a postgresql:// URL.

    Either way checkpoints are written and read by ``SafeSerializer``: no pickle, and nothing a
    checkpoint names is imported or called unless it is one of LangGraph's own safe types."""
    if url:
        if not url.startswith(("postgres://", "postgresql://")):
            raise ConfigError("checkpoint_url", f"expected a postgresql:// URL, got {url!r}")
        from langgraph.checkpoint.postgres import PostgresSaver

        with PostgresSaver.from_conn_string(url) as saver:
            saver.serde = SafeSerializer()
            saver.setup()
            yield saver
        return
    from langgraph.checkpoint.sqlite import SqliteSaver

    conn = sqlite3.connect(str(run_dir / CHECKPOINTS), check_same_thread=False)
    try:
        saver = SqliteSaver(conn, serde=SafeSerializer())
        saver.setup()
        yield saver
    finally:
        conn.close()


def checkpoint_bytes(saver: Any, config: dict) -> int:
    """Serialized size of the latest checkpoint of the run (state included)."""
    tup = saver.get_tuple(config)
    if tup is None:
        return 0
    return len(saver.serde.dumps_typed(tup.checkpoint)[1])


def save_run_file(run_dir: Path, record: dict[str, Any]) -> None:
    (run_dir / RUN_FILE).write_text(json.dumps(record, indent=2) + "\n")


def load_run_file(run_dir: Path) -> dict[str, Any]:
    path = run_dir / RUN_FILE
    if not path.exists():
        raise ConfigError("run", f"{run_dir} is not an autoscope run directory (no {RUN_FILE})")
    return json.loads(path.read_text())


def attach_mirror(store: RunStore, settings: Settings) -> None:
    """Copy the run to ``settings.store_url`` while it is written (nothing when that is unset).

    A URL that cannot be used closes the store and is a ``ConfigError`` naming the setting."""
    if not settings.store_url:
        return
    from autoscope.tools.mirror import MirrorError, mirror_store

    try:
        mirror_store(
            store,
            settings.store_url,
            endpoint_url=settings.store_endpoint_url,
            sync_interval_s=settings.store_sync_interval_s,
            close_timeout_s=settings.store_close_timeout_s,
            max_backoff_s=settings.store_max_backoff_s,
        )
    except MirrorError as exc:
        store.close()
        raise ConfigError("store_url", str(exc)) from None


def run_graph(
    run_dir: Path,
    *,
    spec: RunSpec,
    run_id: str,
    microscope: SafeMicroscope,
    store: RunStore,
    llm: LLM,
    policy: AutonomyPolicy,
    responder: Responder = headless,
    settings: Settings | None = None,
    on_step: Callable[[StepInfo], None] | None = None,
    on_status: Callable[[str], None] | None = None,
    context_hook: Callable[[RunContext], None] | None = None,
    policy_at_pending_gate: AutonomyPolicy | None = None,
) -> RunOutcome:
    """Start the graph, or continue it from its last checkpoint, until done or a person is needed.

    ``policy_at_pending_gate``: the policy the run stopped under, kept until the gate it stopped
    at is answered (a person's answer there is not overruled by a new autonomy level).
    """
    settings = settings or load_settings()
    ctx = RunContext(
        store=store,
        microscope=microscope,
        llm=llm,
        policy=policy,
        policy_until_answer=policy_at_pending_gate,
        spec=spec,
        run_dir=run_dir,
        repair_retries=settings.llm_repair_retries,
        on_step=on_step,
        on_status=on_status,
    )
    if context_hook:
        context_hook(ctx)
    config = {"configurable": {"thread_id": run_id}, "recursion_limit": 200}
    pending: GateRequest | None = None
    with open_checkpointer(run_dir, settings.checkpoint_url) as saver:
        graph = build_graph().compile(checkpointer=saver)
        snap = graph.get_state(config)
        if not snap.values:
            cmd: Any = {"goal": spec.goal, "notes": spec.notes}
            store.append_event("run_started", run_id=run_id, autonomy=policy.level, llm=llm.backend)
        else:
            cmd = None  # continue from the last checkpoint (a killed node runs again; its steps are stored)
            store.append_event("run_resumed", run_id=run_id, autonomy=policy.level, llm=llm.backend)
        while True:
            if snap.values and snap.interrupts:
                pending = GateRequest.model_validate(snap.interrupts[0].value)
                answer = responder(pending)
                if answer is None:
                    break
                pending = None
                cmd = Command(resume=answer.model_dump(mode="json"))
            elif snap.values and not snap.next and not snap.tasks:
                # done. (``next`` leaves out a task whose writes were saved before a kill; such a
                # task still has to be applied, and the graph goes on from there.)
                break
            # "sync": each step's checkpoint is on disk before the next step starts (the default
            # "async" writes it while the next step runs, so a kill can lose a step whose
            # instrument actions and log events already happened)
            graph.invoke(cmd, config, context=ctx, durability="sync")
            snap = graph.get_state(config)
        state = snap.values
        status = "stopped" if pending is not None else state.get("status", "running")
        if pending is not None:
            state = {**state, "stop_reason": f"waiting for a person at the {pending.gate} gate"}
        summ = summary(
            state,
            store,
            run_id=run_id,
            scenario=spec.scenario,
            seed=spec.seed,
            status=status,
            llm=llm_usage(store, llm.backend, llm.model),
            checkpoint_bytes=checkpoint_bytes(saver, config),
            pending=pending.model_dump(mode="json") if pending else None,
            question=spec.question,
        )
    write_outputs(run_dir, state, summ)
    log.info("run %s: %s; checkpoint %d bytes", run_id, status, summ["checkpoint_bytes"])
    return RunOutcome(run_dir=run_dir, status=status, summary=summ, pending=pending)


def fit_template(spec: RunSpec, caps) -> RunSpec:
    """The run's template with a survey field the instrument can scan (a recording covers less than
    a twin): the largest square field inside its stage travel, centred there."""
    sv = spec.template.survey
    side = min(
        caps.max_fov_nm, caps.stage.x_max_nm - caps.stage.x_min_nm, caps.stage.y_max_nm - caps.stage.y_min_nm
    )
    if sv.fov_nm <= side:
        return spec
    survey = sv.model_copy(
        update={
            "fov_nm": side,
            "center_x_nm": (caps.stage.x_min_nm + caps.stage.x_max_nm) / 2,
            "center_y_nm": (caps.stage.y_min_nm + caps.stage.y_max_nm) / 2,
        }
    )
    log.info(
        "survey field %.4g nm is larger than the instrument's %.4g nm: surveying %.4g nm",
        sv.fov_nm,
        side,
        side,
    )
    return spec.model_copy(update={"template": spec.template.with_(survey=survey.model_dump())})


@dataclass
class RunOptions:
    """What ``autoscope run``/``resume``/``chat`` choose beyond the run file."""

    autonomy: str | None = None
    llm: str | None = None
    limits: Path | None = None
    sim_config: Path | None = None
    remote: str | None = None
    token: str | None = None
    replay: Path | None = None
    backend: str | None = None  # "nion": a Nion column over nion.instrumentation (default: the twin)
    nion_config: Path | None = None


def launch(
    run_dir: Path,
    spec: RunSpec | None,
    options: RunOptions,
    *,
    responder: Responder = headless,
    on_step: Callable[[StepInfo], None] | None = None,
    on_status: Callable[[str], None] | None = None,
    context_hook: Callable[[RunContext], None] | None = None,
    llm: LLM | None = None,
    wrap_backend: Callable[[Microscope], Microscope] | None = None,
) -> RunOutcome:
    """Start a run (``spec`` given) or resume the run in ``run_dir`` (``spec`` None).

    ``llm`` and ``wrap_backend`` are for tests (a scripted model; a recorder around the twin).
    """
    from autoscope.instruments.factory import open_backend

    settings = load_settings()
    run_dir = Path(run_dir)
    if spec is None:
        record = load_run_file(run_dir)
        spec = RunSpec.model_validate(record["spec"])
        autonomy = options.autonomy or record["autonomy"]
        backend = options.llm or record["llm"]
        limits_path = options.limits or (Path(record["limits"]) if record.get("limits") else None)
        remote = options.remote or record.get("remote")
        replay = options.replay or (Path(record["replay"]) if record.get("replay") else None)
        sim_config = options.sim_config or (Path(record["sim_config"]) if record.get("sim_config") else None)
        instrument = options.backend or record.get("backend")
        nion_config = options.nion_config or (Path(record["nion_config"]) if record.get("nion_config") else None)
        run_id = record["run_id"]
        before = AutonomyPolicy.model_validate({"level": record["autonomy"]})
        if autonomy != record["autonomy"]:
            save_run_file(run_dir, {**record, "autonomy": autonomy})
    else:
        before = None
        if (run_dir / RUN_FILE).exists():
            raise ConfigError(
                "out", f"{run_dir} already holds a run; continue it with `autoscope resume {run_dir}`"
            )
        autonomy = options.autonomy or settings.autonomy
        backend = options.llm or settings.llm
        limits_path, remote, sim_config = options.limits, options.remote, options.sim_config
        replay = options.replay
        instrument, nion_config = options.backend, options.nion_config
        run_id = f"{run_dir.name}-{uuid.uuid4().hex[:8]}"
    policy = AutonomyPolicy.model_validate({"level": autonomy})
    limits = SafetyLimits.from_file(limits_path or settings.limits_file)
    llm = llm or make_llm(backend, settings)
    backend = llm.backend
    store = RunStore.open_or_create(
        run_dir, meta={"command": "run", "scenario": spec.scenario, "seed": spec.seed}
    )
    attach_mirror(store, settings)
    with store, contextlib.ExitStack() as store_exit:
        if not (run_dir / RUN_FILE).exists():
            save_run_file(
                run_dir,
                {
                    "run_id": run_id,
                    "spec": spec.model_dump(mode="json"),
                    "autonomy": autonomy,
                    "llm": backend,
                    "limits": str(limits_path) if limits_path else None,
                    "remote": remote,
                    "replay": str(replay) if replay else None,
                    "sim_config": str(sim_config) if sim_config else None,
                    "backend": instrument,
                    "nion_config": str(nion_config) if nion_config else None,
                },
            )
        inner = open_backend(
            backend=instrument,
            nion_config=nion_config,
            scenario=None if remote or replay or instrument == "nion" else spec.scenario,
            seed=spec.seed,
            sample=spec.sample,
            sim_config=sim_config,
            replay=replay,
            remote=remote,
            token=options.token or settings.token,
            timeout_s=settings.remote_timeout_s,
            retries=settings.remote_retries,
        )
        # the back end as opened (a test's wrapper need not forward close): the Nion simulator's
        # threads must be stopped before exit
        store_exit.callback(close_instrument, inner)
        if wrap_backend is not None:
            inner = wrap_backend(inner)
        if replay is not None or instrument == "nion":
            spec = fit_template(spec, inner.capabilities())
        scope = SafeMicroscope(
            inner, limits, on_event=lambda e: store.append_event(**e), history=store.events(DOSE_EVENTS)
        )
        return run_graph(
            run_dir,
            spec=spec,
            run_id=run_id,
            microscope=scope,
            store=store,
            llm=llm,
            policy=policy,
            responder=responder,
            settings=settings,
            on_step=on_step,
            on_status=on_status,
            context_hook=context_hook,
            policy_at_pending_gate=before,
        )
