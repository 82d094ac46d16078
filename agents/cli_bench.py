"""``autoscope bench discovery``, ``science``, ``score`` and ``growth``: methods and verdicts against
ground truth, and what the models cost as a campaign grows."""

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
        for source in ("replay", "remote"):  # twin settings (drift, faults) leave the sample's truth as it is
            if record.get(source):
                raise InvalidRequest(
                    "run",
                    f"{run_dir} ran on {source} {record[source]}: only a run on a built-in twin scenario has an "
                    "oracle to score against",
                )
        spec = record["spec"]
        result = score_run(run_dir, spec["scenario"], int(spec["seed"]), sample=spec.get("sample") or None)
        if spec.get("question"):
            result["question"] = _question_score(run_dir, spec)
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
        if result.get("question"):
            q = result["question"]
            parts = ", ".join(f"{k} {v}" for k, v in q["parts"].items())
            typer.echo(
                f"goal's question ({spec['question']['kind']}): {q['success']} ({parts}); truth {q['truth']}"
            )
        if result["goal"]:
            for shape, d in result["goal"]["shapes"].items():
                typer.echo(
                    f"goal: {shape}s host the band: said {d['said']}, truth {'yes' if d['truth'] else 'no'}"
                )


def _question_score(run_dir: Path, spec: dict) -> dict:
    """The run's answer to its goal's typed question scored against the oracle's."""
    from pydantic import TypeAdapter

    from autoscope.agents.question import Question
    from autoscope.evals.scoring import question_score
    from autoscope.tools.store import RunStore

    summary = json.loads((run_dir / "summary.json").read_text())
    truth, scored = question_score(
        RunStore.open(run_dir, read_only=True),
        (summary.get("answer") or {}).get("question"),
        TypeAdapter(Question).validate_python(spec["question"]),
        spec["scenario"],
        int(spec["seed"]),
        spec.get("sample") or None,
    )
    return {**scored, "truth": truth["parts"]}


