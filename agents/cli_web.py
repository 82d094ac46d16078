"""``autoscope web``: serve the web workspace (``agents/web``) with uvicorn.

Loopback by default. People are named by their tokens (``--tokens`` or ``AUTOSCOPE_WEB_TOKENS``);
with none configured, one token is made for the user running the server and the URL that
carries it is printed to stderr. Binding another address needs configured tokens (exit 2).
On start, runs this server drove that were killed with it resume from their checkpoints.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from autoscope.agents.cli_run import err
from autoscope.agents.settings import load_settings
from autoscope.instruments.errors import ConfigError, InvalidRequest
from autoscope.instruments.remote.idle import watch_idle

log = logging.getLogger(__name__)


def web(
    host: Annotated[
        str, typer.Option(help="Address to bind (loopback unless you configure tokens).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port.")] = 8770,
    runs_dir: Annotated[
        Path | None, typer.Option(help="Runs folder (default: AUTOSCOPE_RUNS_DIR, runs/).")
    ] = None,
    tokens: Annotated[
        str | None,
        typer.Option(
            help="People: a YAML/JSON file of {token: name}, or token=name,… (AUTOSCOPE_WEB_TOKENS)."
        ),
    ] = None,
    idle_exit_s: Annotated[
        float | None, typer.Option(help="Stop after this long without a request or a running run.")
    ] = None,
) -> None:
    """The web workspace: runs, live run pages, gates as cards, questions, reports."""
    import uvicorn

    from autoscope.agents.cli import _cli_errors
    from autoscope.agents.web.app import create_app
    from autoscope.agents.web.auth import default_token_file, generated_tokens, parse_tokens
    from autoscope.instruments.remote.state import is_loopback

    with _cli_errors():
        settings = load_settings()
        people = parse_tokens(tokens if tokens is not None else settings.web_tokens)
        if not people:
            if not is_loopback(host):
                raise ConfigError(
                    "tokens",
                    f"{host} is not a loopback address: configure the people's tokens (--tokens or "
                    "AUTOSCOPE_WEB_TOKENS) before the workspace is reachable from other machines",
                )
            people = generated_tokens(default_token_file())
        folder = Path(runs_dir or settings.runs_dir)
        if folder.exists() and not folder.is_dir():
            raise InvalidRequest("runs_dir", f"{folder} is not a directory")
        app = create_app(folder, people)
    shown = "localhost" if is_loopback(host) else host
    if tokens is None and not settings.web_tokens:
        token, name = next(iter(people.items()))
        err.print(
            f"autoscope web for {name}: http://{shown}:{port}/?token={token}", highlight=False, soft_wrap=True
        )
    else:
        err.print(
            f"autoscope web for {len(people)} people: http://{shown}:{port}/ (open it with ?token=…)",
            soft_wrap=True,
        )
    server = uvicorn.Server(
        uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=2)
    )
    resumed = app.state.manager.resume_killed()
    if resumed:
        err.print(f"resuming {len(resumed)} run(s) killed with the server: {', '.join(resumed)}")
    if idle_exit_s is not None:  # a run still going keeps the workspace up
        manager = app.state.manager
        watch_idle(
            server,
            app.state.activity.idle_s,
            float(idle_exit_s),
            "the web workspace",
            busy=lambda: any(manager.is_running(n) for n in list(manager._threads)),
        )
    server.run()
    app.state.manager.join(10.0)
