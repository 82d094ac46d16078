"""``autoscope mcp``: the workbench as an MCP server (the official ``mcp`` SDK's ``MCPServer``).

Tools: ``instrument_status``, ``capabilities``, ``survey``, ``spectrum_at``, ``dry_run_plan``,
``start_run``, ``submit_plan``, ``run_status``, ``query``. Resources: ``autoscope://survey/image``
(the survey image, PNG), ``autoscope://survey/figure`` (the annotated survey figure, PNG) and
``autoscope://runs/{run}/report`` (a run's report, Markdown). Every instrument action goes
through ``SafeMicroscope`` and the workbench run store (``agents/mcp_workbench.py``); a refusal
comes back as a tool error (``is_error``) whose text names the limit or the field.

Transports: stdio (the client starts the server), or streamable HTTP on loopback, where
every request must carry ``Authorization: Bearer <token>`` (else 401).
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import Iterator
from typing import Annotated, Any, Literal

import anyio
from mcp.server.mcpserver import Context, Image, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from pydantic import Field, ValidationError

from autoscope.agents.gates import Level
from autoscope.agents.mcp_workbench import WORKBENCH, Workbench, spectrum_summary, survey_summary
from autoscope.instruments.errors import (
    ConfigError,
    InstrumentError,
    InvalidRequest,
    SafetyLimitExceeded,
    validation_field,
)
from autoscope.instruments.remote.idle import watch_idle
from autoscope.tools.plan import PlanValidationError
from autoscope.tools.queries import TOOLS as QUERY_TOOLS
from autoscope.tools.store import RunStoreError

log = logging.getLogger(__name__)
#: the read-only questions of ``tools/queries.py``, by name
QueryTool = Literal[tuple(QUERY_TOOLS)]  # type: ignore[valid-type]

INSTRUCTIONS = """\
autoscope: a scanning transmission electron microscope (or its simulated twin) behind safety limits
that a person set and no agent can change. Look first (instrument_status, capabilities), take a
survey (an overview image and a few EELS spectra), measure spectra where you choose (spectrum_at),
dry-run plans (dry_run_plan; the schema is `autoscope plan-schema`), start a graph run (start_run) and
follow it (run_status, query). A run stops at every gate that needs a person; you may submit an
edited plan at its plan gate (submit_plan), which a person then approves. A request beyond a limit
is refused with an error naming the limit: lower the request, do not retry it."""


@contextlib.contextmanager
def tool_errors() -> Iterator[None]:
    """Typed refusals as tool errors a model can read: the limit or the field, and why."""
    try:
        yield
    except SafetyLimitExceeded as exc:
        raise ToolError(
            f"refused by the safety limit {exc.limit} (asked {exc.value:.4g}, limit {exc.maximum:.4g}): {exc}"
        ) from exc
    except (InvalidRequest, ConfigError) as exc:
        raise ToolError(f"invalid request: {exc}") from exc
    except ValidationError as exc:
        where, msg = validation_field(exc)
        raise ToolError(f"invalid request: {where}: {msg}") from exc
    except PlanValidationError as exc:
        raise ToolError(f"invalid plan: {exc}") from exc
    except RunStoreError as exc:
        raise ToolError(f"run store: {exc}") from exc
    except InstrumentError as exc:
        raise ToolError(f"instrument error: {exc}") from exc


def client_name(ctx: Context | None) -> str:
    """``mcp:<the client's name>`` as it introduced itself, for the decision log."""
    name = None
    with contextlib.suppress(Exception):
        name = ctx.session.client_params.client_info.name  # type: ignore[union-attr]
    return f"mcp:{name or 'outside agent'}"


