"""A run as Bluesky event-model documents, written into a real Tiled server and read back.

One small campaign on the twin (``autoscope run --llm none``, 12 spectra) is exported with
``autoscope runs export``; every document is checked with event-model's own JSON-schema
validators and for its order. A Tiled server process (``tiled serve catalog`` on 127.0.0.1, a
free port, its catalog and storage in the test's directory, the run directory readable) is
fed the documents through bluesky's ``TiledWriter``; the arrays read back through the Tiled
client equal the run store's, and the plan, hypotheses and verdicts come back as metadata.
"""

from __future__ import annotations

import copy
import ctypes
import datetime as dt
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from event_model import DocumentNames, schema_validators
from typer.testing import CliRunner

from autoscope.instruments.remote.server import free_port
from autoscope.tests.servers import stop_server
from autoscope.tools.bluesky_docs import (
    STACK_FILE,
    InvalidDocuments,
    check_documents,
    documents,
    read_jsonl,
    run_outcome,
)
from autoscope.tools.store import RunStore

tiled_writer = pytest.importorskip("bluesky.callbacks.tiled_writer")
tiled_client = pytest.importorskip("tiled.client")
TILED = Path(sys.executable).with_name("tiled")
BUDGET = 12


def _die_with_parent() -> None:
    """In the server's process before exec: SIGTERM it when the test process dies (Linux)."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _start_tiled(workdir: Path, readable: Path) -> tuple[subprocess.Popen, str, str]:
    """``tiled serve catalog`` on loopback with its catalog, files and tables under ``workdir``."""
    port, key = free_port(), secrets.token_hex(16)
    workdir.mkdir(parents=True)
    (workdir / "data").mkdir()
    cmd = [str(TILED), "serve", "catalog", str(workdir / "catalog.db"), "--init"]
    cmd += ["-w", str(workdir / "data"), "-w", f"duckdb:///{workdir / 'tables.duckdb'}", "-r", str(readable)]
    cmd += ["--api-key", key, "--host", "127.0.0.1", "--port", str(port)]
    with (workdir / "server.log").open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
    return proc, f"http://127.0.0.1:{port}", key


def _wait_tiled(proc: subprocess.Popen, url: str, log: Path, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"tiled exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/api/v1/", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"tiled not healthy after {timeout_s} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def campaign(tmp_path_factory) -> Iterator[dict]:
    """A finished run on the twin, its export, and a Tiled server that may read the run (both started
    at once: the server comes up while the campaign runs)."""
    base = tmp_path_factory.mktemp("bluesky")
    run_dir = base / "run"
    proc, url, key = _start_tiled(base / "tiled", run_dir)
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOSCOPE_")}
        cmd = [sys.executable, "-m", "autoscope", "run", "--llm", "none", "--budget", str(BUDGET)]
        r = subprocess.run(
            [*cmd, "--rounds", "1", "--out", str(run_dir)],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert r.returncode == 0, r.stderr[-3000:]
        out = base / "run.bluesky.jsonl"
        t0 = time.perf_counter()
        r = subprocess.run(
            [sys.executable, "-m", "autoscope", "runs", "export", str(run_dir), "--format", "bluesky"]
            + ["--out", str(out)],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        export_s = time.perf_counter() - t0
        assert r.returncode == 0, r.stderr[-3000:]
        assert r.stdout.strip() == str(out.resolve())
        _wait_tiled(proc, url, base / "tiled" / "server.log")
        yield {"run": run_dir, "out": out, "url": url, "key": key, "export_s": export_s, "stderr": r.stderr}
    finally:
        stop_server(proc)


def test_export_is_valid_ordered_and_complete(campaign: dict):
    docs = list(read_jsonl(campaign["out"]))
    for name, doc in docs:
        schema_validators[DocumentNames[name]].validate(doc)  # event-model's own schemas
    names = [n for n, _ in docs]
    assert names[0] == "start" and names[-1] == "stop"
    assert names.count("start") == 1 and names.count("stop") == 1
    seen_desc, seen_res, seen_datum = set(), set(), set()
    per_stream: dict[str, list[dict]] = {}
    desc_name = {}
    for name, doc in docs:
        if name == "descriptor":
            seen_desc.add(doc["uid"])
            desc_name[doc["uid"]] = doc["name"]
        elif name == "resource":
            seen_res.add(doc["uid"])
            assert (Path(doc["root"]) / doc["resource_path"]).is_file()
        elif name == "datum":
            assert doc["resource"] in seen_res
            seen_datum.add(doc["datum_id"])
        elif name == "event":
            assert doc["descriptor"] in seen_desc  # descriptors before their events
            per_stream.setdefault(desc_name[doc["descriptor"]], []).append(doc)
            external = [v for k, v in doc["data"].items() if k in ("image", "spectrum")]
            assert len(external) == 1 and external[0] in seen_datum
    assert check_documents(docs)["event"] == names.count("event")

    store = RunStore.open(campaign["run"], read_only=True)
    acq = store.events("acquisition")
    assert names.count("event") == len(acq) == BUDGET + 1  # the survey image and every spectrum
    events = [doc for docs_ in per_stream.values() for doc in docs_]
    assert sorted(e["data"]["step_id"] for e in events) == sorted(e["step_id"] for e in acq)
    by_record = {r: sum(e["record"] == r for e in acq) for r in ("image", "spectrum")}
    assert sum(len(v) for k, v in per_stream.items() if k.endswith("_images")) == by_record["image"]
    assert sum(len(v) for k, v in per_stream.items() if "_spectra" in k) == by_record["spectrum"]

    start, stop = docs[0][1], docs[-1][1]
    assert start["run_id"] == json.loads((campaign["run"] / "run.json").read_text())["run_id"]
    assert start["scenario"] == "plasmonic" and start["backend"]["kind"] == "twin" and start["goal"]
    assert [h["id"] for h in start["hypotheses"]] == [e["id"] for e in store.events("hypothesis")]
    assert [p["hypothesis_id"] for p in start["plans"]] == [e["hypothesis_id"] for e in store.events("plan")]
    verdicts = store.events("verdict")
    assert stop["exit_status"] == "success" and stop["num_events"] == {
        k: len(v) for k, v in per_stream.items()
    }
    assert all(f"{v['hypothesis_id']} {v['outcome']}" in stop["reason"] for v in verdicts)
    assert [v["outcome"] for v in stop["verdicts"]] == [v["outcome"] for v in verdicts]
    # the acquisition's metadata as plain data keys, with units and timestamps from the log
    spectra = next(v for k, v in per_stream.items() if k.startswith("H1"))
    desc = next(d for n, d in docs if n == "descriptor" and d["name"].startswith("H1"))
    assert desc["data_keys"]["x_nm"]["units"] == "nm" and desc["data_keys"]["spectrum"]["external"]
    first = next(e for e in acq if e["step_id"] == spectra[0]["data"]["step_id"])
    assert spectra[0]["data"]["dose_e"] == first["dose_e"] and spectra[0]["data"]["x_nm"] == first["x_nm"]
    assert spectra[0]["time"] == dt.datetime.fromisoformat(first["time_utc"]).timestamp()
    assert set(spectra[0]["timestamps"].values()) == {spectra[0]["time"]}
    # exported again: the same documents, uids included
    assert [json.loads(json.dumps(d)) for d in documents(campaign["run"])] == [list(d) for d in docs]
    print(f"\nexport of {len(acq)} steps ({len(docs)} documents): {campaign['export_s']:.2f} s with start-up;"
          f" {campaign['stderr'].strip()}")  # fmt: skip


def test_documents_read_back_through_tiled(campaign: dict):
    client = tiled_client.from_uri(campaign["url"], api_key=campaign["key"])
    writer = tiled_writer.TiledWriter(client)
    docs = list(read_jsonl(campaign["out"]))
    t0 = time.perf_counter()
    for name, doc in docs:
        writer(name, copy.deepcopy(doc))  # the writer edits what it is given
    write_s = time.perf_counter() - t0
    start, stop = docs[0][1], docs[-1][1]

    run = client[start["uid"]]
    store = RunStore.open(campaign["run"], read_only=True)
    meta = run.metadata
    assert meta["start"]["hypotheses"] == start["hypotheses"] and meta["start"]["plans"] == start["plans"]
    assert meta["start"]["run_id"] == start["run_id"] and meta["start"]["goal"] == start["goal"]
    assert meta["stop"]["exit_status"] == "success" and meta["stop"]["reason"] == stop["reason"]
    assert meta["stop"]["verdicts"] == stop["verdicts"]
    assert set(run) == set(stop["num_events"])
    compared = 0
    for stream in run:
        table = run[stream].base["internal"].read()
        key = "image" if stream.endswith("_images") else "spectrum"
        array = run[stream][key].read()
        steps = list(table["step_id"])
        assert array.shape[0] == len(steps) == stop["num_events"][stream]
        for i, step_id in enumerate(steps):
            rec = store.load(step_id)
            assert np.array_equal(array[i], rec.data if key == "image" else rec.counts)
            assert table["dose_e"][i] == store.step_event(step_id)["dose_e"]
            compared += 1
    assert compared == len(store.events("acquisition"))
    print(f"\nTiledWriter wrote {len(docs)} documents in {write_s:.2f} s; {compared} arrays read back equal")


def test_export_names_bad_input(tmp_path: Path, campaign: dict):
    from autoscope.agents.cli import app

    def export(*args: str) -> tuple[int, str]:
        r = CliRunner().invoke(app, ["runs", "export", *args])
        return r.exit_code, " ".join(r.output.split())  # the message as one line, however it wrapped

    code, msg = export(str(tmp_path), "--out", str(tmp_path / "x.jsonl"))
    assert code == 2 and "run_dir:" in msg and "is not an autoscope run directory (no events.jsonl)" in msg
    code, msg = export(str(campaign["run"]), "--format", "nexus", "--out", str(tmp_path / "x.jsonl"))
    assert code == 2 and "format: 'nexus' is not a format" in msg and "choose bluesky" in msg
    code, msg = export(str(campaign["run"]), "--out", str(tmp_path / "no" / "x.jsonl"))
    assert code == 2 and "out:" in msg and "is not a directory" in msg
    assert not (tmp_path / "x.jsonl").exists()
    assert (campaign["run"] / STACK_FILE).is_file()


def test_documents_out_of_order_are_refused(campaign: dict):
    docs = list(read_jsonl(campaign["out"]))
    event = next(i for i, (n, _) in enumerate(docs) if n == "event")
    with pytest.raises(InvalidDocuments, match="before its descriptor"):
        check_documents([docs[0], docs[event], *docs[1:event], *docs[event + 1 :]])
    with pytest.raises(InvalidDocuments, match="without a stop"):
        check_documents(docs[:-1])
    datum = next(i for i, (n, _) in enumerate(docs) if n == "datum")
    with pytest.raises(InvalidDocuments, match="names resource"):
        check_documents([d for i, d in enumerate(docs) if docs[i][0] != "resource" or i > datum])


def _ev(kind: str, **fields) -> dict:
    return {"kind": kind, **fields}


def test_exit_status_follows_how_the_run_ended():
    started = [_ev("run_created"), _ev("run_started", run_id="r")]
    verdict = _ev("verdict", hypothesis_id="H1", outcome="supported", readable="2.5× [2.1, 3]")
    status, reason, verdicts = run_outcome(
        [*started, verdict, _ev("run_complete", stop_reason="budget spent")]
    )
    assert status == "success" and reason == "budget spent. Verdicts: H1 supported: 2.5× [2.1, 3]"
    assert verdicts[0]["outcome"] == "supported"
    status, reason, _ = run_outcome([*started, _ev("safety_stop", limit="max_total_dose", message="dose")])
    assert status == "fail" and "safety_stop: dose" in reason
    status, reason, _ = run_outcome([*started, _ev("decision", gate="plan")])
    assert status == "abort" and "not reached its end" in reason
    # a completed run that was resumed and not completed again has not ended
    again = [*started, _ev("run_complete"), _ev("run_resumed")]
    assert run_outcome(again)[0] == "abort"
    survey = [_ev("run_created"), _ev("survey_started"), _ev("survey_complete")]
    assert run_outcome(survey)[0] == "success"
