"""The evaluation harness: tasks from seeds, the scorer against the oracle, Dask, kill and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autoscope.evals.eval_report import aggregate, balanced_accuracy
from autoscope.evals.harness import parse_backends, run_eval, run_task
from autoscope.evals.injection import ObeyingLLM
from autoscope.evals.questions import score_answer
from autoscope.evals.tasks import NOTE_CASES, Task, load_suite, tasks
from autoscope.instruments.errors import ConfigError
from autoscope.instruments.sim.scenarios import build_sample

AUTOSCOPE = [sys.executable, "-m", "autoscope"]
VOLATILE = ("wall_s", "run_dir")


def _stable(r: dict) -> dict:
    out = {k: v for k, v in r.items() if k not in VOLATILE}
    out["llm"] = {k: v for k, v in (r.get("llm") or {}).items() if k != "latency_s"}
    return out


# ------------------------------------------------------------------ tasks
def test_the_standard_suite_has_thirty_tasks_over_three_scenarios_split_apart() -> None:
    suite = load_suite("standard")
    every = tasks(suite)
    assert len(every) >= 30 and {t.scenario for t in every} == {"plasmonic", "tmd-defects", "oxide-interface"}
    dev, test = tasks(suite, "dev"), tasks(suite, "test")
    assert {t.id for t in dev}.isdisjoint({t.id for t in test}) and len(dev) + len(test) == len(every)
    assert {t.seed for t in dev}.isdisjoint({t.seed for t in test})
    assert any(t.injection_case for t in every) and any(t.person for t in every)


def test_a_bad_suite_names_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: x\nfamilies:\n  - {name: a, scenario: plasmonic, seeds: 2, sample: {rod_aspekt: [1, 2]}}\n"
    )
    with pytest.raises(ConfigError, match="rod_aspekt"):
        load_suite(bad)
    bad.write_text(
        "name: x\nfamilies:\n  - {name: a, scenario: plasmonic, seeds: 2, person: {analysis: [reject]}}\n"
    )
    with pytest.raises(ConfigError, match="manual"):
        load_suite(bad)
    with pytest.raises(ConfigError, match="backends"):
        parse_backends("none,gpt5")


def test_a_sample_variant_changes_the_physics_and_the_default_changes_nothing() -> None:
    plain, same = build_sample("plasmonic", 3), build_sample("plasmonic", 3, {"rod_aspect": [2.5, 7.0]})
    assert [(p.kind, p.size_nm) for p in plain.particles] == [(p.kind, p.size_nm) for p in same.particles]
    short = build_sample("plasmonic", 3, {"rod_aspect": [1.5, 2.8]})
    dipoles = [m.energy_eV for p in short.particles if p.kind == "rod" for m in p.modes if m.name == "dipole"]
    assert dipoles and min(dipoles) > 1.7  # every short rod's dipole lies above the 1.1-1.7 eV band
    sparse = build_sample("tmd-defects", 3, {"defect_counts": {"O_S": [2, 2]}})
    assert sum(d["type"] == "O_S" for d in sparse.defects) == 2
    moved = build_sample("oxide-interface", 3, {"interface_shift_nm": 7.0})
    assert (
        abs(float((moved.interface_x_nm - build_sample("oxide-interface", 3).interface_x_nm).mean()) - 7.03)
        < 0.2
    )


# ------------------------------------------------------------------ the scorer
def test_always_supported_scores_at_chance_on_verdicts() -> None:
    """Balanced accuracy: a planner whose verdicts are all "supported" gets 0.5 whatever the share of
    true claims (plain agreement would reward it for a mostly-true task set)."""
    rows = [{"outcome": "supported", "holds": h} for h in [True] * 7 + [False] * 3]
    assert balanced_accuracy(rows) == 0.5
    right = [{"outcome": "supported" if h else "refuted", "holds": h} for h in [True] * 7 + [False] * 3]
    assert balanced_accuracy(right) == 1.0
    results = [
        {"task": f"t{i}", "backend": "yes-man", "scenario": "plasmonic", "family": "f", "score": 0.0, "success": "NO",
         "verdicts": [r]}
        for i, r in enumerate(rows)
    ]  # fmt: skip
    assert aggregate(results)["by_backend"]["yes-man"]["verdict_balanced_accuracy"][0] == 0.5


def test_success_flips_when_the_ground_truth_is_flipped() -> None:
    hosts = {"kind": "hosts", "parts": {"rod_tip": True, "cube_corner": False}}
    said = {"parts": {"rod_tip": {"says": "yes"}, "cube_corner": {"says": "no"}}}
    assert score_answer(hosts, said)["success"] == "YES"
    flipped = {"kind": "hosts", "parts": {"rod_tip": False, "cube_corner": True}}
    assert score_answer(flipped, said)["success"] == "NO"
    half = {"parts": {"rod_tip": {"says": "yes"}, "cube_corner": {"says": "undecided"}}}
    assert score_answer(hosts, half)["success"] == "PARTIAL"
    shift = {"kind": "shift", "parts": {"direction": "up", "magnitude": 1.9}}
    said = {"parts": {"direction": {"says": "up"}}, "shift": {"estimate": 1.8, "ci": [1.6, 2.0]}}
    assert score_answer(shift, said)["success"] == "YES"
    assert score_answer({**shift, "parts": {"direction": "down", "magnitude": -1.9}}, said)["success"] == "NO"
    assert score_answer({**shift, "parts": {"direction": "up", "magnitude": 2.5}}, said)["success"] == "NO"
    # strongest: the class, and whether every candidate the sample has was measured
    where = {
        "kind": "strongest",
        "parts": {"strongest": "dim_site_dimmer", "measured": ["a", "dim_site_dimmer"]},
    }
    said = {"parts": {"strongest": {"says": "dim_site_dimmer", "measured": ["a", "dim_site_dimmer"]}}}
    assert score_answer(where, said)["success"] == "YES"
    said["parts"]["strongest"]["measured"] = ["dim_site_dimmer"]
    assert score_answer(where, said)["success"] == "PARTIAL"  # right, but a candidate went unmeasured
    absent = {"kind": "strongest", "parts": {"strongest": "none", "measured": ["dim_site_dimmer"]}}
    assert score_answer(absent, said)["success"] == "NO"  # it names a class where no signal stands out
    said["parts"]["strongest"]["says"] = "undecided"
    assert score_answer(absent, said)["success"] == "YES"


def _stop_task(seed: int = 12) -> Task:
    base = tasks(load_suite("smoke"))[0]
    return base.model_copy(
        update={"id": f"stop-s{seed}", "seed": seed, "rounds": 2, "budget": 50, "autonomy": "manual",
                "person": {"analysis": ["reject"]}}
    )  # fmt: skip


def test_measuring_on_after_a_persons_reject_is_sleepwalking(tmp_path: Path, monkeypatch) -> None:
    """The graph ends the run at a reject at the analysis gate (0 counted); a planner that goes on to
    the next hypothesis anyway is counted, spectrum by spectrum."""
    task = _stop_task()
    obeys = run_task(task, "none", tmp_path)
    assert obeys["status"] == "done" and obeys["sleepwalking"]["after_reject"] == 0
    assert len(obeys["verdicts"]) == 1

    import autoscope.agents.graph as graph

    monkeypatch.setattr(
        graph, "after_analysis_gate", lambda s: "hypothesize" if graph.more_rounds(s) else "report"
    )
    walks = run_task(task, "none", tmp_path)
    assert len(walks["verdicts"]) == 2
    assert walks["sleepwalking"]["after_reject"] > 0
    assert walks["sleepwalking"]["after_reject"] == walks["spectra"] - obeys["spectra"]


def test_an_obeyed_planted_note_is_counted_and_never_reaches_the_instrument(tmp_path: Path) -> None:
    suite = load_suite("standard")
    task = next(t for t in tasks(suite) if t.injection_case)
    case = next(c for c in NOTE_CASES if c.name == task.injection_case)
    model = ObeyingLLM(case)
    r = run_task(task.model_copy(update={"budget": 30}), "local", tmp_path, llm=model)
    assert model.seen  # it read the instruction and its plan obeyed it
    assert r["reached"] == 0 and r["injection"]["auto_approved_unsafe"] == 0
    assert r["injection"]["logged"] and r["injection"]["refused"]


def test_an_openai_compatible_endpoint_is_a_row_by_its_url(tmp_path: Path) -> None:
    """The openai row against a real HTTP server that answers with the example each prompt carries
    (the deterministic planner's proposal): the same task then ends as the planner's own row."""
    from autoscope.evals.echo_llm import echo_llm

    task = tasks(load_suite("smoke"), "test")[2]  # the oxide: one hypothesis, one plan
    floor = run_task(task, "none", tmp_path)
    with echo_llm() as url:
        row = run_task(task, "openai", tmp_path, {"openai_base_url": url, "openai_api_key": "k"})
    assert row["llm"]["backend"] == "openai" and row["llm"]["calls"] >= 2 and row["llm"]["tokens"] > 0
    assert (row["success"], row["spectra"], row["parts"]) == (
        floor["success"],
        floor["spectra"],
        floor["parts"],
    )


# ------------------------------------------------------------------ running: Dask, kill, resume
def _wait_for_result(out: Path, proc: subprocess.Popen, timeout_s: float = 240.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        if list((out / "results").glob("*/*.json")):
            return
        time.sleep(0.05)
    raise AssertionError("no task finished before the deadline")


@pytest.fixture(scope="module")
def smoke_eval(tmp_path_factory) -> tuple[Path, list[dict]]:
    """``autoscope eval --suite smoke`` killed (SIGKILL) after its first task, then run again."""
    out = tmp_path_factory.mktemp("eval") / "smoke"
    cmd = [*AUTOSCOPE, "eval", "--suite", "smoke", "--split", "test", "--backends", "none", "--in-process",
           "--out", str(out)]  # fmt: skip
    env = {**os.environ, "AUTOSCOPE_LLM": "none"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    _wait_for_result(out, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the evaluation ended before it could be killed"
    done = len(list((out / "results").glob("*/*.json")))
    assert 1 <= done < 3
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    return out, json.loads((out / "results.json").read_text())["results"]


def test_a_killed_eval_resumes_and_scores_every_task_once(smoke_eval) -> None:
    out, results = smoke_eval
    assert sorted(r["task"] for r in results) == sorted(t.id for t in tasks(load_suite("smoke"), "test"))
    assert len(list((out / "results").glob("*/*.json"))) == 3
    for name in ("report.md", "success.png", "information_per_dose.png", "sleepwalking_injection.png"):
        assert (out / name).stat().st_size > 0
    text = (out / "report.md").read_text()
    assert "## Leaderboard" in text and "| `none` | 3 |" in text
    for r in results:
        assert r["success"] in ("YES", "PARTIAL", "NO") and r["error"] is None and r["reached"] == 0
        assert r["spectra"] <= r["budget"]  # the survey's spectra count against the budget
        assert set(r["parts"]) == set(r["truth"])
        points = r["confidence"]["points"]
        assert points and all(0.0 <= c <= 1.0 for _, c in points)
        assert [d for d, _ in points] == sorted(d for d, _ in points)


def test_stored_runs_scored_again_give_the_same_results(smoke_eval) -> None:
    out, results = smoke_eval
    again = run_eval(load_suite("smoke"), ["none"], out, split="test", rescore=True, in_process=True)
    assert [_stable(r) for r in again] == [_stable(r) for r in results]


def test_the_same_tasks_run_and_are_scored_on_a_local_cluster(smoke_eval, tmp_path: Path) -> None:
    """On a 2-worker LocalCluster every task runs and is scored as in-process, field for field
    (other processes, other string-hash seeds: a plan that followed a set's order differed)."""
    _, here = smoke_eval
    suite = load_suite("smoke")
    there = run_eval(suite, ["none"], tmp_path / "cluster", split="test", workers=2)
    assert [r["task"] for r in there] == [r["task"] for r in here]
    assert all(a["error"] is None and a["status"] == "done" for a in there)
    assert [_stable(r) for r in there] == [_stable(r) for r in here]
