"""``autoscope bench science``: verdicts of whole runs against the twin's ground truth."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from autoscope.instruments.errors import ConfigError


def science(
    scenarios: Annotated[
        str, typer.Option(help="Comma-separated scenarios.")
    ] = "plasmonic,tmd-defects,oxide-interface",
    seeds: Annotated[int, typer.Option(min=0, help="Deterministic runs (--llm none) per scenario.")] = 5,
    hand_seeds: Annotated[
        int, typer.Option(min=0, help="Runs with the hand-written hypotheses per scenario.")
    ] = 2,
    rounds: Annotated[int, typer.Option(min=1, max=20, help="Hypotheses per deterministic run.")] = 3,
    budget_per_round: Annotated[int, typer.Option(min=10, help="Spectra per hypothesis.")] = 60,
    allocation: Annotated[str, typer.Option(help="Audit allocation: equal or discriminating.")] = "equal",
    keep: Annotated[Path | None, typer.Option(help="Keep the run directories (report.md) here.")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON (every scored verdict included).")
    ] = False,
) -> None:
    """Verdicts of whole runs scored against the twin's ground truth (agreement, false supported, inconclusive)."""
    from autoscope.agents.cli import _cli_errors, _pct_cell, _progress
    from autoscope.evals.science import bench_science, check_scenarios

    with _cli_errors():
        names = [s.strip() for s in scenarios.split(",") if s.strip()]
        check_scenarios(names)
        if allocation not in ("equal", "discriminating"):
            raise ConfigError("allocation", f"{allocation!r}: choose equal or discriminating")
        with _progress("bench", len(names) * (seeds + hand_seeds)) as advance:
            result = bench_science(
                names,
                seeds,
                rounds=rounds,
                budget_per_round=budget_per_round,
                hand_seeds=hand_seeds,
                allocation=allocation,
                keep_dir=keep,
                progress=advance,
            )
        if as_json:
            typer.echo(json.dumps(result, default=str))
            return
        table = Table(
            "runs",
            "verdicts",
            "decided",
            "agree",
            "false supported",
            "inconclusive",
            title="Verdicts against the twin's ground truth",
        )
        rows = [
            ("all", result["all"]),
            ("deterministic", result["deterministic"]),
            ("hand-written", result["hand_written"]),
        ]
        rows += list(result["by_scenario"].items())
        for name, r in rows:
            table.add_row(
                name,
                str(r["verdicts"]),
                str(r["decided"]),
                _pct_cell(r["agree_pct"]),
                _pct_cell(r["false_supported_pct"]),
                _pct_cell(r["inconclusive_pct"]),
            )
        Console().print(table)
        for g in result["goal"]:
            said = ", ".join(
                f"{s}: {d['said']} (truth {'yes' if d['truth'] else 'no'})" for s, d in g["shapes"].items()
            )
            typer.echo(f"plasmonic seed {g['seed']} ({g['kind']}): which shapes host the band: {said}")


def score(
    run_dir: Annotated[Path, typer.Argument(help="A finished run directory (autoscope run --out).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """One finished twin run's verdicts (and the plasmonic goal's answer) scored against the ground truth."""
    from autoscope.agents.cli import _cli_errors
    from autoscope.agents.runner import load_run_file
    from autoscope.evals.science import score_run
    from autoscope.instruments.errors import InvalidRequest

    with _cli_errors():
        record = load_run_file(run_dir)
        if not (run_dir / "summary.json").is_file():
            raise ConfigError(
                "run", f"{run_dir} is not a finished run (no summary.json): score it when it is done"
            )
        for source in ("replay", "remote", "sim_config"):
            if record.get(source):
                raise InvalidRequest(
                    "run",
                    f"{run_dir} ran on {source} {record[source]}: only a run on a built-in twin scenario has an "
                    "oracle to score against",
                )
        spec = record["spec"]
        result = score_run(run_dir, spec["scenario"], int(spec["seed"]))
        if as_json:
            typer.echo(json.dumps(result, default=str))
            return
        table = Table(
            "hypothesis", "author", "verdict", "truth", "agrees", title=f"{run_dir.name} against the truth"
        )
        for r in result["rows"]:
            agree = "—" if r["agree"] is None else ("yes" if r["agree"] else "NO")
            table.add_row(
                r["id"], r["author"], r["outcome"], "holds" if r["holds"] else "does not hold", agree
            )
        Console().print(table)
        if result["goal"]:
            for shape, d in result["goal"]["shapes"].items():
                typer.echo(
                    f"goal: {shape}s host the band: said {d['said']}, truth {'yes' if d['truth'] else 'no'}"
                )
