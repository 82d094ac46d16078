"""``autoscope eval``: the agent benchmark on the simulated microscope, scored against the oracle."""

from __future__ import annotations

import datetime
import json
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from autoscope.instruments.errors import ConfigError


def eval_cmd(
    suite: Annotated[str, typer.Option(help="A shipped suite (standard, smoke) or a suite file.")] = "smoke",
    backends: Annotated[
        str,
        typer.Option(
            help="Comma-separated rows: none (deterministic planner), random, raster, local, "
            "local:smollm2, local:qwen2.5-coder-1.5b, openai."
        ),
    ] = "none",
    split: Annotated[str, typer.Option(help="dev, test or all (tune on dev; report test).")] = "test",
    out: Annotated[Path | None, typer.Option(help="Evaluation directory (resumed when it exists).")] = None,
    scheduler: Annotated[
        str | None, typer.Option(help="Address of an existing Dask scheduler (tcp://host:8786).")
    ] = None,
    workers: Annotated[int, typer.Option(min=1, max=64, help="LocalCluster worker processes.")] = 2,
    in_process: Annotated[bool, typer.Option("--in-process", help="Run the tasks here, one by one.")] = False,
    openai_url: Annotated[
        str | None, typer.Option(help="Base URL of the OpenAI-compatible endpoint of the openai row.")
    ] = None,
    openai_model: Annotated[str | None, typer.Option(help="Model name at that endpoint.")] = None,
    figures: Annotated[bool, typer.Option("--figures", help="Draw every run's own figures too.")] = False,
    rescore: Annotated[
        bool,
        typer.Option(
            "--rescore", help="Score the stored runs again (after a scorer change); re-runs nothing."
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the aggregate as JSON.")] = False,
) -> None:
    """Every task of a suite under every backend (paired: same tasks, same seeds), scored against the
    twin's ground truth; writes report.md, results.json and figures into OUT. Killed, it resumes."""
    from autoscope.agents.cli import _cli_errors, _progress
    from autoscope.evals.eval_report import leaderboard, write_report
    from autoscope.evals.harness import parse_backends, run_eval
    from autoscope.evals.tasks import load_suite, tasks

    with _cli_errors():
        if split not in ("dev", "test", "all"):
            raise ConfigError("split", f"{split!r}: choose dev, test or all")
        names = parse_backends(backends)
        s = load_suite(suite)
        update = {k: v for k, v in (("openai_base_url", openai_url), ("openai_model", openai_model)) if v}
        if "openai" in names:
            from autoscope.agents.settings import load_settings

            if not (openai_url or load_settings().openai_base_url):
                raise ConfigError(
                    "openai-url", "the openai row needs --openai-url or AUTOSCOPE_OPENAI_BASE_URL"
                )
        out = out or Path(f"eval-{s.name}-{split}")
        n = len(tasks(s, split)) * len(names)
        with _progress("eval", n) as advance:
            results = run_eval(
                s,
                names,
                out,
                split=split,
                scheduler=scheduler,
                workers=workers,
                in_process=in_process,
                settings_update=update,
                figures=figures,
                rescore=rescore,
                progress=advance,
            )
        meta = {
            "suite": s.name,
            "split": split,
            "backends": names,
            "date": datetime.date.today().isoformat(),
            "command": "`autoscope " + " ".join(shlex.quote(a) for a in sys.argv[1:]) + "`",
        }
        agg = write_report(out, meta, results)
        if as_json:
            typer.echo(json.dumps(agg, default=str))
            return
        typer.echo(leaderboard(agg))
        typer.echo(f"report: {out / 'report.md'}")
