"""``autoscope bench overhead``: the share of a campaign's wall time the agent itself costs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

#: how each part of the wall time is shown, with what it holds
LABELS = {
    "instrument": ("instrument", "calls into the microscope (acquisitions, moves, status…)"),
    "model": ("model", "surrogate fit/predict and the acquisition choice"),
    "llm": ("LLM", "language-model calls (none with --llm none)"),
    "store": ("run store", "RunStore methods, inside nodes and outside the graph"),
    "checkpoints": ("checkpoints", "the checkpointer: open, put, put_writes, get_tuple…"),
    "graph_machinery": ("graph machinery", "LangGraph between nodes: dispatch, state, channels"),
    "other_node_work": ("other node work", "planner, analysis, scalarising, figures, reports"),
    "other_outside": ("other outside graph", "opening the twin and store, summary, report.md"),
}


def overhead(
    spectra: Annotated[int, typer.Option(min=10, max=5000, help="Spectra for the whole run.")] = 300,
    rounds: Annotated[int, typer.Option(min=1, max=10, help="Hypotheses at most.")] = 3,
    scenario: Annotated[str, typer.Option(help="Twin scenario.")] = "plasmonic",
    seed: Annotated[int, typer.Option(min=0, help="Seed of the sample.")] = 0,
    real_time: Annotated[
        bool,
        typer.Option(
            "--real-time/--no-real-time", help="The twin's acquisitions last their time on the clock."
        ),
    ] = True,
    figures: Annotated[
        bool, typer.Option("--figures/--no-figures", help="Draw the run's PNG figures.")
    ] = False,
    keep: Annotated[Path | None, typer.Option(help="Keep the run directory here.")] = None,
    pipeline: Annotated[
        bool,
        typer.Option(
            "--pipeline/--no-pipeline",
            help="The model runs beside the instrument; steps stored in the background.",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Wall time of one deterministic run (--llm none, autonomous) split into instrument, model, store,
    checkpoints, LangGraph's machinery and other work; agent overhead = machinery + checkpoints + store."""
    from autoscope.agents.cli import _cli_errors
    from autoscope.evals.overhead import bench_overhead
    from autoscope.instruments.errors import ConfigError

    with _cli_errors():
        if scenario not in ("plasmonic", "tmd-defects", "oxide-interface"):
            raise ConfigError("scenario", f"{scenario!r}: choose plasmonic, tmd-defects or oxide-interface")
        r = bench_overhead(
            spectra,
            rounds,
            scenario=scenario,
            seed=seed,
            real_time=real_time,
            figures=figures,
            keep_dir=keep,
            pipeline=pipeline,
        )
    if as_json:
        typer.echo(json.dumps(r))
        return
    table = Table(
        "part",
        "seconds",
        "share of wall",
        "what",
        title=f"agent overhead: {r['scenario']} seed {r['seed']}, {r['measurements']} spectra, "
        f"{r['rounds']} rounds, real time {'on' if r['real_time'] else 'off'}, "
        f"figures {'on' if r['figures'] else 'off'}, pipeline {'on' if r['pipeline'] else 'off'}, "
        f"status {r['status']}",
    )
    for key, (label, what) in LABELS.items():
        mark = " *" if key in ("store", "checkpoints", "graph_machinery") else ""
        table.add_row(label + mark, f"{r['parts_s'][key]:.3f}", f"{r['share_pct'][key]:.2f} %", what)
    table.add_row("wall", f"{r['wall_s']:.3f}", "100 %", "the run, start to summary")
    verdict = "meets" if r["meets_target"] else "ABOVE"
    table.add_row(
        "agent overhead (*)",
        f"{r['agent_overhead_s']:.3f}",
        f"{r['agent_overhead_pct']:.2f} %",
        f"target ≤ {r['target_pct']:g} %: {verdict}",
    )
    Console().print(table)
