"""``autoscope mcp``: serve the instrument and the runs to an outside agent over MCP.

Exit codes: 0 the client went away (stdio) or the server stopped (HTTP), 2 bad input (the
message names the field).
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from autoscope.agents.cli_run import AUTONOMY, LLMS, BackendOpt, NionConfigOpt, _choice
from autoscope.agents.settings import load_settings
from autoscope.instruments.errors import ConfigError, InvalidRequest

log = logging.getLogger(__name__)
err = Console(stderr=True)


def mcp(
    transport: Annotated[str, typer.Option(help="stdio (the client starts this command) or http.")] = "stdio",
    host: Annotated[str | None, typer.Option(help="HTTP bind address (default: settings, loopback).")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port (default: settings).")] = None,
    token: Annotated[
        str | None,
        typer.Option(help="Bearer token every HTTP request must carry (default: settings, else a new one)."),
    ] = None,
    scenario: Annotated[str | None, typer.Option(help="Simulated scenario.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the simulated sample, noise and runs.")] = 0,
    remote: Annotated[
        str | None, typer.Option(help="URL of a served instrument instead of the twin.")
    ] = None,
    token_remote: Annotated[
        str | None, typer.Option("--token-remote", help="Bearer token of the remote instrument.")
    ] = None,
    replay: Annotated[Path | None, typer.Option(help="Recorded spectrum image (.h5/.npz) to replay.")] = None,
    limits: Annotated[Path | None, typer.Option(help="Safety limits file (default: settings).")] = None,
    sim_config: Annotated[Path | None, typer.Option(help="Twin settings file: drift, noise, faults.")] = None,
    backend: BackendOpt = None,
    nion_config: NionConfigOpt = None,
    out: Annotated[
        Path | None, typer.Option(help="Workbench run directory (default: RUNS_DIR/mcp-<time>; resumed).")
    ] = None,
    runs_dir: Annotated[
        Path | None, typer.Option(help="Where the runs an agent starts go (default: settings).")
    ] = None,
    autonomy: Annotated[
        str,
        typer.Option(help="The most autonomy an agent's run may have: manual or supervised (or autonomous)."),
    ] = "supervised",
    llm: Annotated[str | None, typer.Option(help="LLM of the runs: local, openai or none.")] = None,
    campaign_file: Annotated[
        Path | None, typer.Option("--campaign", help="Run file the runs start from (its template).")
    ] = None,
    idle_exit_s: Annotated[
        float | None, typer.Option(help="HTTP: stop after this long without a request.")
    ] = None,
) -> None:
    """Serve the instrument (behind its safety limits) and the agent runs to an outside agent over MCP."""
    from autoscope.agents.cli import _cli_errors, _limits, _mirror, _open_for_run
    from autoscope.agents.mcp_server import build_server, serve_http, serve_stdio
    from autoscope.agents.mcp_workbench import Instrument, Workbench
    from autoscope.instruments.factory import describe_scenarios
    from autoscope.instruments.remote.state import is_loopback
    from autoscope.tools.store import RunStore

    settings = load_settings()
    with _cli_errors():
        _choice(transport, ("stdio", "http"), "transport")
        _choice(autonomy, AUTONOMY, "autonomy")
        _choice(llm, LLMS, "llm")
        names = [n for n, _ in describe_scenarios()]
        if scenario is not None and scenario not in names:
            raise InvalidRequest("scenario", f"unknown scenario {scenario!r}; choose from {', '.join(names)}")
        bind, at = host or settings.host, port or settings.port
        tok = token or settings.token
        if transport == "http" and not tok:
            tok = secrets.token_urlsafe(24)
            err.print(f"token: {tok}")
        if transport == "http" and not is_loopback(bind) and not (token or settings.token):
            raise ConfigError(
                "token", f"{bind} is not a loopback address: choose a token (--token or AUTOSCOPE_TOKEN)"
            )
        runs = Path(runs_dir or settings.runs_dir)
        bench_dir = Path(out or runs / f"mcp-{time.strftime('%Y%m%d-%H%M%S')}")
        instrument = Instrument(
            scenario=scenario,
            seed=seed,
            limits=limits,
            sim_config=sim_config,
            replay=replay,
            remote=remote,
            token=token_remote,
            backend=backend,
            nion_config=nion_config,
        )
        safety = _limits(limits)
        store = RunStore.open_or_create(
            bench_dir, meta={"command": "mcp", "scenario": scenario, "seed": seed}
        )
        _mirror(store)
        with store, contextlib.ExitStack() as opened:
            scope = _open_for_run(
                store,
                safety,
                instrument.twin_scenario,
                seed,
                sim_config,
                replay,
                remote,
                token_remote,
                backend,
                nion_config,
            )
            opened.callback(scope.close)
            runs.mkdir(parents=True, exist_ok=True)
            bench = Workbench(
                store=store,
                scope=scope,
                instrument=instrument,
                runs_dir=runs.resolve(),
                autonomy=autonomy,  # type: ignore[arg-type]
                llm=llm,
                campaign=campaign_file,
            )
            opened.callback(bench.close)
            server = build_server(bench)
            log.info("workbench run %s; runs go to %s", bench_dir, runs)
            if transport == "stdio":
                serve_stdio(server)
            else:
                serve_http(server, host=bind, port=at, token=tok, idle_exit_s=idle_exit_s)