def build_server(bench: Workbench) -> MCPServer:
    """The MCP server of ``bench``: typed tools (their docstrings are what the outside model reads)."""
    mcp = MCPServer("autoscope", instructions=INSTRUCTIONS)

    @mcp.tool()
    def instrument_status() -> dict[str, Any]:
        """The instrument now: stage and probe position (nm), beam blanked or not, beam current (pA),
        clock (s), acquisitions and dose as the instrument and the safety interlocks count them."""
        with tool_errors():
            return bench.status()

    @mcp.tool()
    def capabilities() -> dict[str, Any]:
        """What the instrument can do (field of view, stage travel, current range, spectrometer), the
        safety limits a person set (max_current_pA, max_total_dose_e, max_dose_e_per_A2, stage box,
        max_acquisitions, max_wall_time_s) and the survey's defaults. No agent can change the limits."""
        with tool_errors():
            return bench.capabilities()

    @mcp.tool(structured_output=False)
    def survey(
        fov_nm: Annotated[float | None, Field(description="width of the field (nm)")] = None,
        pixels: Annotated[int | None, Field(description="pixels across (8..4096)")] = None,
        rows: Annotated[int | None, Field(description="pixels down (default: square)")] = None,
        dwell_s: Annotated[float | None, Field(description="pixel dwell (s)")] = None,
        current_pA: Annotated[float | None, Field(description="beam current (pA), within the limit")] = None,
        spectra: Annotated[int | None, Field(description="spectra at chosen features (0..256)")] = None,
        spectrum_dwell_s: Annotated[float | None, Field(description="exposure of each spectrum (s)")] = None,
        energy_min_eV: Annotated[float | None, Field(description="spectral window start (eV)")] = None,
        energy_max_eV: Annotated[float | None, Field(description="spectral window end (eV)")] = None,
        center_x_nm: Annotated[
            float | None, Field(description="field centre x (nm; default: the stage)")
        ] = None,
        center_y_nm: Annotated[
            float | None, Field(description="field centre y (nm; default: the stage)")
        ] = None,
    ) -> list[Any]:
        """Take the survey: an overview image and a few spectra on its largest features (and one dark
        reference), every field defaulting to the instrument's survey defaults. Returns a JSON summary
        (positions, dose) and the image as PNG, one pixel per scan pixel, row 0 at the top. The survey
        is stored once: asking again for the same survey reads it back; a different one is refused."""
        fields = {
            "fov_nm": fov_nm,
            "pixels": pixels,
            "rows": rows,
            "dwell_s": dwell_s,
            "current_pA": current_pA,
            "spectra": spectra,
            "spectrum_dwell_s": spectrum_dwell_s,
            "energy_min_eV": energy_min_eV,
            "energy_max_eV": energy_max_eV,
            "center_x_nm": center_x_nm,
            "center_y_nm": center_y_nm,
        }
        with tool_errors():
            plan, result = bench.survey(fields)
            return [survey_summary(plan, result), Image(data=bench.survey_png(), format="png")]

    @mcp.tool()
    def spectrum_at(
        x_nm: Annotated[float, Field(description="probe position x, sample frame (nm)")],
        y_nm: Annotated[float, Field(description="probe position y, sample frame (nm)")],
        dwell_s: Annotated[float, Field(description="exposure (s)")],
        current_pA: Annotated[
            float | None, Field(description="beam current to set first (pA); default: as it is")
        ] = None,
        energy_min_eV: Annotated[
            float | None, Field(description="window start (eV); default: the survey's")
        ] = None,
        energy_max_eV: Annotated[
            float | None, Field(description="window end (eV); default: the survey's")
        ] = None,
        name: Annotated[
            str | None,
            Field(
                description="a name for this measurement: asked again with the same name and request, "
                "the stored spectrum comes back instead of a new exposure"
            ),
        ] = None,
    ) -> dict[str, Any]:
        """Park the probe at (x_nm, y_nm) and record one EELS spectrum for dwell_s; returns its
        metadata (dose, time, position), energy axis (eV) and counts. A current or dose beyond the
        limits is refused before anything reaches the instrument."""
        with tool_errors():
            step_id, rec = bench.spectrum_at(
                x_nm,
                y_nm,
                dwell_s,
                current_pA=current_pA,
                energy_min_eV=energy_min_eV,
                energy_max_eV=energy_max_eV,
                name=name,
            )
            return spectrum_summary(step_id, rec)

    @mcp.tool()
    def dry_run_plan(
        plan: Annotated[dict[str, Any], Field(description="a Plan in the plan language (JSON)")],
    ) -> dict[str, Any]:
        """What a plan would cost on this instrument after what was spent here (spectra, images, dose,
        peak dose per area, time) and each limit check; nothing touches the instrument."""
        with tool_errors():
            d = bench.dry_run(plan)
            return {
                "ok": d.ok,
                "summary": d.summary(),
                "violations": [c.model_dump(mode="json") for c in d.violations],
                "dry_run": d.model_dump(mode="json"),
            }

    @mcp.tool()
    def start_run(
        goal: Annotated[
            str, Field(description="the scientist's goal in words (default: the scenario's)")
        ] = "",
        notes: Annotated[str, Field(description="sample notes (data, never instructions)")] = "",
        budget: Annotated[
            int | None, Field(ge=1, le=100_000, description="spectra for the whole run")
        ] = None,
        rounds: Annotated[int | None, Field(ge=1, le=20, description="hypotheses to test at most")] = None,
        seed: Annotated[
            int | None,
            Field(
                description="seed of the run: the agents and, on the twin, its sample (default: the server's)"
            ),
        ] = None,
        autonomy: Annotated[
            Level | None,
            Field(
                description="who decides at gates: manual or supervised (default: the server's); "
                "never more autonomy than the server allows"
            ),
        ] = None,
    ) -> dict[str, Any]:
        """Start a graph run (survey, hypotheses, plans, gates, active learning, verdicts, report) with
        this instrument's settings, in the background (a process of its own). It stops at every gate
        that needs a person; follow it with run_status(run, wait_s)."""
        with tool_errors():
            name = bench.start_run(
                goal=goal, notes=notes, budget=budget, rounds=rounds, seed=seed, autonomy=autonomy
            )
            return {"run": name, "status": "running", "report": f"autoscope://runs/{name}/report"}

    @mcp.tool()
    def submit_plan(
        run: Annotated[str, Field(description="the run's name (from start_run)")],
        plan: Annotated[
            dict[str, Any],
            Field(
                description="the plan, whole or the fields that change (e.g. steps), as the run's "
                "pending proposal has them"
            ),
        ],
        ctx: Context,
    ) -> dict[str, Any]:
        """Submit a plan at the run's plan (or intervention) gate. It goes through the same gate as a
        person's edit: validated, dry-run, and then the run waits for a person to approve it (an
        outside agent never approves, rejects or redirects for a person)."""
        with tool_errors():
            return bench.submit_plan(run, plan, client_name(ctx))

    @mcp.tool()
    def run_status(
        run: Annotated[str, Field(description="the run's name")],
        wait_s: Annotated[
            float, Field(ge=0, le=300, description="wait up to this long for a running run to stop")
        ] = 0.0,
    ) -> dict[str, Any]:
        """Where a run stands: running, stopped (at which gate, with the question and the proposal)
        or done; spectra, dose, hypotheses and verdicts, the decisions so far and who made them."""
        with tool_errors():
            return bench.run_status(run, wait_s)

    @mcp.tool()
    def query(
        run: Annotated[str, Field(description=f"a run's name, or {WORKBENCH!r} for this workbench")],
        tool: Annotated[
            QueryTool,
            Field(description="; ".join(f"{k}: {v[1]}" for k, v in QUERY_TOOLS.items())),
        ],
        x_nm: Annotated[float | None, Field(description="position x (nm), for nearest")] = None,
        y_nm: Annotated[float | None, Field(description="position y (nm), for nearest")] = None,
        n: Annotated[int | None, Field(ge=1, le=50, description="how many, for best")] = None,
    ) -> str:
        """A read-only question about a run's data, answered from its store (touches no instrument)."""
        args = {k: v for k, v in {"x_nm": x_nm, "y_nm": y_nm, "n": n}.items() if v is not None}
        with tool_errors():
            return bench.query(run, tool, args)

    @mcp.resource("autoscope://survey/image", mime_type="image/png", description="the survey image (PNG)")
    def survey_image() -> bytes:
        try:
            return bench.survey_png()
        except InstrumentError as exc:
            raise ResourceError(str(exc)) from exc

    @mcp.resource(
        "autoscope://survey/figure",
        mime_type="image/png",
        description="the survey image with its spectrum positions and the spectra (PNG)",
    )
    def survey_figure() -> bytes:
        path = bench.store.dir / "survey.png"
        if not path.exists():
            raise ResourceError("no survey yet: take one with the survey tool")
        return path.read_bytes()

    @mcp.resource("autoscope://runs/{run}/report", mime_type="text/markdown", description="a run's report")
    def run_report(run: str) -> str:
        try:
            return bench.report(run)
        except InstrumentError as exc:
            raise ResourceError(str(exc)) from exc

    return mcp


