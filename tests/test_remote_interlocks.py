"""Every safety limit, hit through the remote instrument: typed error, beam blanked, event logged.

Each case serves the twin from its own process with a limits file that makes one
limit the binding one; the client side wraps the remote client in its own (looser)
``SafeMicroscope`` wired to a run store, as ``autoscope survey --remote`` does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from autoscope.instruments.errors import SafetyLimitExceeded
from autoscope.instruments.records import electrons
from autoscope.instruments.remote.client import RemoteMicroscope
from autoscope.instruments.safety import SafeMicroscope, SafetyLimits
from autoscope.tests.servers import start_server, stop_server, wait_healthy
from autoscope.tools.store import RunStore

PX, DWELL_S, CURRENT_PA = 32, 1e-5, 50.0
IMAGE_E = electrons(CURRENT_PA, DWELL_S * PX * PX)


def _image(m) -> None:
    m.acquire_image(100.0, PX, DWELL_S)


def _spectrum(m) -> None:
    m.acquire_spectrum(10.0, 10.0, 0.05, -1.0, 6.0)


# limit -> (server limits, what the client does until the limit bites)
CASES: dict[str, tuple[dict, Callable]] = {
    "max_current_pA": ({"max_current_pA": 60.0}, lambda m: m.set_beam_current(80.0)),
    "stage_x_max_nm": ({"stage_x_max_nm": 200.0}, lambda m: m.move_stage(300.0, 0.0)),
    "stage_y_min_nm": ({"stage_y_min_nm": -200.0}, lambda m: m.move_stage(0.0, -300.0)),
    "max_acquisitions": ({"max_acquisitions": 2}, lambda m: [_image(m) for _ in range(3)]),
    "max_total_dose_e": ({"max_total_dose_e": 1.5 * IMAGE_E}, lambda m: [_image(m) for _ in range(2)]),
    "max_dose_e_per_A2": ({"max_dose_e_per_A2": 1.0e6}, lambda m: [_spectrum(m) for _ in range(50)]),
    "max_wall_time_s": ({"max_wall_time_s": 0.3}, lambda m: [_image(m) for _ in range(30)]),
}


@pytest.fixture(scope="module")
def servers(tmp_path_factory) -> Iterator[dict[str, tuple[str, str]]]:
    """One server per case, all started at once so their start-up overlaps."""
    root = tmp_path_factory.mktemp("interlocks")
    procs = {}
    try:
        for limit, (fields, _) in CASES.items():
            path = root / f"{limit}.yaml"
            path.write_text(yaml.safe_dump(fields))
            procs[limit] = start_server(root, "--scenario", "plasmonic", "--limits", str(path))
        for proc, url, _ in procs.values():
            wait_healthy(proc, url, root)
        yield {limit: (url, token) for limit, (_, url, token) in procs.items()}
    finally:
        for proc, _, _ in procs.values():
            stop_server(proc)


@pytest.mark.parametrize("limit", list(CASES))
def test_limit_hit_through_remote(servers, tmp_path: Path, limit: str):
    url, token = servers[limit]
    _, action = CASES[limit]
    with RemoteMicroscope(url, token) as remote, RunStore.create(tmp_path / "run") as store:
        scope = SafeMicroscope(remote, SafetyLimits(), on_event=lambda e: store.append_event(**e))
        scope.set_beam_current(CURRENT_PA) if limit != "max_current_pA" else None
        scope.unblank_beam()
        with pytest.raises(SafetyLimitExceeded) as caught:
            action(scope)
        assert caught.value.limit == limit
        assert caught.value.value > caught.value.maximum or limit.endswith("_min_nm")
        assert "limits file" in str(caught.value)
        assert remote.beam_blanked(), "the server must leave the beam blanked"
        stops = store.events("safety_stop")
        assert [e["limit"] for e in stops] == [limit]
        assert stops[0]["enforced_by"] == "instrument"


def test_limits_cannot_be_changed_over_http(servers):
    import httpx

    url, token = servers["max_current_pA"]
    auth = {"Authorization": f"Bearer {token}"}
    for method, route in [("POST", "/limits"), ("PUT", "/limits"), ("PATCH", "/status"), ("POST", "/status")]:
        r = httpx.request(method, url + route, headers=auth, json={"max_current_pA": 1e6}, timeout=5)
        assert r.status_code in (404, 405), (method, route, r.status_code)
    with RemoteMicroscope(url, token) as remote, pytest.raises(SafetyLimitExceeded):
        remote.set_beam_current(80.0)  # still enforced