def discovery(
    scenario: Annotated[str | None, typer.Option(help="Simulated scenario.")] = None,
    seeds: Annotated[int, typer.Option(min=1, help="Seeds per method (medians are reported).")] = 5,
    budget: Annotated[int, typer.Option(min=1, help="Spectra per campaign.")] = 150,
    methods: Annotated[str, typer.Option(help="Comma-separated methods.")] = "dkl,gp,random,raster",
    campaign_file: Annotated[Path | None, typer.Option("--campaign", help="Campaign file.")] = None,
    replay: Annotated[
        Path | None, typer.Option(help="Benchmark on a recorded spectrum image (or a replay file).")
    ] = None,
    limits: Annotated[Path | None, typer.Option(help="Safety limits file (default: settings).")] = None,
    top_fraction: Annotated[
        float, typer.Option(help="Share of candidates whose true signal defines the targets.")
    ] = 0.05,
    keep: Annotated[
        Path | None, typer.Option(help="Write each seed's result (and its run store) here as it finishes.")
    ] = None,
    figure: Annotated[
        Path | None, typer.Option(help="Write the recall-against-dose curves (PNG) here.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Measurements to 50 % / 90 % recall of the target regions (raw and robust), per method (see README)."""
    from autoscope.agents.cli import EXIT_STOPPED, _cli_errors, _limits, _progress, err, log
    from autoscope.evals.discovery import bench_discovery
    from autoscope.tools.campaign import METHODS

    with _cli_errors():
        chosen = [m.strip() for m in methods.split(",") if m.strip()]
        unknown = sorted(set(chosen) - set(METHODS))
        if unknown:
            raise ConfigError("methods", f"unknown {', '.join(unknown)}; choose from {', '.join(METHODS)}")
        name = scenario or (None if replay else "plasmonic")
        safety = _limits(limits)
        with _progress("bench", seeds * budget * len(chosen)) as advance:
            result = bench_discovery(
                name,
                seeds,
                budget,
                methods=chosen,
                campaign=campaign_file,
                replay=replay,
                limits=safety,
                top_fraction=top_fraction,
                keep_dir=keep,
                progress=advance,
            )
        if figure is not None and result["methods"]:
            from autoscope.tools.figures import discovery_figure

            log.info("recall against dose: %s", discovery_figure(result, figure))
        if as_json:
            typer.echo(json.dumps(result))
        else:
            _discovery_table(result, seeds, budget, top_fraction)
    stops = [e for e in result["errors"] if e["safety_stop"]]
    if stops:  # like survey: a campaign stopped by the limits exits 3 (the others' results above)
        err.print(f"[yellow]{len(stops)} campaign(s) stopped at a safety limit[/yellow]", highlight=False)
        raise typer.Exit(EXIT_STOPPED)


def growth(
    observations: Annotated[
        str, typer.Option(help="Comma-separated observation counts (at --at-candidates).")
    ] = "100,200,500,1000,2000,5000",
    candidates: Annotated[
        str, typer.Option(help="Comma-separated candidate counts (at --at-observations).")
    ] = "4096,16384,65536,262144",
    at_candidates: Annotated[int, typer.Option(min=1, help="Candidates along the observation sweep.")] = 4096,
    at_observations: Annotated[
        int, typer.Option(min=2, help="Observations along the candidate sweep.")
    ] = 200,
    models: Annotated[str, typer.Option(help="Comma-separated models.")] = "gp,gp_sparse,dkl,dkl_sparse",
    dim: Annotated[int, typer.Option(min=1, help="Descriptor dimensions.")] = 64,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    steps: Annotated[int, typer.Option(min=1, help="Steps timed per point (median).")] = 3,
    max_step_s: Annotated[
        float, typer.Option(min=0, help="Extrapolate a point whose step would take longer (s).")
    ] = 20.0,
    threads: Annotated[
        int | None, typer.Option(min=1, help="torch threads for the run (default: torch's setting).")
    ] = None,
    figure: Annotated[Path | None, typer.Option(help="Write the two log-log panels (PNG) here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Step time and peak memory of the exact GP and DKL against their sparse versions, as the
    observations and the candidates grow (see evals/growth.py)."""
    from autoscope.agents.cli import _cli_errors, _progress, log
    from autoscope.evals.growth import MODELS, bench_growth, format_growth, growth_figure

    with _cli_errors():
        if device not in ("cpu", "cuda"):
            raise ConfigError("device", f"{device!r}: choose cpu or cuda")
        sizes = {}
        for option, text, low in (("observations", observations, 2), ("candidates", candidates, 1)):
            try:
                sizes[option] = [int(v) for v in text.split(",") if v.strip()]
            except ValueError:
                raise ConfigError(option, f"{text!r}: give comma-separated whole numbers") from None
            if not sizes[option] or min(sizes[option]) < low:
                raise ConfigError(option, f"{text!r}: give sizes of at least {low}")
        chosen = [m.strip() for m in models.split(",") if m.strip()]
        unknown = sorted(set(chosen) - set(MODELS))
        if unknown or not chosen:
            raise ConfigError(
                "models", f"unknown {', '.join(unknown) or 'none'}; choose from {', '.join(MODELS)}"
            )
        total = len(chosen) * (len(sizes["observations"]) + len(sizes["candidates"]))
        with _progress("growth", total) as advance:
            result = bench_growth(
                sizes["observations"],
                sizes["candidates"],
                fixed_candidates=at_candidates,
                fixed_observations=at_observations,
                models=chosen,
                dim=dim,
                device=device,
                steps=steps,
                max_step_s=max_step_s,
                threads=threads,
                progress=advance,
            )
        if figure is not None:
            log.info("step cost growth: %s", growth_figure(result, figure))
        typer.echo(json.dumps(result) if as_json else format_growth(result))


def _discovery_table(result: dict, seeds: int, budget: int, top_fraction: float) -> None:
    """The discovery result as a table: one row per method and region definition."""
    from autoscope.agents.cli import err
    from autoscope.evals.discovery import DEFINITIONS

    table = Table(
        "method",
        "regions",
        "to 50 %",
        "to 90 %",
        "recall at budget",
        "dose (e/Å²)",
        "step (ms)",
        "failed",
        title=f"discovery on {result['scenario']}: {seeds} seeds, budget {budget}, "
        f"{result.get('candidates', 0)} candidates, top {top_fraction:.0%}",
    )
    for m, r in result["methods"].items():
        for d in DEFINITIONS:
            table.add_row(
                f"{m} ({d})",
                f"{r[d]['regions']:g}",
                str(r[d]["to_recall_50"]),
                str(r[d]["to_recall_90"]),
                "—" if r[d]["recall_at_budget"] is None else f"{r[d]['recall_at_budget']:.2f}",
                f"{r['dose_e_per_A2']:.3g}",
                f"{r['step_latency_ms']:.1f}",
                str(r["failed_measurements"]),
            )
    Console().print(table)
    for e in result["errors"]:
        err.print(f"[red]{e['method']} seed {e['seed']} failed:[/red] {e['error']}", highlight=False)


def reliability(
    quick: Annotated[bool, typer.Option("--quick", help="Reduced sizes (a few minutes).")] = False,
    local_cases: Annotated[
        int | None,
        typer.Option(
            min=0, help="Injection cases also run with the embedded local model (default 3; 0 quick)."
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the generated cases and kill moments.")] = 0,
    keep: Annotated[Path | None, typer.Option(help="Keep the run directories here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (every case included).")] = False,
) -> None:
    """Fuzzing, SIGKILLs, faults with server restarts and prompt injection, with the figures.

    Exit 1 when a claim does not hold (a request beyond a limit reached the twin, a crash,
    a duplicated or lost acquisition, an unsafe plan approved by the policy...)."""
    from autoscope.agents.cli import _cli_errors
    from autoscope.evals.reliability import run, table

    with _cli_errors():
        report = run(keep, quick=quick, seed=seed, local_cases=local_cases)
    if as_json:
        typer.echo(json.dumps(report, default=str))
    else:
        typer.echo(table(report))
        for claim, ok in report["holds"].items():
            typer.echo(f"{'holds' if ok else 'FAILS'}: {claim}")
    if not all(report["holds"].values()):
        raise typer.Exit(1)


def throughput(
    campaigns: Annotated[int, typer.Option(min=1, max=10_000, help="Whole deterministic campaigns.")] = 100,
    spectra: Annotated[int, typer.Option(min=10, max=5000, help="Spectra per campaign.")] = 300,
    workers: Annotated[int, typer.Option(min=1, max=64, help="LocalCluster worker processes.")] = 2,
    keep: Annotated[Path | None, typer.Option(help="Keep the run directories here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Campaigns (deterministic planner) one after the other here and on a Dask LocalCluster: the speed-up."""
    from autoscope.agents.cli import _cli_errors, _progress
    from autoscope.evals.throughput import bench_throughput

    with _cli_errors():
        with _progress("campaigns", 2 * campaigns) as advance:
            r = bench_throughput(campaigns, spectra, workers, keep_dir=keep, progress=advance)
        if as_json:
            typer.echo(json.dumps(r))
            return
        typer.echo(
            f"{r['campaigns']} campaigns × {r['spectra_each']} spectra ({r['spectra_total']} in all): in process "
            f"{r['in_process_s']:.0f} s, LocalCluster of {r['workers']} workers {r['cluster_s']:.0f} s "
            f"(speed-up {r['speedup']}×); median campaign {r['campaign_s_median']:.1f} s; "
            f"identical results: {r['identical']}; errors {r['errors']}"
        )


def deadtime(
    scenario: Annotated[str, typer.Option(help="Simulated scenario.")] = "plasmonic",
    dwells: Annotated[str, typer.Option(help="Comma-separated spectrum dwells (s).")] = "0.01,0.02,0.1",
    budget: Annotated[int, typer.Option(min=10, help="Spectra per campaign.")] = 300,
    seeds: Annotated[int, typer.Option(min=1, help="Seeds for the paired recall comparison.")] = 5,
    recall_dwell: Annotated[float, typer.Option(min=1e-4, help="Dwell (s) of the recall comparison.")] = 0.02,
    method: Annotated[str, typer.Option(help="dkl or gp.")] = "dkl",
    campaign_file: Annotated[Path | None, typer.Option("--campaign", help="Campaign file.")] = None,
    keep: Annotated[Path | None, typer.Option(help="Keep the run stores here.")] = None,
    figure: Annotated[Path | None, typer.Option(help="Write the dead-time bar chart (PNG) here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Dead time of the column with and without pipelined decisions, on the real-time twin, and the
    pipelined campaign's recall against the sequential one's (paired by seed)."""
    from autoscope.agents.cli import _cli_errors, _progress, log
    from autoscope.evals.deadtime import bench_deadtime, deadtime_figure, format_deadtime

    with _cli_errors():
        if method not in ("dkl", "gp"):
            raise ConfigError("method", f"{method!r}: dead time needs a model; choose dkl or gp")
        try:
            chosen = [float(d) for d in dwells.split(",") if d.strip()]
        except ValueError as exc:
            raise ConfigError("dwells", f"{dwells!r} is not a comma-separated list of seconds") from exc
        if not chosen or min(chosen) <= 0:
            raise ConfigError("dwells", f"{dwells!r}: give positive dwells in seconds")
        runs = 2 * len(chosen) + 2 * max(0, seeds - (1 if recall_dwell in chosen else 0))
        with _progress("deadtime", runs * budget) as advance:
            result = bench_deadtime(
                scenario,
                dwells=chosen,
                budget=budget,
                seeds=seeds,
                recall_dwell=recall_dwell,
                method=method,
                campaign=campaign_file,
                keep_dir=keep,
                progress=advance,
            )
        if figure is not None:
            log.info("dead time: %s", deadtime_figure(result, figure))
        typer.echo(json.dumps(result) if as_json else format_deadtime(result))
