"""HTTP server that exposes one microscope to remote clients.

``GET /health`` answers without a token; every other route needs
``Authorization: Bearer <token>``. Access to the microscope is serialised by one lock
(it is a single physical device). A ``POST`` carrying ``X-Request-Id`` is executed at
most once: its answer is cached, so a client that lost the connection and sends the
same request again gets the same result without a second acquisition. Answers after
which a retry may succeed (503, 504) are not cached. With a state directory the cache
(and the ledger of acquisitions the server's interlocks charge on start) is SQLite on
disk (``state.ServerState``) and survives a kill and restart of the server.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any

import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from autoscope.instruments.errors import InstrumentError, InvalidRequest
from autoscope.instruments.protocols import Microscope
from autoscope.instruments.records import ImageRecord, ImageRequest, SpectrumRequest, request_sha256
from autoscope.instruments.remote.idle import watch_idle
from autoscope.instruments.remote.state import ServerState
from autoscope.instruments.remote.wire import (
    NPY_MEDIA_TYPE,
    REQUEST_ID_HEADER,
    RETRYABLE_STATUSES,
    BeamCurrent,
    BeamState,
    Position,
    encode_record,
    status_for,
)

log = logging.getLogger(__name__)

JSON_MEDIA_TYPE = "application/json"
#: the idempotency key a client sends with every POST (module level: FastAPI resolves it by name)
RequestId = Annotated[str | None, Header(alias=REQUEST_ID_HEADER)]


@dataclass(frozen=True)
class _Answer:
    """What a route's action produced: the response, and the acquisition it reports (if any)."""

    response: Response
    acquisition: dict[str, Any] | None = None


class _Activity:
    """Time of the last request and the number in flight (for the idle shutdown)."""

    def __init__(self) -> None:
        self.last_s = time.monotonic()
        self.in_flight = 0

    def idle_s(self) -> float:
        return 0.0 if self.in_flight else time.monotonic() - self.last_s


class _ActivityMiddleware:
    """Pure ASGI middleware that records request activity."""

    def __init__(self, app: Any, activity: _Activity) -> None:
        self.app = app
        self.activity = activity

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.activity.in_flight += 1
        self.activity.last_s = time.monotonic()
        try:
            await self.app(scope, receive, send)
        finally:
            self.activity.in_flight -= 1
            self.activity.last_s = time.monotonic()


#: the largest request body the server reads (its JSON bodies are a few hundred bytes)
MAX_BODY_BYTES = 64 * 1024


