"""The run store mirrored to S3-compatible object storage, against a real S3 server on loopback.

The server is moto's (``ThreadedMotoServer``: HTTP on 127.0.0.1, a free port), reached
through s3fs exactly as a bucket in the cloud is: credentials and endpoint from the
``AWS_*`` variables. What is checked is what the bucket holds: each step once, with the
SHA-256 of its local file, after a plain run, a SIGKILL mid-upload and an outage.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import h5py
import pytest
from moto.server import ThreadedMotoServer
from typer.testing import CliRunner

from autoscope.instruments.records import ImageRecord
from autoscope.instruments.remote.server import free_port
from autoscope.tests.store_writer import expected_record, step_id
from autoscope.tools.mirror import (
    ChecksumMismatch,
    MirrorError,
    StoreURL,
    mirror_store,
    pull_run,
    s3_filesystem,
)
from autoscope.tools.store import RunStore

WRITER = Path(__file__).with_name("mirror_writer.py")
AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


class S3Server:
    """moto's S3 on 127.0.0.1; stopping and starting it again on the same port keeps its buckets
    (they live in this process), so a stop is an outage, not a loss."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: ThreadedMotoServer | None = None

    def start(self) -> None:
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None


@pytest.fixture(scope="module")
def s3server():
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = S3Server()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def bucket(s3server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """A new, empty bucket; the AWS variables point at the loopback server (and nowhere else)."""
    for key, value in AWS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3server.url)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(key, raising=False)
    for key in [k for k in os.environ if k.startswith("AUTOSCOPE_")]:
        monkeypatch.delenv(key)
    name = f"runs-{uuid.uuid4().hex[:12]}"
    s3_filesystem().mkdir(name)
    return name


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def local_steps(run_dir: Path) -> dict[str, str]:
    """``steps/<id>.h5 -> sha256`` of every complete step file."""
    return {
        f"steps/{p.name}": sha256(p) for p in (run_dir / "steps").glob("*.h5") if not p.name.startswith(".")
    }


def bucket_objects(url: str) -> dict[str, str]:
    """``rel -> sha256`` of every object under ``url``, each downloaded and hashed; its ``sha256``
    metadata must be that hash."""
    fs, root = s3_filesystem(), StoreURL.parse(url)
    out = {}
    for name in fs.find(root.path):
        rel = name[len(root.path) + 1 :]
        got = hashlib.sha256(fs.cat_file(name)).hexdigest()
        head = fs.call_s3("head_object", Bucket=root.bucket, Key=root.key(rel))
        assert head["Metadata"]["sha256"] == got, f"{rel}: stored checksum does not match its bytes"
        out[rel] = got
    return out


def save(store: RunStore, i: int) -> float:
    """Store step ``i`` of the store writer; the seconds the call took."""
    rec = expected_record(i)
    t0 = time.perf_counter()
    (store.save_image if isinstance(rec, ImageRecord) else store.save_spectrum)(step_id(i), rec, index=i)
    return time.perf_counter() - t0


# ---------------------------------------------------------------------------- (a) a mirrored run
def test_every_step_is_in_the_bucket_once_with_its_checksum(tmp_path: Path, bucket: str):
    run = tmp_path / "run-a"
    with RunStore.create(run) as store:
        mirror = mirror_store(store, f"s3://{bucket}/lab/runs", sync_interval_s=0.2)
        for i in range(24):
            save(store, i)
        store.append_event("note", text="done")
    assert mirror.stats.steps_uploaded == 24 and mirror.stats.failed_attempts == 0
    remote = bucket_objects(f"s3://{bucket}/lab/runs/run-a")  # <prefix>/<run-name>/
    steps = {k: v for k, v in remote.items() if k.startswith("steps/")}
    assert steps == local_steps(run) and len(steps) == 24
    assert set(remote) == set(steps) | {"events.jsonl"}  # no temporaries, no data.h5 (derived)
    assert remote["events.jsonl"] == sha256(run / "events.jsonl")  # the log as closed, whole
    kinds = [e["kind"] for e in RunStore.open(run, read_only=True).events()]
    assert "mirror_started" in kinds and kinds[-1] == "note"


def test_a_url_that_cannot_be_used_is_refused_before_anything_is_written(tmp_path: Path):
    with RunStore.create(tmp_path / "run") as store:
        for url in ("file:///tmp/x", "s3://Bad_Bucket/x", "s3://ok-bucket/../x", "s3://"):
            with pytest.raises(MirrorError, match="store URL"):
                mirror_store(store, url)
        assert [e["kind"] for e in store.events()] == ["run_created"]


class _Broken:
    def step_stored(self, step_id: str, path: Path) -> None:
        raise RuntimeError("observer bug")

    def store_closed(self) -> None:
        raise RuntimeError("observer bug")