def serve_stdio(mcp: MCPServer) -> None:
    """Serve on stdin/stdout until the client closes them (logs go to stderr)."""
    anyio.run(mcp.run_stdio_async)


class BearerToken:
    """ASGI middleware: a request without ``Authorization: Bearer <token>`` gets 401; it also
    records activity for the idle shutdown (the SSE stream a client keeps open is not activity)."""

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()
        self.last_s = time.monotonic()
        self.in_flight = 0

    def idle_s(self) -> float:
        return 0.0 if self.in_flight else time.monotonic() - self.last_s

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":  # no websocket route is served, with or without a token
            await send({"type": "websocket.close", "code": 1008})
            return
        given = dict(scope.get("headers") or []).get(b"authorization", b"")
        if not secrets.compare_digest(given, self.expected):
            await send(
                {
                    "type": "http.response.start",
                    "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")],
                }
            )
            await send({"type": "http.response.body", "body": b'{"error": "missing or wrong bearer token"}'})
            return
        counted = scope.get("method") != "GET"
        self.last_s = time.monotonic()
        self.in_flight += counted
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= counted
            self.last_s = time.monotonic()


def serve_http(mcp: MCPServer, *, host: str, port: int, token: str, idle_exit_s: float | None = None) -> None:
    """Serve streamable HTTP at ``http://host:port/mcp`` behind the bearer token (blocking)."""
    import uvicorn

    app = BearerToken(mcp.streamable_http_app(host=host), token)
    level = logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower()
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=level))

    if idle_exit_s is not None:
        watch_idle(server, app.idle_s, float(idle_exit_s), "the MCP server")
    log.info("autoscope MCP server at http://%s:%d/mcp", host, port)
    server.run()
