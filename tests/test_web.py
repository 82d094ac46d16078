"""``autoscope web`` through its HTTP API: tokens, decisions named by person, one answer per gate,
and a server killed with SIGKILL mid-run whose run resumes without repeating an acquisition."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import h5py
import httpx
import pytest
from fastapi.testclient import TestClient

from autoscope.agents.web.app import create_app
from autoscope.tests.processes import log_count
from autoscope.tests.web_server import ALICE, BOB, TOKENS, WebServer, stopped_at, wait_for
from autoscope.tools.plan import Plan
from autoscope.tools.store import RunStore

SMALL = {"scenario": "plasmonic", "budget": 16, "rounds": 1, "autonomy": "manual", "llm": "none"}


@pytest.fixture
def client(tmp_path: Path):
    app = create_app(tmp_path / "runs", TOKENS)
    with TestClient(app) as c:
        yield c
    app.state.manager.join(30)


def state_of(client, name: str, headers=ALICE):
    return lambda: client.get(f"/api/runs/{name}/state", headers=headers).json()


def test_every_route_but_health_needs_a_token(client):
    assert client.get("/health").status_code == 200
    started = client.post("/api/runs", json=SMALL, headers=ALICE)
    assert started.status_code == 201, started.text
    name = started.json()["name"]
    paths = set()
    for route in client.app.routes:
        path = getattr(route, "path", "")
        for method in getattr(route, "methods", set()) - {"HEAD", "OPTIONS"}:
            paths.add(
                (
                    method,
                    path.replace("{name}", name).replace("{gate}", "plan").replace("{file}", "report.md"),
                )
            )
    paths = {(m, p.replace("{step_id}", "survey-image").replace("{hid}", "H1")) for m, p in paths}
    assert len(paths) >= 15
    for method, path in sorted(paths):
        if path == "/health":
            continue
        for headers in ({}, {"Authorization": "Bearer not-a-token"}, {"Cookie": "autoscope_web_token=nope"}):
            r = client.request(method, path, headers=headers, json={})
            assert r.status_code == 401, (method, path, r.status_code)
    # the browser's first visit keeps the token in an HttpOnly cookie and drops it from the address
    first = client.get("/?token=alice-token-0001", follow_redirects=False)
    assert first.status_code == 303 and first.headers["location"] == "/"
    assert "httponly" in first.headers["set-cookie"].lower()
    assert client.get("/api/me").json() == {"name": "alice"}  # the cookie now identifies her
    wait_for(state_of(client, name), stopped_at("hypothesis"))


def test_the_decision_log_names_the_person_and_a_second_answer_is_refused(client):
    name = client.post("/api/runs", json=SMALL, headers=ALICE).json()["name"]
    s = wait_for(state_of(client, name), stopped_at("hypothesis"))
    key = s["pending"]["key"]
    # two tabs (two people) answer the same gate at once: exactly one wins, the other is told who
    barrier = threading.Barrier(2)
    results: dict[str, httpx.Response] = {}

    def answer(who: str, headers: dict) -> None:
        barrier.wait()
        results[who] = client.post(
            f"/api/runs/{name}/answer", json={"key": key, "action": "approve"}, headers=headers
        )

    tabs = [threading.Thread(target=answer, args=(w, h)) for w, h in (("alice", ALICE), ("bob", BOB))]
    [t.start() for t in tabs]
    [t.join() for t in tabs]
    codes = sorted(r.status_code for r in results.values())
    assert codes == [202, 409], {w: r.text for w, r in results.items()}
    winner = next(w for w, r in results.items() if r.status_code == 202)
    loser = next(r for r in results.values() if r.status_code == 409)
    assert "answered already" in loser.json()["detail"] and winner in loser.json()["detail"]

    s = wait_for(state_of(client, name), stopped_at("plan"))
    # the answer that lost is still refused now that the run waits at the next gate
    late = client.post(f"/api/runs/{name}/answer", json={"key": key, "action": "reject"}, headers=BOB)
    assert late.status_code == 409
    # an edit the plan's model refuses is answered field by field; the run does not move
    plan = s["pending"]["proposal"]
    bad = json.loads(json.dumps(plan))
    audit = next(i for i, st in enumerate(bad["steps"]) if st["kind"] == "audit")
    bad["steps"][audit]["per_class"] = 1
    r = client.post(
        f"/api/runs/{name}/answer",
        json={"key": s["pending"]["key"], "action": "edit", "edit": bad},
        headers=BOB,
    )
    assert r.status_code == 422
    assert f"steps.{audit}.per_class" in r.json()["detail"]["field_errors"]
    assert state_of(client, name)()["pending"]["key"] == s["pending"]["key"]
    r = client.post(
        f"/api/runs/{name}/answer",
        json={"key": s["pending"]["key"], "action": "reject", "reason": "fewer classes, please"},
        headers=BOB,
    )
    assert r.status_code == 202
    s = wait_for(state_of(client, name), stopped_at("plan"))
    decisions = [
        e for e in RunStore.open(client.app.state.manager.run_dir(name), read_only=True).events("decision")
    ]
    assert [(d["gate"], d["action"], d["actor"], d["who"]) for d in decisions] == [
        ("hypothesis", "approve", "human", winner),
        ("plan", "reject", "human", "bob"),
    ]
    assert s["decisions"][-1]["reason"] == "fewer classes, please"
    # the runs page lists it: status, where it waits, scenario, spectra, verdicts
    row = next(r for r in client.get("/api/runs", headers=BOB).json() if r["name"] == name)
    assert (row["status"], row["pending_gate"], row["scenario"], row["instrument"]) == (
        "stopped",
        "plan",
        "plasmonic",
        "twin",
    )
    assert row["spectra"] > 0 and [v["id"] for v in row["verdicts"]] == ["H1"]
    # questions are answered from the store by the read-only tools
    a = client.post(f"/api/runs/{name}/ask", json={"question": "how many measurements so far?"}, headers=BOB)
    assert a.status_code == 200 and "spectra" in a.json()["answer"]


def _planned_ids(run_dir: Path, hid: str = "H1") -> list[str]:
    events = RunStore.open(run_dir, read_only=True).events("plan")
    plan = [e for e in events if e["hypothesis_id"] == hid][-1]
    p = Plan.model_validate({k: v for k, v in plan.items() if k not in ("kind", "seq", "time_utc")})
    n = dict(zip([s.kind for s in p.steps], p.step_spectra(), strict=False))
    return [f"{hid}-audit-{k:04d}" for k in range(n.get("audit", 0))] + [
        f"{hid}-al-{k:04d}" for k in range(n.get("active_scan", 0))
    ]


def test_sigkill_of_the_server_mid_run_then_restart_resumes_the_run_exactly_once(tmp_path: Path):
    runs = tmp_path / "runs"
    server = WebServer(runs, tmp_path / "web.log").start()
    try:
        body = {**SMALL, "budget": 60, "autonomy": "autonomous"}
        name = httpx.post(f"{server.url}/api/runs", json=body, headers=ALICE, timeout=30).json()["name"]
        events = runs / name / "events.jsonl"
        deadline = time.monotonic() + 120
        while log_count(events, '"H1-audit-') < 12 and time.monotonic() < deadline:
            time.sleep(0.005)
        server.kill()
        before = [e["step_id"] for e in RunStore.open(runs / name, read_only=True).events("acquisition")]
        assert 12 <= sum(s.startswith("H1-") for s in before) < len(_planned_ids(runs / name))
        server.start()  # the killed run resumes from its checkpoint by itself
        s = wait_for(
            lambda: httpx.get(f"{server.url}/api/runs/{name}/state", headers=BOB, timeout=30).json(),
            lambda s: s["status"] == "done",
            timeout_s=180,
        )
    finally:
        server.stop()
    after = [e["step_id"] for e in RunStore.open(runs / name, read_only=True).events("acquisition")]
    assert len(after) == len(set(after)), "an acquisition was repeated"
    assert set(before) <= set(after), "an acquisition made before the kill was lost"
    planned = _planned_ids(runs / name)
    assert sorted(s for s in after if s.startswith("H1-")) == sorted(planned)  # each exactly once
    survey = [s for s in after if s.startswith("survey-spectrum")]
    assert len(planned) + len(survey) == 60  # the run's whole budget, no more
    with h5py.File(runs / name / "data.h5", "r") as f:
        assert set(f.keys()) == set(after)
    kinds = [e["kind"] for e in RunStore.open(runs / name, read_only=True).events()]
    assert kinds.count("run_resumed") == 1 and kinds.count("run_complete") == 1
    assert s["summary"]["measurements"] == len([x for x in after if x.startswith(("H1-", "survey-spectrum"))])


def test_bad_input_exits_2_naming_the_problem(tmp_path: Path):
    from autoscope.agents.web.auth import parse_tokens
    from autoscope.instruments.errors import ConfigError
    from autoscope.tests.test_agents_cli import autoscope

    # reachable from other machines: a person chooses the tokens first
    r = autoscope("web", "--runs-dir", str(tmp_path / "runs"), "--host", "0.0.0.0", timeout=60)
    assert r.returncode == 2 and "tokens" in r.stderr, r.stderr
    for bad in ("no-name-here", "short=alice", str(tmp_path / "missing.yaml")):
        with pytest.raises(ConfigError, match="web_tokens|file"):
            parse_tokens(bad)
    (tmp_path / "people.yaml").write_text("alice-token-0001: alice\nbob-token-00002: bob\n")
    assert parse_tokens(tmp_path / "people.yaml") == TOKENS
    assert parse_tokens("alice-token-0001=alice, bob-token-00002=bob") == TOKENS
