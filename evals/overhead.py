"""``autoscope bench overhead``: how much of a campaign's wall time the agent itself costs.

One whole run of the agent graph in this process, through the evaluation harness
(``evals/harness.py`` ``run_task``: the deterministic planner, ``--llm none``, autonomous, one
torch/BLAS thread, figures off unless asked), on the twin in real time (``SimConfig.real_time``:
every acquisition, stage move and wait lasts its simulated time on the wall clock, as on a real
column). While it runs, a ``Meter`` patches (and afterwards restores) what it times:

* **instrument**: every call into the back end the run opens (``instruments.factory.open_backend``
  wrapped), below the safety wrapper: acquisitions, moves, beam, status, clock (opening it, which
  on the twin is drawing the sample, is not: it falls in other outside, shown as ``backend_open_s``);
* **store**: every public method of ``RunStore`` (classmethods included);
* **checkpoints**: the checkpointer the run opens (``agents.runner.open_checkpointer`` wrapped):
  opening it, ``put``, ``put_writes``, ``get_tuple``, ``list``… and its serializer;
* **model**: the surrogate's ``fit`` and ``predict`` and the acquisition function's choice
  (``tools.campaign.choose_detailed``);
* **llm**: the client's ``complete_json`` (none is asked with ``--llm none``: zero);
* **nodes**: every graph node (``StateGraph.add_node`` wrapped while the graph is built);
* **graph calls**: ``compile``, ``invoke``/``stream`` and ``get_state`` of the compiled graph.

Leaf parts (instrument, store, checkpoints, model, llm) are counted as self time on the run's
thread: a call nested in one of its own kind is counted once, a leaf called inside another leaf
pauses the outer one. Each leaf second is booked to the zone the run's thread was in — inside a
node, inside a graph call but between nodes, or outside the graph (setting up, the summary,
``report.md``). Calls on other threads (LangGraph's background executor may write checkpoints
there) are kept as intervals and booked by their overlap with those zones: what overlaps the
time between nodes is on the graph's critical path (its loop waits for the write, or shares the
interpreter with it) and is counted; what overlaps a node (or falls outside the graph) runs beside
the run's own work and is only reported (``concurrent_s``). So the parts add up to the wall time::

    wall = instrument + model + llm + store + checkpoints
           + graph machinery   (graph calls − nodes − the leaves between nodes)
           + other node work   (nodes − the leaves inside them: analysis, planner, scalarising, figures)
           + other outside     (outside the graph − its leaves)

and **agent overhead = graph machinery + checkpoints + store**, as a share of the wall time
(target ≤ 5 %). ``detail`` shows the zones each part fell in, per-node times and call counts,
and the campaigns' own ``Timing`` (from their ``campaign_complete`` events) as a cross-check.
The meter costs a few microseconds a call (included in the part it times).

Result (``bench_overhead``)::

    {"scenario", "seed", "spectra", "rounds", "real_time", "figures", "status", "measurements",
     "wall_s", "parts_s": {part: s}, "share_pct": {part: %},
     "agent_overhead_s", "agent_overhead_pct", "target_pct", "meets_target",
     "detail": {"zones_s": {zone: {leaf: s}}, "concurrent_s": {leaf: s}, "calls": {leaf: n},
                "methods": {"leaf.method": {"calls", "s"}} (self time on the run's thread),
                "nodes_s": {node: s}, "node_calls": {node: n}, "nodes_off_thread": n,
                "graph_calls_s", "nodes_total_s", "campaign_timing": {...},
                "simulated_instrument_s", "backend_open_s"}}
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

LEAVES = ("instrument", "store", "checkpoints", "model", "llm")
ZONES = ("node", "graph", "outside")
#: the parts of the wall time, in the order they are shown
PARTS = (
    "instrument",
    "model",
    "llm",
    "store",
    "checkpoints",
    "graph_machinery",
    "other_node_work",
    "other_outside",
)
OVERHEAD_PARTS = ("graph_machinery", "checkpoints", "store")
TARGET_PCT = 5.0
#: the checkpointer's methods LangGraph (and the runner) call
SAVER_METHODS = ("put", "put_writes", "get", "get_tuple", "list", "delete_thread", "get_next_version")
_MISSING = object()


# ------------------------------------------------------------------ intervals
def _union(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _overlap(xs: list[tuple[float, float]], ys: list[tuple[float, float]]) -> float:
    """Total length of the intersection of two sorted, disjoint interval lists."""
    i = j = 0
    total = 0.0
    while i < len(xs) and j < len(ys):
        lo, hi = max(xs[i][0], ys[j][0]), min(xs[i][1], ys[j][1])
        total += max(0.0, hi - lo)
        if xs[i][1] < ys[j][1]:
            i += 1
        else:
            j += 1
    return total


def _length(xs: list[tuple[float, float]]) -> float:
    return sum(b - a for a, b in xs)


# ------------------------------------------------------------------ the meter
class Meter:
    """Accumulates wall time per part while ``on``; see the module doc."""

    def __init__(self) -> None:
        self.on = False
        self.main: int | None = None
        self.wall_s = 0.0
        self.zones = {z: dict.fromkeys(LEAVES, 0.0) for z in ZONES}
        self.calls = dict.fromkeys(LEAVES, 0)
        self.methods: dict[str, list[float]] = {}  # "kind.method": [calls, self seconds] (run thread)
        self.node_s: dict[str, float] = {}
        self.node_calls: dict[str, int] = {}
        self.nodes_off_thread = 0
        self._stack: list[list[Any]] = []  # the run thread's open leaf calls: [kind, resumed at]
        self._node_depth = 0
        self._graph_depth = 0
        self._node_iv: list[tuple[float, float]] = []
        self._graph_iv: list[tuple[float, float]] = []
        self._window: tuple[float, float] = (0.0, 0.0)
        self._bg: dict[str, list[tuple[float, float]]] = {k: [] for k in LEAVES}
        self._local = threading.local()
        self._lock = threading.Lock()

    # the zone of the run's thread now
    def _zone(self) -> str:
        return "node" if self._node_depth else "graph" if self._graph_depth else "outside"

    @contextlib.contextmanager
    def run(self) -> Iterator[None]:
        """The measured window: the run, on this thread."""
        self.main, self.on = threading.get_ident(), True
        t0 = time.perf_counter()
        try:
            yield
        finally:
            t1 = time.perf_counter()
            self.on = False
            self.wall_s += t1 - t0
            self._window = (t0, t1)

    @contextlib.contextmanager
    def leaf(self, kind: str, label: str = "") -> Iterator[None]:
        if not self.on:
            yield
            return
        if threading.get_ident() != self.main:
            with self._background(kind):
                yield
            return
        if any(f[0] == kind for f in self._stack):  # inside a call of its own kind: counted there
            yield
            return
        now = time.perf_counter()
        if self._stack:  # pause the leaf this one is called from
            outer = self._stack[-1]
            self.zones[self._zone()][outer[0]] += now - outer[1]
        frame = [kind, now]
        self._stack.append(frame)
        self.calls[kind] += 1
        self_s = self._self_s(kind)
        try:
            yield
        finally:
            now = time.perf_counter()
            self.zones[self._zone()][kind] += now - frame[1]
            self._stack.pop()
            if self._stack:
                self._stack[-1][1] = now
            if label:
                m = self.methods.setdefault(f"{kind}.{label}", [0, 0.0])
                m[0] += 1
                m[1] += self._self_s(kind) - self_s

    def _self_s(self, kind: str) -> float:
        return sum(self.zones[z][kind] for z in ZONES)

    @contextlib.contextmanager
    def _background(self, kind: str) -> Iterator[None]:
        depth = getattr(self._local, kind, 0)
        setattr(self._local, kind, depth + 1)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            setattr(self._local, kind, depth)
            if depth == 0:
                with self._lock:
                    self._bg[kind].append((t0, time.perf_counter()))

    def timed(self, kind: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        label = getattr(fn, "__name__", "")

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            with self.leaf(kind, label):
                return fn(*args, **kwargs)

        return call

    @contextlib.contextmanager
    def _region(self, which: str) -> Iterator[None]:
        """A node (``which`` its name) or a graph call (``which`` None), on the run's thread."""
        if not self.on or threading.get_ident() != self.main:
            if self.on and which is not None:
                self.nodes_off_thread += 1
            yield
            return
        attr = "_graph_depth" if which is None else "_node_depth"
        depth = getattr(self, attr)
        t0 = time.perf_counter()
        if self._stack:  # a region opened inside a leaf call: the leaf's time so far stays where it was
            outer = self._stack[-1]
            self.zones[self._zone()][outer[0]] += t0 - outer[1]
            outer[1] = t0
        setattr(self, attr, depth + 1)
        try:
            yield
        finally:
            t1 = time.perf_counter()
            if self._stack:
                outer = self._stack[-1]
                self.zones[self._zone()][outer[0]] += t1 - outer[1]
                outer[1] = t1
            setattr(self, attr, depth)
            if depth == 0:
                if which is None:
                    self._graph_iv.append((t0, t1))
                else:
                    self._node_iv.append((t0, t1))
                    self.node_s[which] = self.node_s.get(which, 0.0) + t1 - t0
                    self.node_calls[which] = self.node_calls.get(which, 0) + 1

    def node(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)  # LangGraph reads the node's signature (runtime) through __wrapped__
        def call(*args: Any, **kwargs: Any) -> Any:
            with self._region(name):
                return fn(*args, **kwargs)

        return call

    def graph_call(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            with self._region(None):
                return fn(*args, **kwargs)

        return call

    # ---------------------------------------------------------------- the figures
    def breakdown(self) -> dict[str, Any]:
        """Parts of the wall time, the agent overhead and the detail (see the module doc)."""
        nodes = _union(self._node_iv)
        graph = _union(self._graph_iv)
        lo, hi = self._window
        zones = {z: dict(v) for z, v in self.zones.items()}
        concurrent = dict.fromkeys(LEAVES, 0.0)
        for kind, ivs in self._bg.items():
            u = _union([(max(a, lo), min(b, hi)) for a, b in ivs if b > lo and a < hi])
            in_nodes = _overlap(u, nodes)
            between = _overlap(u, graph) - in_nodes  # nodes lie inside graph calls
            concurrent[kind] = in_nodes + max(0.0, _length(u) - in_nodes - between)
            zones["graph"][kind] += max(0.0, between)
        graph_s, nodes_s = _length(graph), sum(self.node_s.values())
        wall = self.wall_s
        parts = {k: sum(zones[z][k] for z in ZONES) for k in LEAVES}
        parts["graph_machinery"] = graph_s - nodes_s - sum(zones["graph"].values())
        parts["other_node_work"] = nodes_s - sum(zones["node"].values())
        parts["other_outside"] = wall - graph_s - sum(zones["outside"].values())
        overhead = sum(parts[k] for k in OVERHEAD_PARTS)
        pct = 100.0 * overhead / wall if wall > 0 else 0.0
        return {
            "wall_s": wall,
            "parts_s": {k: parts[k] for k in PARTS},
            "share_pct": {k: (100.0 * parts[k] / wall if wall > 0 else 0.0) for k in PARTS},
            "agent_overhead_s": overhead,
            "agent_overhead_pct": pct,
            "target_pct": TARGET_PCT,
            "meets_target": pct <= TARGET_PCT,
            "detail": {
                "zones_s": zones,
                "concurrent_s": concurrent,
                "calls": {k: n + len(self._bg[k]) for k, n in self.calls.items()},
                "methods": {k: {"calls": int(n), "s": s} for k, (n, s) in sorted(self.methods.items())},
                "nodes_s": dict(self.node_s),
                "node_calls": dict(self.node_calls),
                "nodes_off_thread": self.nodes_off_thread,
                "graph_calls_s": graph_s,
                "nodes_total_s": nodes_s,
            },
        }


# ------------------------------------------------------------------ patching
class _Patches:
    """``setattr`` that remembers what it replaced; ``restore`` puts it all back."""

    def __init__(self) -> None:
        self._undo: list[tuple[Any, str, Any]] = []

    def set(self, owner: Any, name: str, value: Any) -> None:
        self._undo.append((owner, name, vars(owner).get(name, _MISSING)))
        setattr(owner, name, value)

    def wrap_method(self, cls: type, name: str, wrap: Callable[[Callable], Callable]) -> None:
        raw = inspect.getattr_static(cls, name)
        if isinstance(raw, classmethod):
            self.set(cls, name, classmethod(wrap(raw.__func__)))
        elif isinstance(raw, staticmethod):
            self.set(cls, name, staticmethod(wrap(raw.__func__)))
        else:
            self.set(cls, name, wrap(raw))

    def restore(self) -> None:
        while self._undo:
            owner, name, old = self._undo.pop()
            if old is _MISSING:
                delattr(owner, name)
            else:
                setattr(owner, name, old)


def _public_methods(cls: type) -> list[str]:
    return [
        name
        for name, raw in inspect.getmembers_static(cls)
        if not name.startswith("_") and isinstance(raw, (staticmethod, classmethod, type(_union)))
    ]


def timed_backend(inner: Any, meter: Meter) -> Any:
    """``inner`` with every public method timed as instrument time (attributes pass through)."""
    names = [n for n in dir(type(inner)) if not n.startswith("_") and callable(getattr(inner, n, None))]

    def forward(name: str) -> Callable[..., Any]:
        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            with meter.leaf("instrument", name):
                return getattr(self._inner, name)(*args, **kwargs)

        call.__name__ = name
        return call

    def getattr_(self: Any, name: str) -> Any:
        return getattr(self._inner, name)

    cls = type(
        f"Timed{type(inner).__name__}",
        (),
        {"__getattr__": getattr_, **{n: forward(n) for n in names}},
    )
    proxy = cls.__new__(cls)
    proxy.__dict__["_inner"] = inner
    return proxy


@contextlib.contextmanager
def metered(meter: Meter) -> Iterator[dict[str, Any]]:
    """Patch everything the meter times for the length of the block (restored after, also on error).

    Yields a dict that receives the back end the run opened (``"backend"``: the twin, for its clock)."""
    from langgraph.graph import StateGraph
    from langgraph.pregel import Pregel

    import autoscope.evals.harness as harness
    import autoscope.instruments.factory as factory
    import autoscope.tools.campaign as campaign
    from autoscope.agents import runner
    from autoscope.tools.acquisition import Acquirer
    from autoscope.tools.ml.recovery import RecoveringSurrogate
    from autoscope.tools.pipeline import DecisionPipeline
    from autoscope.tools.store import RunStore

    seen: dict[str, Any] = {}
    p = _Patches()
    try:
        for name in _public_methods(RunStore):
            p.wrap_method(RunStore, name, lambda f: meter.timed("store", f))
        for name in ("fit", "predict"):
            p.wrap_method(RecoveringSurrogate, name, lambda f: meter.timed("model", f))
        p.set(campaign, "choose_detailed", meter.timed("model", campaign.choose_detailed))
        # pipelined (tools/pipeline.py): the fits run on a worker thread (booked by their overlap);
        # what the run's thread waits is the pipeline landing a decision (model) and the
        # acquirer's write in flight (store)
        p.wrap_method(DecisionPipeline, "_land", lambda f: meter.timed("model", f))
        p.wrap_method(Acquirer, "flush", lambda f: meter.timed("store", f))
        for name in ("invoke", "stream", "get_state"):
            p.wrap_method(Pregel, name, meter.graph_call)
        p.wrap_method(StateGraph, "compile", meter.graph_call)
        add_node = StateGraph.add_node

        def add_timed_node(self: Any, node: Any, action: Any = None, **kwargs: Any) -> Any:
            if isinstance(node, str) and callable(action):
                action = meter.node(node, action)
            return add_node(self, node, action, **kwargs)

        p.set(StateGraph, "add_node", add_timed_node)
        open_backend = factory.open_backend

        def open_timed_backend(**kwargs: Any) -> Any:
            t0 = time.perf_counter()  # building the twin's sample: not instrument time (other outside)
            seen["backend"] = open_backend(**kwargs)
            seen["open_s"] = time.perf_counter() - t0
            return timed_backend(seen["backend"], meter)

        p.set(factory, "open_backend", open_timed_backend)
        open_checkpointer = runner.open_checkpointer

        @contextlib.contextmanager
        def open_timed_checkpointer(*args: Any, **kwargs: Any) -> Iterator[Any]:
            cm = open_checkpointer(*args, **kwargs)
            with meter.leaf("checkpoints"):
                saver = cm.__enter__()
            try:
                for name in SAVER_METHODS:
                    if callable(getattr(saver, name, None)):
                        setattr(saver, name, meter.timed("checkpoints", getattr(saver, name)))
                for name in ("dumps_typed", "loads_typed"):
                    setattr(saver.serde, name, meter.timed("checkpoints", getattr(saver.serde, name)))
                yield saver
            except BaseException as exc:
                if not cm.__exit__(type(exc), exc, exc.__traceback__):
                    raise
            else:
                with meter.leaf("checkpoints"):
                    cm.__exit__(None, None, None)

        p.set(runner, "open_checkpointer", open_timed_checkpointer)
        make_llm = runner.make_llm

        def make_timed_llm(*args: Any, **kwargs: Any) -> Any:
            llm = make_llm(*args, **kwargs)
            llm.complete_json = meter.timed("llm", llm.complete_json)
            return llm

        p.set(runner, "make_llm", make_timed_llm)
        launch = harness.launch

        def launch_metered(*args: Any, **kwargs: Any) -> Any:
            with meter.run():
                return launch(*args, **kwargs)

        p.set(harness, "launch", launch_metered)
        yield seen
    finally:
        p.restore()


# ------------------------------------------------------------------ the benchmark
def _campaign_timing(run_dir: Path) -> dict[str, float]:
    """The campaigns' own ``Timing``, summed over the run's ``campaign_complete`` events."""
    from autoscope.tools.store import RunStore

    keys = ("wall_s", "instrument_s", "decision_wait_s", "model_s")
    total = dict.fromkeys(keys, 0.0)
    events = RunStore.open(run_dir, read_only=True).events("campaign_complete")
    for e in events:
        for k in keys:
            total[k] += float((e.get("timing") or {}).get(k, 0.0))
    return {**total, "campaigns": len(events)}


def bench_overhead(
    spectra: int = 300,
    rounds: int = 3,
    *,
    scenario: str = "plasmonic",
    seed: int = 0,
    real_time: bool = True,
    figures: bool = False,
    keep_dir: Path | None = None,
    pipeline: bool = False,
) -> dict[str, Any]:
    """One deterministic run measured by the ``Meter``; the result described in the module doc."""
    from autoscope.evals.harness import run_task
    from autoscope.evals.tasks import Family, Suite, tasks

    family = Family(
        name=f"overhead-{scenario}",
        scenario=scenario,  # type: ignore[arg-type]
        seeds=1,
        seed_base=seed,
        sim={"real_time": real_time},
        budget=spectra,
        rounds=rounds,
        autonomy="autonomous",
        pipeline=pipeline,
    )
    (task,) = tasks(Suite(name="overhead", families=[family]), "all")
    meter = Meter()
    with tempfile.TemporaryDirectory(prefix="autoscope-overhead-") as tmp:
        out = Path(keep_dir or tmp)
        with metered(meter) as seen:
            result = run_task(task, "none", out, figures=figures, score=False)
        if result["error"]:
            raise RuntimeError(f"the measured run failed: {result['error']}")
        timing = _campaign_timing(out / result["run_dir"])
    numbers = meter.breakdown()
    numbers["detail"]["campaign_timing"] = timing
    backend = seen.get("backend")
    numbers["detail"]["simulated_instrument_s"] = float(backend.now_s()) if backend is not None else None
    numbers["detail"]["backend_open_s"] = seen.get("open_s")
    return {
        "scenario": scenario,
        "seed": seed,
        "spectra": spectra,
        "rounds": rounds,
        "real_time": real_time,
        "figures": figures,
        "pipeline": pipeline,
        "status": result["status"],
        "measurements": result["spectra"],
        **numbers,
    }


__all__ = ["LEAVES", "Meter", "PARTS", "TARGET_PCT", "bench_overhead", "metered", "timed_backend"]