def test_an_observer_that_fails_never_fails_the_store(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    with RunStore.create(tmp_path / "run") as store:
        store.observe(_Broken())
        save(store, 0)
        assert store.has_step("s0000")
    assert "observer" in caplog.text and "observer bug" in caplog.text


# ---------------------------------------------------------------------------- (b) SIGKILL mid-upload
def test_sigkill_while_uploads_are_pending_then_resume_uploads_only_what_is_missing(
    tmp_path: Path, bucket: str
):
    run, url = tmp_path / "run-b", f"s3://{bucket}/kill"
    fs, root = s3_filesystem(), StoreURL.parse(url).child("run-b")

    def remote_steps() -> int:
        return sum("/steps/" in n for n in fs.find(root.path))

    with (tmp_path / "writer.out").open("wb") as out, (tmp_path / "writer.err").open("wb") as err:
        proc = subprocess.Popen([sys.executable, str(WRITER), str(run), url], stdout=out, stderr=err)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            n = len(local_steps(run)) if (run / "steps").exists() else 0
            if n >= 30 and n - remote_steps() >= 3:  # the writer is ahead of its uploads
                break
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(30)
    time.sleep(0.3)  # a PUT that had fully arrived when the writer died is stored by now
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "writer.err").read_text()[-2000:]
    at_kill = local_steps(run)
    there = {k: v for k, v in bucket_objects(url + "/run-b").items() if k.startswith("steps/")}
    assert there.items() <= at_kill.items()  # what reached the bucket is whole and right
    assert len(there) < len(at_kill), "no upload was pending at the kill"

    total = 1 + max(int(k[len("steps/s") : -3]) for k in at_kill) + 5
    r = subprocess.run(
        [sys.executable, str(WRITER), str(run), url, str(total)], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0 and r.stdout.endswith("closed\n"), r.stderr[-2000:]
    stats = json.loads(next(line for line in r.stdout.splitlines() if line.startswith("stats "))[6:])
    final = local_steps(run)
    assert len(final) == total
    assert stats["steps_already_there"] == len(there)  # uploaded before the kill: left alone
    assert stats["steps_uploaded"] == total - len(there)  # the missing ones and the new ones, once
    remote = bucket_objects(url + "/run-b")
    assert {k: v for k, v in remote.items() if k.startswith("steps/")} == final
    assert set(remote) == set(final) | {"events.jsonl"}
    assert remote["events.jsonl"] == sha256(run / "events.jsonl")


# ---------------------------------------------------------------------------- (c) an outage
def test_an_outage_never_blocks_acquisition_and_everything_is_uploaded_after_it(
    tmp_path: Path, bucket: str, s3server: S3Server
):
    run = tmp_path / "run-c"
    with RunStore.create(run) as store:
        mirror = mirror_store(
            store, f"s3://{bucket}", sync_interval_s=0.2, initial_backoff_s=0.05, max_backoff_s=0.5
        )
        before = [save(store, i) for i in range(10)]
        assert mirror.flush(30)
        s3server.stop()
        try:
            t0 = time.perf_counter()
            during = [save(store, i) for i in range(10, 40)]
            acquired_s = time.perf_counter() - t0
            deadline = time.monotonic() + 20
            while mirror.stats.failed_attempts == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert mirror.stats.failed_attempts > 0 and mirror.pending > 0
            assert not mirror.flush(0.5)  # the bucket cannot be reached
        finally:
            s3server.start()
        assert mirror.flush(60), mirror.stats
    # acquisition went at its own pace while the bucket was down
    assert store.completed_steps() == {step_id(i) for i in range(40)}
    assert max(during) < 1.0 and acquired_s < 10.0, (max(during), acquired_s, max(before))
    remote = bucket_objects(f"s3://{bucket}/run-c")
    assert {k: v for k, v in remote.items() if k.startswith("steps/")} == local_steps(run)
    assert remote["events.jsonl"] == sha256(run / "events.jsonl")
    assert mirror.stats.steps_uploaded == 40


def test_a_run_whose_close_finds_the_bucket_down_is_completed_when_next_opened(
    tmp_path: Path, bucket: str, s3server: S3Server
):
    run, url = tmp_path / "run-e", f"s3://{bucket}"
    store = RunStore.create(run)
    mirror = mirror_store(store, url, close_timeout_s=1.0, initial_backoff_s=0.05, max_backoff_s=0.3)
    assert mirror.flush(30)
    s3server.stop()
    try:
        for i in range(6):
            save(store, i)
        t0 = time.perf_counter()
        store.close()  # waits close_timeout_s at most, then leaves the rest for the next open
        assert time.perf_counter() - t0 < 15
    finally:
        s3server.start()
    assert not any("/steps/" in n for n in s3_filesystem().find(f"{bucket}/run-e"))
    with RunStore.open(run) as store:
        again = mirror_store(store, url)
    assert again.stats.steps_uploaded == 6
    remote = bucket_objects(f"{url}/run-e")
    assert {k: v for k, v in remote.items() if k.startswith("steps/")} == local_steps(run)


# ---------------------------------------------------------------------------- (d) runs pull
def autoscope(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("AUTOSCOPE_")}
    return subprocess.run(
        [sys.executable, "-m", "autoscope", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=base | env,
    )


def test_runs_pull_restores_a_run_that_resumes_reports_and_answers(tmp_path: Path, bucket: str):
    from autoscope.tools.queries import answer

    url = f"s3://{bucket}/agent"
    env = {"AUTOSCOPE_STORE_URL": url, "AUTOSCOPE_STORE_SYNC_INTERVAL_S": "0.5"}
    run = tmp_path / "run-d"
    cmd = ["run", "--llm", "none", "--autonomy", "manual", "--budget", "12", "--rounds", "1", "--out"]
    r = autoscope(*cmd, str(run), env=env)
    assert r.returncode == 3, r.stderr  # stopped at the hypothesis gate, for a person
    pulled = tmp_path / "elsewhere" / "run-d"
    r = autoscope("runs", "pull", f"{url}/run-d", str(pulled), env={})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(pulled.resolve()) and "checksums match" in r.stderr
    for name in ("events.jsonl", "run.json", "checkpoints.sqlite", "summary.json", "report.md"):
        assert (pulled / name).exists(), name
    assert local_steps(pulled) == local_steps(run) and local_steps(run)
    with h5py.File(pulled / "data.h5", "r") as f:  # rebuilt from steps/
        assert {f"steps/{k}.h5" for k in f} == set(local_steps(run))
    # the pulled copy goes on where the original stopped: approve the gate, finish, report
    r = autoscope("resume", str(pulled), "--answer", "approve", "--autonomy", "autonomous", env={})
    assert r.returncode == 0, r.stderr
    summary = json.loads((pulled / "summary.json").read_text())
    assert summary["status"] == "done" and summary["hypotheses"][0]["verdict"]
    assert summary["hypotheses"][0]["id"] in (pulled / "report.md").read_text()
    store = RunStore.open(pulled, read_only=True)
    assert set(local_steps(run)) < {f"steps/{s}.h5" for s in store.completed_steps()}  # nothing re-acquired
    assert "spectr" in answer(store, "measurements")


def test_runs_pull_names_what_is_wrong(tmp_path: Path, bucket: str):
    from autoscope.agents.cli import app

    cli = CliRunner()
    r = cli.invoke(app, ["runs", "pull", "https://example.org/run", str(tmp_path / "a")])
    assert r.exit_code == 2 and "not an s3:// URL" in r.output
    r = cli.invoke(app, ["runs", "pull", f"s3://{bucket}/nothing-here", str(tmp_path / "a")])
    assert r.exit_code == 2 and "no run at" in r.output
    r = cli.invoke(app, ["runs", "pull", f"s3://{bucket}", str(tmp_path / "a")])
    assert r.exit_code == 2 and "names a bucket, not a run" in r.output

    run = tmp_path / "run-f"
    with RunStore.create(run) as store:
        mirror_store(store, f"s3://{bucket}")
        save(store, 0)
        save(store, 1)
    r = cli.invoke(app, ["runs", "pull", f"s3://{bucket}/run-f", str(run)])
    assert r.exit_code == 2 and "already holds a run" in r.output
    fs, key = s3_filesystem(), f"{bucket}/run-f/steps/s0001.h5"
    fs.pipe_file(key, b"not what was stored", Metadata={"sha256": sha256(run / "steps" / "s0001.h5")})
    with pytest.raises(ChecksumMismatch, match="s0001"):
        pull_run(f"s3://{bucket}/run-f", tmp_path / "b")
    r = cli.invoke(app, ["runs", "pull", f"s3://{bucket}/run-f", str(tmp_path / "c")])
    assert r.exit_code == 1 and "checksum mismatch" in r.output and "s0001" in r.output


def test_a_store_url_that_cannot_be_used_stops_the_run_before_it_starts(
    tmp_path: Path, bucket: str, monkeypatch: pytest.MonkeyPatch
):
    from autoscope.agents.cli import app

    monkeypatch.setenv("AUTOSCOPE_STORE_URL", "s3://Not_A_Bucket/runs")
    r = CliRunner().invoke(app, ["run", "--llm", "none", "--budget", "4", "--out", str(tmp_path / "run")])
    assert r.exit_code == 2 and "store_url" in r.output and "bucket name" in r.output
