"""The remote instrument over real HTTP: auth, wire format, errors, retries, exactly-once.

Servers run in this process on a loopback port (uvicorn in a thread) so the tests can
look at the served microscope directly (its acquisition count).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from autoscope.instruments.errors import (
    ConnectionLost,
    InstrumentError,
    InstrumentTimeout,
    InvalidRequest,
    SafetyLimitExceeded,
)
from autoscope.instruments.protocols import Microscope
from autoscope.instruments.records import ImageRecord
from autoscope.instruments.remote.client import RemoteMicroscope
from autoscope.instruments.remote.server import create_app, serve, serve_in_thread
from autoscope.instruments.remote.wire import NPY_MEDIA_TYPE, RECORD_HEADER, npy_to_array
from autoscope.instruments.replay import NoiseModel, ReplayMicroscope, SpectrumImage
from autoscope.tests.servers import free_port

TOKEN = "s3cret-token"
IMAGE = {"fov_nm": 8.0, "pixels": 16, "dwell_s": 2e-6}


def _replay() -> ReplayMicroscope:
    rng = np.random.default_rng(0)
    image = rng.uniform(100.0, 300.0, (16, 16))
    spectra = rng.uniform(10.0, 50.0, (16, 16, 64))
    poisson = NoiseModel("poisson")  # expectations: each acquisition draws new counts
    si = SpectrumImage(
        image, spectra, 1.0, 0.0, 0.5, 1e-6, 0.01, 10.0, image_noise=poisson, spectrum_noise=poisson
    )
    return ReplayMicroscope(si, seed=1)


_serving = serve_in_thread


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[str, ReplayMicroscope]]:
    scope = _replay()
    with _serving(create_app(scope, TOKEN)) as url:
        yield url, scope


@pytest.fixture
def raw(served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served[0], headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        http.post("/beam/unblank")
        yield http


def test_health_needs_no_token_and_everything_else_does(served):
    url, _ = served
    assert httpx.get(f"{url}/health").json() == {"ok": True}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        r = httpx.get(f"{url}/status", headers=headers)
        assert r.status_code == 401, headers
        assert httpx.post(f"{url}/image", json=IMAGE, headers=headers).status_code == 401
    assert httpx.get(f"{url}/status", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_client_with_wrong_token_gets_a_clear_error(served):
    with (
        RemoteMicroscope(served[0], "nope") as scope,
        pytest.raises(InstrumentError, match="token rejected by"),
    ):
        scope.status()


def test_malformed_bodies_get_422_and_the_server_keeps_answering(served, raw):
    bad_field = raw.post("/image", json={**IMAGE, "fov_nm": -1.0})
    assert bad_field.status_code == 422
    assert bad_field.json()["detail"][0]["loc"][-1] == "fov_nm"
    assert raw.post("/image", json={**IMAGE, "colour": "red"}).status_code == 422
    assert (
        raw.post("/spectrum", content=b"{not json", headers={"content-type": "application/json"}).status_code
        == 422
    )
    assert raw.post("/stage", json={"x_nm": "left"}).status_code == 422
    assert httpx.get(f"{served[0]}/health").json() == {"ok": True}
    assert raw.get("/status").status_code == 200


def test_instrument_errors_map_to_statuses_with_typed_payload(served, raw):
    out_of_data = raw.post(
        "/spectrum", json={"x_nm": 40.0, "y_nm": 8.0, "dwell_s": 0.01, "energy_min_eV": 1, "energy_max_eV": 5}
    )
    assert out_of_data.status_code == 422
    assert out_of_data.json() == {
        "error": "invalid_request",
        "message": out_of_data.json()["message"],
        "field": "x_nm",
    }
    raw.post("/beam/blank")
    blanked = raw.post("/image", json=IMAGE)
    assert blanked.status_code == 409 and blanked.json()["error"] == "beam_blanked"


def test_arrays_travel_as_npy_bytes(raw):
    r = raw.post("/image", json=IMAGE, headers={"X-Request-Id": "npy-1"})
    assert r.status_code == 200
    assert r.headers["content-type"] == NPY_MEDIA_TYPE
    assert r.content[:6] == b"\x93NUMPY"
    assert npy_to_array(r.content).shape == (16, 16)
    assert ImageRecord.from_metadata(npy_to_array(r.content), _meta(r)).fov_nm == 8.0


def _meta(response: httpx.Response) -> dict:
    import json

    meta = json.loads(response.headers[RECORD_HEADER])
    assert meta.pop("kind") == "image"
    return meta


def test_same_request_id_acquires_once(served, raw):
    _, scope = served
    before = scope.status().acquisitions
    first = raw.post("/image", json=IMAGE, headers={"X-Request-Id": "once-1"})
    again = raw.post("/image", json=IMAGE, headers={"X-Request-Id": "once-1"})
    assert first.status_code == again.status_code == 200
    assert first.content == again.content and first.headers[RECORD_HEADER] == again.headers[RECORD_HEADER]
    assert scope.status().acquisitions == before + 1
    other = raw.post("/image", json=IMAGE, headers={"X-Request-Id": "once-2"})
    assert other.content != first.content  # a new id is a new (Poisson) acquisition
    assert scope.status().acquisitions == before + 2
    reused = raw.post("/image", json={**IMAGE, "pixels": 8}, headers={"X-Request-Id": "once-1"})
    assert reused.status_code == 422 and reused.json()["field"] == "X-Request-Id"
    assert scope.status().acquisitions == before + 2


def test_client_round_trip_matches_protocol(served):
    url, inner = served
    with RemoteMicroscope(url, TOKEN) as scope:
        assert isinstance(scope, Microscope)
        scope.unblank_beam()
        rec = scope.acquire_image(**IMAGE)
        assert rec.data.shape == (16, 16) and rec.center_x_nm == inner.stage_position_nm()[0]
        assert scope.status().acquisitions == inner.status().acquisitions
        spec = scope.acquire_spectrum(5.0, 9.0, 0.01, 2.0, 10.0)
        assert spec.counts.shape == (16,) and spec.energy_offset_eV == 2.0
        with pytest.raises(InvalidRequest) as exc:
            scope.move_stage(3.0, 99.0)
        assert exc.value.field == "y_nm"
        scope.blank_beam()
        assert inner.beam_blanked()


class _LoseFirstAnswer:
    """Test ASGI wrapper: for each new X-Request-Id, run the request, then drop the
    connection after the status line (the answer is lost on the way back)."""

    def __init__(self, app) -> None:
        self.app = app
        self.seen: set[str] = set()

    async def __call__(self, scope, receive, send):
        rid = dict(scope.get("headers", [])).get(b"x-request-id")
        if scope["type"] != "http" or rid is None or rid in self.seen:
            await self.app(scope, receive, send)
            return
        self.seen.add(rid)

        async def lossy_send(message):
            if message["type"] == "http.response.start":
                await send(message)
            elif message["type"] == "http.response.body":
                raise ConnectionResetError("answer lost (test)")

        await self.app(scope, receive, lossy_send)


def test_retry_after_lost_answer_returns_same_result_without_second_acquisition():
    inner = _replay()
    lossy = _LoseFirstAnswer(create_app(inner, TOKEN))
    with _serving(lossy) as url, RemoteMicroscope(url, TOKEN, retries=2, backoff_s=0.01) as scope:
        scope.unblank_beam()  # lost once, retried
        rec = scope.acquire_image(**IMAGE)
        assert inner.status().acquisitions == 1
        assert rec.t_end_s == inner.now_s()
        assert len(lossy.seen) == 2


class _Flaky:
    """A microscope whose first ``failures`` image acquisitions fail with ``error``; a fake
    that implements the protocol by delegation (the injected fault of a real device)."""

    def __init__(self, inner: Microscope, failures: int, error: type[InstrumentError]) -> None:
        self._inner, self.failures, self._error = inner, failures, error
        self.attempts = 0

    def acquire_image(self, *args, **kwargs):
        self.attempts += 1
        if self.attempts <= self.failures:
            raise self._error(f"injected fault {self.attempts}")
        return self._inner.acquire_image(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._inner, name)


@pytest.mark.parametrize(("error", "status"), [(ConnectionLost, 503), (InstrumentTimeout, 504)])
def test_client_retries_transient_instrument_faults(error, status):
    inner = _replay()
    flaky = _Flaky(inner, failures=2, error=error)
    with _serving(create_app(flaky, TOKEN)) as url:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}) as http:
            http.post("/beam/unblank")
            assert http.post("/image", json=IMAGE, headers={"X-Request-Id": "r"}).status_code == status
            flaky.attempts = 0  # the 503/504 was not cached: the same id may be sent again
        with RemoteMicroscope(url, TOKEN, retries=3, backoff_s=0.01) as scope:
            assert scope.acquire_image(**IMAGE).data.shape == (16, 16)
            assert flaky.attempts == 3 and inner.status().acquisitions == 1
        flaky.attempts = 0
        with RemoteMicroscope(url, TOKEN, retries=1, backoff_s=0.01) as scope, pytest.raises(error):
            scope.acquire_image(**IMAGE)
        assert flaky.attempts == 2


def test_unreachable_server_is_connection_lost_naming_url():
    url = f"http://127.0.0.1:{free_port()}"
    with (
        RemoteMicroscope(url, TOKEN, retries=1, backoff_s=0.01) as scope,
        pytest.raises(ConnectionLost) as exc,
    ):
        scope.now_s()
    assert url in str(exc.value)


def test_safety_limit_crosses_the_wire_with_its_fields():
    safety = pytest.importorskip("autoscope.instruments.safety")
    inner = _replay()
    limits = safety.SafetyLimits(max_current_pA=50.0)
    local = safety.SafeMicroscope(_replay(), limits)
    with pytest.raises(SafetyLimitExceeded) as here:
        local.set_beam_current(200.0)
    with (
        _serving(create_app(safety.SafeMicroscope(inner, limits), TOKEN)) as url,
        RemoteMicroscope(url, TOKEN) as scope,
        pytest.raises(SafetyLimitExceeded) as there,
    ):
        scope.set_beam_current(200.0)
    assert (there.value.limit, there.value.value, there.value.maximum) == (
        here.value.limit,
        here.value.value,
        here.value.maximum,
    )
    assert str(there.value) == str(here.value)
    assert inner.beam_current_pA() == 10.0


def test_serve_stops_by_itself_when_idle():
    port = free_port()
    thread = threading.Thread(
        target=serve,
        args=(_replay(),),
        kwargs={"port": port, "token": TOKEN, "idle_exit_s": 0.5, "log_level": "warning"},
    )
    thread.start()
    for _ in range(500):
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                break
        time.sleep(0.01)
    thread.join(30)
    assert not thread.is_alive()


def test_an_oversized_body_is_refused_before_it_is_read_whole(served, raw):
    from autoscope.instruments.remote.server import MAX_BODY_BYTES

    huge = b'{"x_nm": 1.0, "pad": "' + b"x" * (MAX_BODY_BYTES + 10) + b'"}'
    r = raw.post("/probe", content=huge, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["field"] == "body"

    def chunks():  # no Content-Length: the limit holds on what is streamed
        for _ in range(8):
            yield b"x" * (MAX_BODY_BYTES // 4)

    r = raw.post("/probe", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert raw.get("/status").status_code == 200
