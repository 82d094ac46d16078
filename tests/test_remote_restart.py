"""The instrument server killed and restarted: retried requests are answered from its
on-disk cache, and its interlocks still count what the sample received before."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest
import yaml

from autoscope.instruments.remote.state import ServerState, is_loopback
from autoscope.instruments.remote.wire import REQUEST_ID_HEADER
from autoscope.tests.servers import free_port, start_server, stop_server, wait_healthy

SPECTRUM = {"x_nm": 10.0, "y_nm": 10.0, "dwell_s": 0.01, "energy_min_eV": -1.0, "energy_max_eV": 6.0}


def _kill(proc) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)


def test_a_retry_after_a_server_kill_and_restart_is_answered_from_the_cache(tmp_path: Path):
    port, token = free_port(), "restart-token"
    auth = {"Authorization": f"Bearer {token}"}
    proc, url, _ = start_server(tmp_path, "--scenario", "plasmonic", port=port, token=token)
    try:
        wait_healthy(proc, url, tmp_path)
        httpx.post(f"{url}/beam/unblank", headers=auth)
        first = httpx.post(f"{url}/spectrum", json=SPECTRUM, headers={**auth, REQUEST_ID_HEADER: "req-1"})
        assert first.status_code == 200
        assert httpx.get(f"{url}/status", headers=auth).json()["acquisitions"] == 1
    finally:
        _kill(proc)  # no clean shutdown: what is on disk is all there is
    proc, url, _ = start_server(tmp_path, "--scenario", "plasmonic", port=port, token=token)
    try:
        wait_healthy(proc, url, tmp_path)
        again = httpx.post(f"{url}/spectrum", json=SPECTRUM, headers={**auth, REQUEST_ID_HEADER: "req-1"})
        assert again.status_code == 200 and again.content == first.content
        # the fresh twin behind the restarted server acquired nothing: the answer came from disk
        assert httpx.get(f"{url}/status", headers=auth).json()["acquisitions"] == 0
        other = httpx.post(
            f"{url}/spectrum", json={**SPECTRUM, "x_nm": 20.0}, headers={**auth, REQUEST_ID_HEADER: "req-1"}
        )
        assert other.status_code == 422 and "different request" in other.json()["message"]
    finally:
        stop_server(proc)


def test_a_restarted_server_still_charges_what_the_sample_received(tmp_path: Path):
    limits = tmp_path / "limits.yaml"
    limits.write_text(yaml.safe_dump({"max_acquisitions": 2}))
    port, token = free_port(), "ledger-token"
    auth = {"Authorization": f"Bearer {token}"}
    args = ("--scenario", "plasmonic", "--limits", str(limits))
    for i in range(2):  # one acquisition in each of two server lives
        proc, url, _ = start_server(tmp_path, *args, port=port, token=token)
        try:
            wait_healthy(proc, url, tmp_path)
            httpx.post(f"{url}/beam/unblank", headers=auth)
            r = httpx.post(f"{url}/spectrum", json=SPECTRUM, headers={**auth, REQUEST_ID_HEADER: f"a{i}"})
            assert r.status_code == 200, r.text
        finally:
            _kill(proc)
    proc, url, _ = start_server(tmp_path, *args, port=port, token=token)
    try:
        wait_healthy(proc, url, tmp_path)
        httpx.post(f"{url}/beam/unblank", headers=auth)
        third = httpx.post(f"{url}/spectrum", json=SPECTRUM, headers={**auth, REQUEST_ID_HEADER: "a2"})
        assert third.status_code == 403 and third.json()["limit"] == "max_acquisitions"
    finally:
        stop_server(proc)


def test_the_state_file_keeps_answers_in_order_and_drops_the_oldest(tmp_path: Path):
    state = ServerState(tmp_path, size=3)
    for i in range(5):
        state.put(f"r{i}", "fp", 200, {"x": str(i)}, "application/json", b"%d" % i, {"record": "spectrum"})
    state.close()
    again = ServerState(tmp_path, size=3)
    assert len(again) == 3 and again.get("r0") is None
    assert again.get("r4") == ("fp", 200, {"x": "4"}, "application/json", b"4")
    assert len(again.history()) == 5  # the ledger keeps every acquisition, cached or not


@pytest.mark.parametrize(
    "host, loop",
    [("127.0.0.1", True), ("::1", True), ("localhost", True), ("0.0.0.0", False), ("10.1.2.3", False)],
)
def test_loopback_addresses_are_told_apart(host: str, loop: bool):
    assert is_loopback(host) is loop


def test_binding_a_public_address_without_a_chosen_token_is_refused(tmp_path: Path, monkeypatch):
    from typer.testing import CliRunner

    from autoscope.agents.cli import app

    monkeypatch.delenv("AUTOSCOPE_TOKEN", raising=False)
    r = CliRunner().invoke(
        app,
        [
            "instrument",
            "serve",
            "--host",
            "0.0.0.0",
            "--state-dir",
            str(tmp_path / "s"),
            "--idle-exit-s",
            "1",
        ],
    )
    assert r.exit_code == 2 and "token" in r.output and "0.0.0.0" in r.output
