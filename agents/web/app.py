"""The web workspace's application: pages, the JSON API and the live stream of a run.

Routes (all but ``/health`` need a token, see ``auth.py``):

    GET  /                           the runs page        GET /runs/NAME     a run's page
    GET  /api/runs                   every run (status, scenario, spectra, dose, verdicts)
    POST /api/runs                   start a run from the form's fields
    GET  /api/scenarios              the scenarios the form offers
    GET  /api/runs/NAME/state        the run page's state (``views.run_state``)
    GET  /api/runs/NAME/stream       the same, as server-sent events, again on every change
    POST /api/runs/NAME/resume       resume a killed or stopped run from its checkpoint
    POST /api/runs/NAME/answer       answer the pending gate (409: answered already; 422: fields)
    POST /api/runs/NAME/ask          a question about the data (read-only tools)
    GET  /api/runs/NAME/survey.png | spectrum/STEP | prediction/H1 | files/FILE
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import (
    FileResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from pydantic import BaseModel, Field, ValidationError

from autoscope.agents import session
from autoscope.agents.runner import RunOptions
from autoscope.agents.web import views
from autoscope.agents.web.auth import COOKIE, Auth
from autoscope.agents.web.manager import GateConflict, RunManager, StartFailed
from autoscope.instruments.errors import ConfigError, InstrumentError

log = logging.getLogger(__name__)
STATIC = Path(str(resources.files("autoscope.agents.web").joinpath("static")))
_FILE = re.compile(r"[A-Za-z0-9_.-]+\.(png|md|json|js|css|html|svg)")


class StartRun(BaseModel):
    scenario: str | None = None
    remote: str | None = Field(None, description="URL of a served instrument instead of the twin")
    remote_token: str | None = None
    goal: str = ""
    notes: str = ""
    budget: int | None = Field(None, ge=1)
    rounds: int | None = Field(None, ge=1, le=20)
    autonomy: Literal["manual", "supervised", "autonomous"] = "manual"
    llm: Literal["local", "openai", "none"] = "none"


class Answer(BaseModel):
    key: str
    action: Literal["approve", "edit", "reject", "redirect"]
    edit: dict[str, Any] | None = None
    reason: str = ""
    instruction: str = ""


class Ask(BaseModel):
    question: str = Field(min_length=1, max_length=2000)


class Activity:
    """When the last request came (``--idle-exit-s``)."""

    def __init__(self) -> None:
        self.last = time.monotonic()

    def touch(self) -> None:
        self.last = time.monotonic()

    def idle_s(self) -> float:
        return time.monotonic() - self.last


def _field_errors(exc: Exception) -> dict[str, str]:
    if isinstance(exc, ValidationError):
        return {".".join(str(p) for p in e["loc"]) or "value": e["msg"] for e in exc.errors()}
    field = getattr(exc, "field", None) or "value"
    return {field: str(exc).split(": ", 1)[-1]}


def create_app(runs_dir: Path, tokens: dict[str, str], *, manager: RunManager | None = None) -> FastAPI:
    auth = Auth(tokens)
    runs = manager or RunManager(runs_dir)
    app = FastAPI(title="autoscope web", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.manager = runs
    app.state.activity = activity = Activity()
    llms: dict[str, Any] = {}

    @app.middleware("http")
    async def remember(request: Request, call_next):
        activity.touch()
        return await call_next(request)

    def run_dir(name: str) -> Path:
        try:
            return runs.run_dir(name)
        except KeyError:
            raise HTTPException(404, f"no run {name!r} in {runs.runs_dir}") from None

    def page(file: str, request: Request) -> Response:
        if request.query_params.get("token"):  # first visit: keep the token in a cookie, not the address
            resp: Response = RedirectResponse(request.url.path, status_code=303)
            resp.set_cookie(COOKIE, request.query_params["token"], httponly=True, samesite="strict")
            return resp
        return FileResponse(STATIC / file, media_type="text/html", headers={"Cache-Control": "no-store"})

    # ---------------------------------------------------------------- pages
    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"ok": True, "running": [n for n in list(runs._threads) if runs.is_running(n)]}

    @app.get("/")
    def index(request: Request, who: str = Depends(auth)) -> Response:
        return page("index.html", request)

    @app.get("/runs/{name}")
    def run_page(name: str, request: Request, who: str = Depends(auth)) -> Response:
        run_dir(name)
        return page("run.html", request)

    @app.get("/static/{file}")
    def static(file: str, who: str = Depends(auth)) -> Response:
        if not _FILE.fullmatch(file) or not (STATIC / file).is_file():
            raise HTTPException(404, f"no file {file!r}")
        return FileResponse(STATIC / file, headers={"Cache-Control": "no-cache"})

    # ---------------------------------------------------------------- runs
    @app.get("/api/me")
    def me(who: str = Depends(auth)) -> dict[str, str]:
        return {"name": who}

    @app.get("/api/scenarios")
    def scenarios(who: str = Depends(auth)) -> list[dict[str, str]]:
        from autoscope.instruments.factory import describe_scenarios

        return [{"name": n, "description": d} for n, d in describe_scenarios()]

    @app.get("/api/schema/{gate}")
    def schema(gate: str, who: str = Depends(auth)) -> dict[str, Any]:
        try:
            return session.edit_schema(gate)
        except InstrumentError as exc:
            raise HTTPException(404, str(exc)) from None

    @app.get("/api/runs")
    def list_runs(who: str = Depends(auth)) -> list[dict[str, Any]]:
        rows = session.list_runs(runs.runs_dir)
        for r in rows:
            r["status"] = (
                runs.status(r["name"])
                if r["name"] in runs.errors or runs.is_running(r["name"])
                else r["status"]
            )
            r["error"] = runs.errors.get(r["name"])
        return rows

    @app.post("/api/runs", status_code=201)
    def start(body: StartRun, who: str = Depends(auth)) -> dict[str, str]:
        from autoscope.instruments.factory import describe_scenarios

        names = [n for n, _ in describe_scenarios()]
        if body.scenario and body.scenario not in names:
            raise HTTPException(
                422,
                {"message": "unknown scenario", "field_errors": {"scenario": f"choose {', '.join(names)}"}},
            )
        if body.remote and not re.match(r"https?://", body.remote):
            raise HTTPException(
                422, {"message": "bad URL", "field_errors": {"remote": "an http:// or https:// URL"}}
            )
        try:
            spec = session.new_spec(
                scenario=body.scenario,
                goal=body.goal,
                notes=body.notes,
                budget=body.budget,
                rounds=body.rounds,
            )
        except (ConfigError, ValidationError, ValueError) as exc:
            raise HTTPException(422, {"message": str(exc), "field_errors": _field_errors(exc)}) from None
        options = RunOptions(
            autonomy=body.autonomy, llm=body.llm, remote=body.remote, token=body.remote_token
        )
        try:
            return {"name": runs.start(spec, options, who)}
        except StartFailed as exc:
            raise HTTPException(422, {"message": str(exc), "field_errors": {}}) from None

    @app.get("/api/runs/{name}/state")
    def state(name: str, who: str = Depends(auth)) -> dict[str, Any]:
        return views.run_state(run_dir(name), runs.status(name), runs.errors.get(name))

    @app.get("/api/runs/{name}/stream")
    async def stream(name: str, request: Request, who: str = Depends(auth)) -> StreamingResponse:
        d = run_dir(name)

        async def events():
            yield "retry: 1000\n\n"
            last, quiet = None, time.monotonic()
            while not await request.is_disconnected():
                activity.touch()
                stamp = (views.change_stamp(d), runs.status(name), runs.errors.get(name))
                if stamp != last:
                    try:
                        doc = await run_in_threadpool(views.run_state, d, stamp[1], stamp[2])
                    except Exception as exc:  # a half-written file: try again at the next tick
                        log.debug("state of %s not readable yet: %s", name, exc)
                    else:
                        last, quiet = stamp, time.monotonic()
                        yield f"event: state\ndata: {json.dumps(doc, default=str)}\n\n"
                elif time.monotonic() - quiet > 15:
                    quiet = time.monotonic()
                    yield ": still here\n\n"
                await asyncio.sleep(0.4)

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @app.post("/api/runs/{name}/resume", status_code=202)
    def resume(name: str, who: str = Depends(auth)) -> dict[str, str]:
        run_dir(name)
        try:
            runs.resume(name, who)
        except GateConflict as exc:
            raise HTTPException(409, str(exc)) from None
        return {"status": "running"}

    @app.post("/api/runs/{name}/answer", status_code=202)
    def answer(name: str, body: Answer, who: str = Depends(auth)) -> dict[str, Any]:
        d = run_dir(name)
        pending = session.pending_gate(d)
        if pending is not None and pending.key == body.key and body.action == "edit":
            base = pending.request.proposal
            if pending.request.gate == "intervention":
                base = views.edit_base(views.run_state(d, "stopped"), pending.request)
            errors = session.edit_errors(pending.request.gate, base, body.edit or {})
            if errors:
                return JSONResponse(
                    {"detail": {"message": "the edit is not valid", "field_errors": errors}}, status_code=422
                )
        try:
            response = session.respond(
                body.action, who, edit=body.edit, reason=body.reason, instruction=body.instruction
            )
        except InstrumentError as exc:
            raise HTTPException(422, {"message": str(exc), "field_errors": _field_errors(exc)}) from None
        try:
            runs.answer(name, body.key, response)
        except GateConflict as exc:
            raise HTTPException(409, str(exc)) from None
        return {"status": "running", "who": who}

    @app.post("/api/runs/{name}/ask")
    def ask(name: str, body: Ask, who: str = Depends(auth)) -> dict[str, str]:
        d = run_dir(name)
        return {"question": body.question, "answer": session.answer_question(d, body.question, _llm(d))}

    def _llm(d: Path):
        backend = (session._read_json(d / session.RUN_FILE) or {}).get("llm") or "none"
        if backend == "none":
            return None
        if backend not in llms:
            from autoscope.agents.llm import make_llm
            from autoscope.agents.settings import load_settings

            try:
                llms[backend] = make_llm(backend, load_settings())
            except Exception as exc:  # keywords choose the tool without a model
                log.warning("no %s model for questions (%s): keywords choose the tool", backend, exc)
                llms[backend] = None
        return llms[backend]

    # ---------------------------------------------------------------- data
    @app.get("/api/runs/{name}/survey.png")
    def survey_png(name: str, who: str = Depends(auth)) -> Response:
        try:
            return Response(views.survey_png(run_dir(name)), media_type="image/png")
        except (KeyError, FileNotFoundError):
            raise HTTPException(404, "no survey image yet") from None

    @app.get("/api/runs/{name}/spectrum/{step_id}")
    def spectrum(name: str, step_id: str, who: str = Depends(auth)) -> dict[str, Any]:
        try:
            return views.spectrum(run_dir(name), step_id)
        except (KeyError, ValueError, FileNotFoundError):
            raise HTTPException(404, f"no spectrum {step_id!r}") from None

    @app.get("/api/runs/{name}/prediction/{hid}")
    def prediction(name: str, hid: str, who: str = Depends(auth)) -> dict[str, Any]:
        try:
            return views.prediction(run_dir(name), hid)
        except (KeyError, ValueError):
            raise HTTPException(404, f"no prediction for {hid!r}") from None

    @app.get("/api/runs/{name}/files/{file}")
    def files(name: str, file: str, who: str = Depends(auth)) -> Response:
        d = run_dir(name)
        if not _FILE.fullmatch(file) or not (d / file).is_file():
            raise HTTPException(404, f"no file {file!r}")
        if file.endswith(".md"):
            return PlainTextResponse((d / file).read_text(), media_type="text/markdown")
        return FileResponse(d / file, headers={"Cache-Control": "no-cache"})

    return app
