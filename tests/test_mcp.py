"""``autoscope mcp`` through the official MCP SDK's client, over stdio and streamable HTTP (real
server processes), and the gate rule that keeps an outside agent from deciding for a person.

The server serves the twin behind a limits file with a low current limit (60 pA, the twin goes
to 500 pA) and few acquisitions, so that (1) a current above the limit is refused by the
interlocks, which the twin's own counters and the store confirm never reached it, and (2) an
autonomous run stops at its plan gate (its plan needs more acquisitions than the limit), where
the agent's smaller plan would pass by policy if the agent's edit did not always need a person.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, TypedDict

import httpx
import httpx2
import pytest
import yaml
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import Implementation
from PIL import Image
from typer.testing import CliRunner

from autoscope.agents.cli import app
from autoscope.agents.gates import AGENT_EDIT, AutonomyPolicy, GateRequest, GateResponse, ask
from autoscope.instruments.remote.server import free_port
from autoscope.tools.dry_run import DryRun
from autoscope.tools.store import RunStore

LIMIT_PA = 60.0
#: the run's survey takes 5 (an image, 4 spectra); the planner's plan 8 more (budget 12), the agent's 4
MAX_ACQUISITIONS = 11
CLIENT = "autoscope-test"
TOOLS = {
    "instrument_status",
    "capabilities",
    "survey",
    "spectrum_at",
    "dry_run_plan",
    "start_run",
    "submit_plan",
    "run_status",
    "query",
}


@pytest.fixture
def limits_file(tmp_path: Path) -> Path:
    path = tmp_path / "limits.yaml"
    path.write_text(yaml.safe_dump({"max_current_pA": LIMIT_PA, "max_acquisitions": MAX_ACQUISITIONS}))
    return path


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOSCOPE_")}
    return {**env, "AUTOSCOPE_LOG_LEVEL": "WARNING"}


def _server_args(tmp_path: Path, limits: Path, *extra: str) -> list[str]:
    return [
        "-m", "autoscope", "mcp", "--scenario", "plasmonic", "--limits", str(limits), "--llm", "none",
        "--out", str(tmp_path / "bench"), "--runs-dir", str(tmp_path / "runs"), *extra,
    ]  # fmt: skip


def _text(result) -> str:
    return "\n".join(c.text for c in result.content if c.type == "text")


def _json(result) -> dict[str, Any]:
    assert not result.is_error, _text(result)
    return json.loads(_text(result))


async def _call(session: ClientSession, name: str, **args: Any):
    return await session.call_tool(name, args)


async def outside_agent(
    session: ClientSession, run_autonomy: str, manual_too: bool = False
) -> dict[str, Any]:
    """What the acceptance asks of an outside agent, on an open session; returns what it saw.
    ``manual_too``: also start a manual run and try to answer its hypothesis gate."""
    await session.initialize()
    assert {t.name for t in (await session.list_tools()).tools} == TOOLS
    seen: dict[str, Any] = {}

    survey = await _call(session, "survey", pixels=32, spectra=2)
    assert not survey.is_error, _text(survey)
    summary = json.loads(next(c.text for c in survey.content if c.type == "text"))
    images = [c for c in survey.content if c.type == "image"]
    assert len(images) == 1 and images[0].mime_type == "image/png"
    png = Image.open(io.BytesIO(base64.b64decode(images[0].data)))
    assert png.size == (32, 32) and summary["image"]["pixels"] == 32 and len(summary["spectra"]) == 2
    resource = await session.read_resource("autoscope://survey/image")
    assert Image.open(io.BytesIO(base64.b64decode(resource.contents[0].blob))).size == (32, 32)

    x, y = summary["spectra"][0]["x_nm"], summary["spectra"][0]["y_nm"]
    ok = _json(await _call(session, "spectrum_at", x_nm=x, y_nm=y, dwell_s=0.01, current_pA=40.0))
    assert ok["current_pA"] == 40.0 and len(ok["counts"]) == len(ok["energy_eV"]) > 10
    before = _json(await _call(session, "instrument_status"))["instrument"]

    refused = await _call(session, "spectrum_at", x_nm=x, y_nm=y, dwell_s=0.01, current_pA=150.0)
    assert refused.is_error
    assert "max_current_pA" in _text(refused) and "150" in _text(refused), _text(refused)
    after = _json(await _call(session, "instrument_status"))["instrument"]
    # the twin's own counters: the current it was never set to, the acquisition it never made
    assert after["current_pA"] == before["current_pA"] == 40.0
    assert after["acquisitions"] == before["acquisitions"] == 4
    seen["twin"] = after
    safety = await _call(session, "query", run="workbench", tool="safety")
    assert "max_current_pA" in _text(safety)

    bad = await _call(session, "dry_run_plan", plan={"hypothesis_id": "H1", "rationale": "too short"})
    assert bad.is_error and "invalid" in _text(bad)

    run = _json(await _call(session, "start_run", budget=12, rounds=1, autonomy=run_autonomy))["run"]
    if manual_too:
        manual = _json(await _call(session, "start_run", budget=12, rounds=1, autonomy="manual"))["run"]
    status = _json(await _call(session, "run_status", run=run, wait_s=120))
    assert status["status"] == "stopped", status
    pending = status["pending_gate"]
    assert pending["gate"] == "plan", status
    seen["first_dry_run"] = pending["dry_run"]
    dry = _json(await _call(session, "dry_run_plan", plan=pending["proposal"]))  # on the workbench
    assert dry["dry_run"]["spectra"] == 8 and dry["dry_run"]["images"] == 1  # its survey is not the bench's
    assert not dry["ok"] and [v["limit"] for v in dry["violations"]] == ["max_acquisitions"]
    steps = [s for s in pending["proposal"]["steps"] if s["kind"] not in ("seed", "active_scan")]
    audit = next(s for s in steps if s["kind"] == "audit")
    audit.update(classes=["rod_tip", "substrate"], per_class=2, top_up=False)  # what the verdict needs

    # a plan the gate cannot take is refused, readably; the run still waits where it was
    wrong = await _call(session, "submit_plan", run=run, plan={"steps": [audit]})
    assert wrong.is_error and "refused" in _text(wrong) and "survey" in _text(wrong), _text(wrong)

    submitted = _json(await _call(session, "submit_plan", run=run, plan={"steps": steps}))
    assert submitted["status"] == "stopped" and submitted["pending_gate"]["gate"] == "plan"
    proposal = submitted["pending_gate"]["proposal"]
    assert proposal["author"] == f"{AGENT_EDIT} (mcp:{CLIENT})"
    assert next(s for s in proposal["steps"] if s["kind"] == "audit")["classes"] == ["rod_tip", "substrate"]
    assert "within limits" in submitted["pending_gate"]["dry_run"]
    assert submitted["decisions"][-1] == {
        "gate": "plan", "round": 1, "action": "edit", "actor": "agent", "who": f"mcp:{CLIENT}", "reason": "",
    }  # fmt: skip
    report = await session.read_resource(f"autoscope://runs/{run}/report")
    assert "H1" in report.contents[0].text
    seen["run"] = run
    if manual_too:  # the hypothesis gate is a person's: the gate refuses the agent, the person is asked again
        assert (
            _json(await _call(session, "run_status", run=manual, wait_s=120))["pending_gate"]["gate"]
            == "hypothesis"
        )
        refused = await _call(session, "submit_plan", run=manual, plan={"steps": steps})
        assert refused.is_error and "outside agent cannot edit at the hypothesis gate" in _text(refused)
        status = _json(await _call(session, "run_status", run=manual))
        assert status["pending_gate"]["gate"] == "hypothesis" and status["decisions"] == []
        assert "outside agent cannot" in status["pending_gate"]["previous_answer_refused"]
    return seen


def _check_store(bench: Path) -> None:
    """Zero out-of-limit requests reached the instrument: the one refused is logged as a safety stop,
    and every acquisition the twin made was at a current within the limit."""
    with RunStore.open(bench, read_only=True) as store:
        stops = store.events("safety_stop")
        acq = store.events("acquisition")
    assert [(s["limit"], s["value"]) for s in stops] == [("max_current_pA", 150.0)]
    assert len(acq) == 4 and all(e["current_pA"] <= LIMIT_PA for e in acq)


def _resume(run_dir: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "autoscope", "resume", str(run_dir), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_env())


def test_outside_agent_over_stdio(tmp_path: Path, limits_file: Path):
    args = _server_args(tmp_path, limits_file, "--autonomy", "autonomous")
    params = StdioServerParameters(command=sys.executable, args=args, env=_env())

    async def session() -> dict[str, Any]:
        with (tmp_path / "stdio.log").open("w") as errlog:
            async with (
                stdio_client(params, errlog=errlog) as (read, write),
                ClientSession(read, write, client_info=Implementation(name=CLIENT, version="0")) as s,
            ):
                return await outside_agent(s, "autonomous")

    seen = asyncio.run(session())
    _check_store(tmp_path / "bench")
    run_dir = tmp_path / "runs" / seen["run"]
    # autonomous: the planner's plan went beyond the limits, so it waited; the agent's plan is within
    # them and still waits, because an outside agent edited it
    assert "BEYOND LIMITS" in seen["first_dry_run"] and "max_acquisitions" in seen["first_dry_run"]
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["pending_gate"]["dry_run"]["spectra"] == 4 and s["pending_gate"]["proposal"][
        "author"
    ].startswith(AGENT_EDIT)
    assert s["measurements"] == 4  # the survey's spectra only: nothing of the plan ran
    r = _resume(run_dir, "--answer", "approve")
    assert r.returncode == 0, r.stderr
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["status"] == "done" and s["measurements"] == 8
    assert [(d["gate"], d["action"], d["actor"], d["who"]) for d in s["decisions"]] == [
        ("hypothesis", "approve", "policy", "autonomous"),
        ("plan", "edit", "agent", f"mcp:{CLIENT}"),
        ("plan", "approve", "human", "cli"),
        ("analysis", "approve", "policy", "autonomous"),
    ]


def _wait_listening(proc: subprocess.Popen, url: str, log: Path, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            httpx.post(url, json={}, timeout=2.0)
            return
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError(f"the MCP server did not listen in {timeout_s} s: {log.read_text()}")


def test_outside_agent_over_http_with_the_token(tmp_path: Path, limits_file: Path):
    port, token = free_port(), "test-token-" + os.urandom(6).hex()
    url = f"http://127.0.0.1:{port}/mcp"
    args = _server_args(tmp_path, limits_file, "--transport", "http", "--port", str(port), "--token", token)
    log = tmp_path / "http.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, *args, "--idle-exit-s", "60"], stdout=out, stderr=subprocess.STDOUT, env=_env()
        )
    try:
        _wait_listening(proc, url, log)
        hello = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
        assert httpx.post(url, json=hello).status_code == 401
        wrong = httpx.post(url, json=hello, headers={"Authorization": "Bearer not-the-token"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"

        async def session() -> dict[str, Any]:
            headers = {"Authorization": f"Bearer {token}"}
            async with (
                httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(180.0)) as http,
                streamable_http_client(url, http_client=http) as (read, write),
                ClientSession(read, write, client_info=Implementation(name=CLIENT, version="0")) as s,
            ):
                return await outside_agent(s, "supervised", manual_too=True)

        seen = asyncio.run(session())
    finally:
        proc.terminate()
        proc.wait(30)
    _check_store(tmp_path / "bench")
    assert seen["twin"]["current_pA"] <= LIMIT_PA


@pytest.mark.parametrize(
    ("args", "field"),
    [(["--transport", "carrier-pigeon"], "transport"), (["--autonomy", "reckless"], "autonomy")],
)
def test_bad_input_exits_2_naming_the_field(tmp_path: Path, args: list[str], field: str):
    r = CliRunner().invoke(app, ["mcp", "--out", str(tmp_path / "bench"), *args])
    assert r.exit_code == 2 and field in r.output, r.output
    assert not (tmp_path / "bench").exists()  # refused before anything was opened


# ---------------------------------------------------------------- the gate rule, directly


class _S(TypedDict, total=False):
    out: dict


def _gate_graph(gate: str, policy: AutonomyPolicy):
    """A one-node graph whose node is a gate asking through ``gates.ask`` (real interrupts)."""

    def node(state: _S, config: RunnableConfig) -> _S:
        req = GateRequest(
            gate=gate, round=1, question="go?", proposal={"author": "planner", "rationale": "r"}
        )
        resp, update, decision = ask(
            req, policy, lambda r: {"plan": r.edit} if r.action == "edit" else {}, config
        )
        return {"out": {"update": update, **decision.model_dump()}}

    g = StateGraph(_S)
    g.add_node("gate", node)
    g.add_edge(START, "gate")
    g.add_edge("gate", END)
    return g.compile(checkpointer=InMemorySaver())


def _answer(graph, config, resp: GateResponse):
    graph.invoke(Command(resume=resp.model_dump(mode="json")), config)
    return graph.get_state(config)


@pytest.mark.parametrize("action", ["approve", "reject", "redirect"])
def test_an_agent_cannot_decide_for_a_person(action: str):
    graph, config = _gate_graph("plan", AutonomyPolicy(level="manual")), {"configurable": {"thread_id": "t"}}
    graph.invoke({}, config)
    agent = GateResponse(action=action, reason="r", instruction="i", actor="agent", who="mcp:x")
    snap = _answer(graph, config, agent)
    assert snap.interrupts, "the agent's answer must be refused and the person asked again"
    assert "outside agent cannot" in snap.interrupts[0].value["error"]
    snap = _answer(graph, config, GateResponse(action="approve", actor="human", who="ann"))
    assert not snap.interrupts and snap.values["out"]["actor"] == "human"


@pytest.mark.parametrize("gate", ["hypothesis", "analysis"])
def test_an_agent_edit_is_refused_where_no_person_would_see_it_again(gate: str):
    graph, config = _gate_graph(gate, AutonomyPolicy(level="manual")), {"configurable": {"thread_id": "t"}}
    graph.invoke({}, config)
    snap = _answer(
        graph, config, GateResponse(action="edit", edit={"rationale": "x"}, actor="agent", who="m")
    )
    assert snap.interrupts and f"at the {gate} gate" in snap.interrupts[0].value["error"]


def test_an_agent_edit_at_the_plan_gate_is_marked_as_the_agents():
    graph, config = _gate_graph("plan", AutonomyPolicy(level="manual")), {"configurable": {"thread_id": "t"}}
    graph.invoke({}, config)
    edit = {"rationale": "smaller", "author": "a person, honestly"}
    snap = _answer(graph, config, GateResponse(action="edit", edit=edit, actor="agent", who="mcp:x"))
    out = snap.values["out"]
    assert not snap.interrupts and (out["action"], out["actor"], out["who"]) == ("edit", "agent", "mcp:x")
    assert out["update"]["plan"] == {"rationale": "smaller", "author": f"{AGENT_EDIT} (mcp:x)"}


def test_a_plan_an_agent_edited_needs_a_person_at_every_autonomy_level():
    ok = DryRun(
        spectra=1, images=0, dose_e=1.0, dose_e_per_A2=1.0, peak_dose_e_per_A2=1.0, time_s=1.0, checks=[],
        survey_reused=True,
    )  # fmt: skip
    for author, autonomous_asks in (
        ("deterministic planner (no LLM)", False),
        (f"{AGENT_EDIT} (mcp:x)", True),
    ):
        req = GateRequest(gate="plan", round=1, question="?", proposal={"author": author}, dry_run=ok)
        assert AutonomyPolicy(level="autonomous").needs_person(req) is autonomous_asks
        assert AutonomyPolicy(level="supervised").needs_person(req) and AutonomyPolicy(
            level="manual"
        ).needs_person(req)