class _BodyLimitMiddleware:
    """Pure ASGI middleware: a body over ``limit`` bytes is answered 413 without being read whole."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._refuse(send)
            return
        seen, refused = 0, False

        async def limited() -> Any:
            nonlocal seen, refused
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit and not refused:
                refused = True
                await self._refuse(send)
                return {"type": "http.disconnect"}  # the app stops reading; its answer is dropped
            return message

        async def guarded(message: Any) -> None:
            if not refused:
                await send(message)

        await self.app(scope, limited, guarded)

    async def _refuse(self, send: Any) -> None:
        body = json.dumps(
            {"error": "invalid_request", "field": "body", "message": f"body: larger than {self.limit} bytes"}
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _json(obj: Any, status_code: int = 200) -> Response:
    body = obj.model_dump_json() if isinstance(obj, BaseModel) else json.dumps(obj)
    return Response(body.encode(), status_code, media_type=JSON_MEDIA_TYPE)


def _error(exc: InstrumentError) -> Response:
    return _json(exc.to_dict(), status_for(exc))


def create_app(
    microscope: Microscope, token: str, *, cache_size: int = 256, state: ServerState | None = None
) -> FastAPI:
    """FastAPI app serving ``microscope``; clients authenticate with ``token``.

    ``state``: where answers and acquisitions are kept (default: in memory, ``cache_size`` answers).
    """
    if not token:
        raise ValueError("the instrument server needs a non-empty token")
    expected = f"Bearer {token}".encode()
    lock = threading.Lock()
    cache = state if state is not None else ServerState(None, size=cache_size)
    activity = _Activity()

    app = FastAPI(title="autoscope instrument", summary="A STEM served over HTTP.")
    app.state.activity = activity
    app.add_middleware(_ActivityMiddleware, activity=activity)
    app.add_middleware(_BodyLimitMiddleware, limit=MAX_BODY_BYTES)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Any, exc: RequestValidationError) -> Response:
        """422 with the field named; the offending input is not echoed (it may be NaN or huge)."""
        errors = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type")}
            for e in exc.errors()
        ]
        loc = errors[0]["loc"] if errors else []
        field = ".".join(str(p) for p in loc[1:]) if errors and errors[0]["type"] != "json_invalid" else ""
        field = field or "body"
        payload = {
            "error": "invalid_request",
            "field": field,
            "message": f"{field}: {errors[0]['msg'] if errors else 'invalid'}",
            "detail": errors,
        }
        return Response(json.dumps(payload, default=str).encode(), 422, media_type=JSON_MEDIA_TYPE)

    @app.exception_handler(StarletteHTTPException)
    async def unreadable_body(request: Any, exc: StarletteHTTPException) -> Response:
        """A body that is not JSON at all is answered like any bad field: it names ``body``."""
        if exc.status_code == 400:
            return _json(InvalidRequest("body", str(exc.detail)).to_dict(), 400)
        return await http_exception_handler(request, exc)

    def authorize(authorization: Annotated[str | None, Header()] = None) -> None:
        if authorization is None or not hmac.compare_digest(authorization.encode(), expected):
            raise HTTPException(
                401, detail="missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
            )

    def call(
        action: Callable[[], Response | _Answer], request_id: str | None = None, fingerprint: str = ""
    ) -> Response:
        """Run ``action`` under the device lock; replay a stored answer for a known request id."""
        with lock:
            if request_id is not None:
                hit = cache.get(request_id)
                if hit is not None:
                    fp, status, headers, media_type, body = hit
                    if fp != fingerprint:
                        return _error(
                            InvalidRequest("X-Request-Id", "id already used for a different request")
                        )
                    log.info("request %s answered from the idempotency cache", request_id)
                    return Response(body, status, headers=headers, media_type=media_type)
            acquisition = None
            try:
                answer = action()
                response, acquisition = (
                    (answer.response, answer.acquisition) if isinstance(answer, _Answer) else (answer, None)
                )
            except InstrumentError as exc:
                log.info("instrument refused: %s", exc)
                response = _error(exc)
            except Exception as exc:  # an instrument bug must not kill the server
                log.exception("unexpected error in the instrument")
                response = _error(InstrumentError(f"internal instrument error: {type(exc).__name__}: {exc}"))
            if request_id is not None and response.status_code not in RETRYABLE_STATUSES:
                cache.put(
                    request_id,
                    fingerprint,
                    response.status_code,
                    {k: v for k, v in response.headers.items() if k.lower() != "content-length"},
                    response.media_type or JSON_MEDIA_TYPE,
                    bytes(response.body),
                    acquisition,
                )
            elif acquisition is not None:
                cache.add_acquisition(acquisition, request_id)
            return response

    def fingerprint(route: str, body: BaseModel | None = None) -> str:
        return request_sha256({"route": route, **(body.model_dump(mode="json") if body is not None else {})})

    def record_response(record: Any) -> _Answer:
        body, headers = encode_record(record)
        kind = "image" if isinstance(record, ImageRecord) else "spectrum"
        return _Answer(
            Response(body, 200, headers=headers, media_type=NPY_MEDIA_TYPE),
            {"record": kind, **json.loads(json.dumps(record.metadata(), default=str))},
        )

    @app.get("/health")
    def health() -> dict[str, bool]:
        return {"ok": True}

    api = APIRouter(dependencies=[Depends(authorize)])

    @api.get("/status")
    def status() -> Response:
        return call(lambda: _json(microscope.status()))

    @api.get("/capabilities")
    def capabilities() -> Response:
        return call(lambda: _json(microscope.capabilities()))

    @api.get("/clock")
    def clock() -> Response:
        return call(lambda: _json({"now_s": microscope.now_s()}))

    @api.post("/image")
    def image(req: ImageRequest, request_id: RequestId = None) -> Response:
        def act() -> _Answer:
            return record_response(
                microscope.acquire_image(
                    req.fov_nm, req.pixels, req.dwell_s, req.detector, **req.rows_kwargs()
                )
            )

        return call(act, request_id, fingerprint("image", req))

    @api.post("/spectrum")
    def spectrum(req: SpectrumRequest, request_id: RequestId = None) -> Response:
        def act() -> _Answer:
            rec = microscope.acquire_spectrum(
                req.x_nm, req.y_nm, req.dwell_s, req.energy_min_eV, req.energy_max_eV
            )
            return record_response(rec)

        return call(act, request_id, fingerprint("spectrum", req))

    def position(get: Callable[[], tuple[float, float]]) -> Response:
        x_nm, y_nm = get()
        return _json(Position(x_nm=x_nm, y_nm=y_nm))

    @api.get("/probe")
    def get_probe() -> Response:
        return call(lambda: position(microscope.probe_position_nm))

    @api.post("/probe")
    def move_probe(pos: Position, request_id: RequestId = None) -> Response:
        def act() -> Response:
            microscope.move_probe(pos.x_nm, pos.y_nm)
            return position(microscope.probe_position_nm)

        return call(act, request_id, fingerprint("probe", pos))

    @api.get("/stage")
    def get_stage() -> Response:
        return call(lambda: position(microscope.stage_position_nm))

    @api.post("/stage")
    def move_stage(pos: Position, request_id: RequestId = None) -> Response:
        def act() -> Response:
            microscope.move_stage(pos.x_nm, pos.y_nm)
            return position(microscope.stage_position_nm)

        return call(act, request_id, fingerprint("stage", pos))

    def beam_state() -> Response:
        return _json(BeamState(blanked=microscope.beam_blanked(), current_pA=microscope.beam_current_pA()))

    @api.get("/beam")
    def beam() -> Response:
        return call(beam_state)

    @api.post("/beam/blank")
    def blank(request_id: RequestId = None) -> Response:
        def act() -> Response:
            microscope.blank_beam()
            return beam_state()

        return call(act, request_id, fingerprint("blank"))

    @api.post("/beam/unblank")
    def unblank(request_id: RequestId = None) -> Response:
        def act() -> Response:
            microscope.unblank_beam()
            return beam_state()

        return call(act, request_id, fingerprint("unblank"))

    @api.post("/beam/current")
    def set_current(body: BeamCurrent, request_id: RequestId = None) -> Response:
        def act() -> Response:
            microscope.set_beam_current(body.current_pA)
            return beam_state()

        return call(act, request_id, fingerprint("current", body))

    app.include_router(api)
    return app


def free_port() -> int:
    """A TCP port free on loopback now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve_in_thread(app: Any, *, name: str = "server", start_timeout_s: float = 20.0) -> Iterator[str]:
    """Serve an ASGI ``app`` with uvicorn on a free loopback port in a daemon thread; yield its
    URL (``http://127.0.0.1:PORT``) and stop the server on exit. For benchmarks and tests."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True, name=f"{name}-{port}")
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"{name} on port {port} did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def serve(
    microscope: Microscope,
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    token: str,
    idle_exit_s: float | None = None,
    log_level: str | None = None,
    state: ServerState | None = None,
) -> None:
    """Serve ``microscope`` over HTTP until interrupted (blocking).

    With ``idle_exit_s``, the server stops by itself after that long without a request.
    ``log_level`` of uvicorn (access log at ``info``); by default the root logger's level.
    ``state``: the on-disk idempotency cache and acquisition ledger (default: in memory).
    """
    app = create_app(microscope, token, state=state)
    level = log_level or logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower()
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=level))
    log.info("autoscope instrument server at http://%s:%d (%s)", host, port, type(microscope).__name__)
    if idle_exit_s is not None:
        watch_idle(server, app.state.activity.idle_s, float(idle_exit_s), "the instrument server")
    server.run()
    log.info("instrument server at http://%s:%d stopped", host, port)
