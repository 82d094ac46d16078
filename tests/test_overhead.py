"""``autoscope bench overhead``: the meter's bookkeeping, and a tiny whole run measured by it."""

from __future__ import annotations

import json
import threading
import time

import pytest

from autoscope.evals.overhead import LEAVES, PARTS, Meter, bench_overhead, metered

TINY = {"spectra": 20, "rounds": 1, "real_time": False}


def _check_shape(r: dict) -> None:
    for key in ("wall_s", "agent_overhead_s", "agent_overhead_pct", "target_pct", "meets_target", "status"):
        assert key in r
    assert set(r["parts_s"]) == set(PARTS) == set(r["share_pct"])
    assert set(r["detail"]["zones_s"]) == {"node", "graph", "outside"}
    assert set(r["detail"]["calls"]) == set(LEAVES)


@pytest.fixture(scope="module")
def tiny() -> dict:
    """One tiny run through the command line (its JSON)."""
    from typer.testing import CliRunner

    from autoscope.agents.cli import app

    args = ["bench", "overhead", "--spectra", "20", "--rounds", "1", "--no-real-time", "--json"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_a_run_splits_into_parts_that_add_up_to_its_wall_time(tiny: dict):
    r = tiny
    _check_shape(r)
    assert r["status"] == "done" and r["measurements"] > 0
    parts = r["parts_s"]
    assert all(v >= -1e-6 for v in parts.values()), parts
    assert sum(parts.values()) <= r["wall_s"] * 1.01 + 1e-3
    assert sum(parts.values()) == pytest.approx(r["wall_s"], rel=1e-6, abs=1e-6)
    # the wrappers saw calls
    calls = r["detail"]["calls"]
    assert parts["store"] > 0 and calls["store"] > 0
    assert parts["checkpoints"] > 0 and calls["checkpoints"] > 0
    assert parts["instrument"] > 0 and calls["instrument"] > 0
    assert calls["llm"] == 0 and parts["llm"] == 0  # --llm none: no model is asked
    overhead = parts["graph_machinery"] + parts["checkpoints"] + parts["store"]
    assert r["agent_overhead_s"] == pytest.approx(overhead)
    assert r["agent_overhead_pct"] == pytest.approx(100 * overhead / r["wall_s"])


def test_where_the_parts_fall_store_in_nodes_checkpoints_between_them(tiny: dict):
    d = tiny["detail"]
    zones = d["zones_s"]
    assert d["nodes_off_thread"] == 0  # every node ran on the run's thread
    assert {"survey", "hypothesize", "plan", "execute", "analyze", "report"} <= set(d["nodes_s"])
    # LangGraph calls the saver between nodes, never from inside one; only a sliver of its background
    # writes runs beside the next node (durability "sync" awaits the checkpoint, not every put_writes)
    assert zones["node"]["checkpoints"] == 0
    assert d["concurrent_s"]["checkpoints"] < 0.2 * tiny["parts_s"]["checkpoints"]
    assert zones["graph"]["checkpoints"] > 0
    # the store is written by nodes and by the runner outside the graph, not by LangGraph
    assert zones["node"]["store"] > 0 and zones["outside"]["store"] > 0
    assert zones["graph"]["store"] == 0
    assert zones["node"]["instrument"] > 0 and zones["graph"]["instrument"] == 0


def test_a_slowed_store_raises_the_measured_store_share(tiny: dict, monkeypatch, tmp_path):
    from autoscope.tools.store import RunStore

    append = RunStore.append_event

    def slow(self, kind, **fields):
        time.sleep(0.005)
        return append(self, kind, **fields)

    monkeypatch.setattr(RunStore, "append_event", slow)
    r = bench_overhead(**TINY, keep_dir=tmp_path)
    _check_shape(r)
    before, after = tiny["parts_s"]["store"], r["parts_s"]["store"]
    assert after > before + 0.05  # well over ten events at 5 ms each
    assert r["share_pct"]["store"] > tiny["share_pct"]["store"]
    assert RunStore.append_event is slow  # the meter put back what it found


def test_nested_calls_count_once_and_an_inner_leaf_pauses_the_outer():
    m = Meter()
    with m.run(), m.leaf("store"):
        time.sleep(0.02)
        with m.leaf("store"):  # nested in its own kind: counted by the outer call
            time.sleep(0.02)
        with m.leaf("instrument"):  # a different kind inside: its time is its own
            time.sleep(0.03)
    r = m.breakdown()
    parts = r["parts_s"]
    assert parts["store"] == pytest.approx(0.04, abs=0.015)
    assert parts["instrument"] == pytest.approx(0.03, abs=0.015)
    assert m.calls["store"] == 1
    assert sum(parts.values()) == pytest.approx(r["wall_s"])


def test_background_leaves_are_booked_by_where_the_run_thread_was():
    m = Meter()
    node = m.node("n", lambda: time.sleep(0.05))
    graph = m.graph_call(lambda f: f())

    def write():
        with m.leaf("checkpoints"):
            time.sleep(0.04)

    def between() -> None:
        t = threading.Thread(target=write)
        t.start()
        t.join()

    def body() -> None:
        between()  # the graph waits for a background write between nodes: counted
        t = threading.Thread(target=write)
        t.start()
        node()  # a write beside a node: only reported as concurrent
        t.join()

    with m.run():
        graph(body)
    r = m.breakdown()
    assert r["parts_s"]["checkpoints"] == pytest.approx(0.04, abs=0.02)
    assert r["detail"]["concurrent_s"]["checkpoints"] == pytest.approx(0.04, abs=0.02)
    assert r["parts_s"]["graph_machinery"] >= -1e-6
    assert sum(r["parts_s"].values()) == pytest.approx(r["wall_s"])


def test_metered_restores_what_it_patched_even_on_error():
    from langgraph.graph import StateGraph

    from autoscope.tools.store import RunStore

    before = (RunStore.append_event, RunStore.open_or_create, StateGraph.add_node, StateGraph.compile)
    with pytest.raises(RuntimeError), metered(Meter()):
        assert RunStore.append_event is not before[0]
        raise RuntimeError("boom")
    assert (RunStore.append_event, RunStore.open_or_create, StateGraph.add_node, StateGraph.compile) == before
