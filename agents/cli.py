"""The ``autoscope`` command line.

Exit codes: 0 done, 2 bad input (the message names the field), 3 stopped for a person
(a safety limit, or a gate that needs one), 1 any other instrument failure.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from autoscope.agents import cli_bench, cli_eval, cli_overhead, cli_run
from autoscope.agents.cli_run import BackendOpt, NionConfigOpt
from autoscope.agents.llm.base import LLMUnavailable
from autoscope.agents.settings import load_settings
from autoscope.instruments.config_files import read_mapping
from autoscope.instruments.errors import (
    ConfigError,
    InstrumentError,
    InvalidRequest,
    SafetyLimitExceeded,
    validation_field,
)
from autoscope.instruments.safety import DOSE_EVENTS, SafetyLimits

log = logging.getLogger("autoscope")
app = typer.Typer(help="Automated STEM experiments.", no_args_is_help=True, pretty_exceptions_enable=False)
instrument_app = typer.Typer(help="Serve or inspect an instrument.", no_args_is_help=True)
bench_app = typer.Typer(
    help="Benchmarks: discovery yield, model latency, LLM proposals, verdicts against ground truth.",
    no_args_is_help=True,
)
app.add_typer(instrument_app, name="instrument")
app.add_typer(bench_app, name="bench")
from autoscope.agents.cli_theory import theory_app  # noqa: E402 - beside the other command groups

app.add_typer(theory_app, name="theory")
from autoscope.agents.cli_data import data_app  # noqa: E402 - beside the other command groups

app.add_typer(data_app, name="data")
# ---- runs: run directories and their copies in object storage
from autoscope.agents import cli_mirror  # noqa: E402 - beside the other command groups

runs_app = typer.Typer(
    help="Run directories: restore one from object storage, export one as Bluesky documents.",
    no_args_is_help=True,
)
app.add_typer(runs_app, name="runs")
runs_app.command("pull")(cli_mirror.pull)
from autoscope.agents import cli_runs_export  # noqa: E402 - beside the other command groups

runs_app.command("export")(cli_runs_export.export)
err = Console(stderr=True)

EXIT_BAD_INPUT = 2
EXIT_STOPPED = 3


@app.callback()
def _setup(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    level = logging.DEBUG if verbose else getattr(logging, load_settings().log_level.upper(), logging.INFO)
    logging.basicConfig(
        level=level, format="%(message)s", handlers=[RichHandler(console=err, show_path=False)], force=True
    )


@contextlib.contextmanager
def _cli_errors() -> Iterator[None]:
    """Map typed errors to a one-line message and the documented exit code."""
    try:
        yield
    except (InvalidRequest, ConfigError, LLMUnavailable) as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except ValidationError as exc:
        field, msg = validation_field(exc)
        err.print(f"[red]error:[/red] {field}: {msg}", highlight=False)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except SafetyLimitExceeded as exc:
        err.print(f"[yellow]stopped at a safety limit:[/yellow] {exc}", highlight=False)
        raise typer.Exit(EXIT_STOPPED) from None
    except InstrumentError as exc:
        err.print(f"[red]instrument error:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None


def _limits(path: Path | None) -> SafetyLimits:
    return SafetyLimits.from_file(path or load_settings().limits_file)


def _open_for_run(
    store, limits, scenario, seed, sim_config, replay, remote, token, backend=None, nion_config=None
):
    """The backend behind the safety limits, its safety events and earlier acquisitions tied to ``store``
    (close it: a Nion simulator's threads must be stopped before exit)."""
    from autoscope.instruments.factory import open_microscope

    settings = load_settings()
    return open_microscope(
        limits,
        on_event=lambda e: store.append_event(**e),
        history=store.events(DOSE_EVENTS),
        scenario=scenario,
        seed=seed,
        sim_config=sim_config,
        replay=replay,
        remote=remote,
        token=token or settings.token,
        timeout_s=settings.remote_timeout_s,
        retries=settings.remote_retries,
        backend=backend,
        nion_config=nion_config,
    )


def _mirror(store) -> None:
    """Copy the run to AUTOSCOPE_STORE_URL while it is written (when that is set)."""
    from autoscope.agents.runner import attach_mirror

    attach_mirror(store, load_settings())


@app.command()
def scenarios() -> None:
    """List the simulated-microscope scenarios: name, then a one-line description."""
    from autoscope.instruments.factory import describe_scenarios

    rows = describe_scenarios()
    if sys.stdout.isatty():
        table = Table("scenario", "description")
        for name, desc in rows:
            table.add_row(name, desc)
        Console().print(table)
    else:
        for name, desc in rows:
            sys.stdout.write(f"{name}\t{desc}\n")


@app.command()
def survey(
    out: Annotated[Path, typer.Option(help="Run directory (created, or resumed when it holds a survey).")],
    scenario: Annotated[
        str | None, typer.Option(help="Simulated scenario (see `autoscope scenarios`).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the simulated sample and noise.")] = None,
    remote: Annotated[
        str | None, typer.Option(help="URL of a served instrument instead of the twin.")
    ] = None,
    token: Annotated[str | None, typer.Option(help="Bearer token of the remote instrument.")] = None,
    replay: Annotated[Path | None, typer.Option(help="Recorded spectrum image (.h5/.npz) to replay.")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML file of survey fields (see README).")] = None,
    limits: Annotated[Path | None, typer.Option(help="Safety limits file (default: settings).")] = None,
    sim_config: Annotated[Path | None, typer.Option(help="Twin settings file: drift, noise, faults.")] = None,
    fov_nm: Annotated[float | None, typer.Option(help="Field of view (nm).")] = None,
    pixels: Annotated[int | None, typer.Option(help="Pixels per side.")] = None,
    dwell_us: Annotated[float | None, typer.Option(help="Pixel dwell (µs).")] = None,
    current_pa: Annotated[float | None, typer.Option("--current-pA", help="Beam current (pA).")] = None,
    spectra: Annotated[int | None, typer.Option(help="Number of spectra.")] = None,
    spectrum_dwell_s: Annotated[float | None, typer.Option(help="Spectrum exposure (s).")] = None,
    backend: BackendOpt = None,
    nion_config: NionConfigOpt = None,
) -> None:
    """Acquire an overview image and a few spectra; write HDF5, the event log and a PNG."""
    from autoscope.instruments.factory import DEFAULT_SCENARIO, survey_defaults
    from autoscope.tools.figures import survey_figure
    from autoscope.tools.store import RunStore
    from autoscope.tools.survey import SurveyPlan, run_survey

    with _cli_errors():
        fields = read_mapping(config, "survey") if config else {}
        scenario = scenario or fields.pop("scenario", None)
        seed = seed if seed is not None else int(fields.pop("seed", 0))
        fields.pop("scenario", None)
        fields.pop("seed", None)
        safety = _limits(limits)
        flags = {
            "fov_nm": fov_nm,
            "pixels": pixels,
            "current_pA": current_pa,
            "spectra": spectra,
            "spectrum_dwell_s": spectrum_dwell_s,
            "dwell_s": None if dwell_us is None else dwell_us * 1e-6,
        }
        store = RunStore.open_or_create(out, meta={"command": "survey", "scenario": scenario, "seed": seed})
        _mirror(store)
        with store, contextlib.ExitStack() as opened:
            scope = _open_for_run(
                store, safety, scenario, seed, sim_config, replay, remote, token, backend, nion_config
            )
            opened.callback(scope.close)
            defaults = survey_defaults(
                scope.capabilities(),
                None if (remote or replay or backend == "nion") else (scenario or DEFAULT_SCENARIO),
                max_current_pA=safety.max_current_pA,
            )
            plan = SurveyPlan(**{**defaults, **fields, **{k: v for k, v in flags.items() if v is not None}})
            with _progress("survey", 1 + plan.spectra) as advance:
                result = run_survey(scope, store, plan, progress=lambda _done, _total: advance(1))
            rec = scope.capabilities().recorded  # a replay labels the figure from its file
            png = survey_figure(
                result.image,
                result.spectra,
                Path(out) / "survey.png",
                title=f"{scenario or remote or replay or backend} — seed {seed}",
                **(
                    {}
                    if rec is None
                    else {
                        "signal": rec.signal or "spectra",
                        "energy_name": rec.energy_name or "energy",
                        "image_label": rec.image,
                    }
                ),
            )
        log.info(
            "survey done: %d steps (%d reused), dose %.3g e; %s",
            1 + len(result.spectra),
            result.reused_steps,
            result.image.dose_e + sum(s.dose_e for s in result.spectra),
            png,
        )
        typer.echo(str(Path(out).resolve()))


@app.command()
def campaign(
    campaign_file: Annotated[
        Path | None, typer.Argument(help="Campaign file (default: the scenario's).")
    ] = None,
    out: Annotated[Path, typer.Option(help="Run directory (created, or resumed).")] = Path("runs/campaign"),
    scenario: Annotated[str | None, typer.Option(help="Simulated scenario.")] = None,
    method: Annotated[str | None, typer.Option(help="dkl, gp, random or raster.")] = None,
    budget: Annotated[int | None, typer.Option(help="Spectra to acquire.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the sample, noise and seed points.")] = None,
    remote: Annotated[str | None, typer.Option(help="URL of a served instrument.")] = None,
    token: Annotated[str | None, typer.Option(help="Bearer token of the remote instrument.")] = None,
    replay: Annotated[Path | None, typer.Option(help="Recorded spectrum image to replay.")] = None,
    limits: Annotated[Path | None, typer.Option(help="Safety limits file.")] = None,
    sim_config: Annotated[Path | None, typer.Option(help="Twin settings file: drift, noise, faults.")] = None,
    backend: BackendOpt = None,
    nion_config: NionConfigOpt = None,
    pipeline: Annotated[
        bool | None,
        typer.Option("--pipeline/--no-pipeline", help="Refit the model while the instrument measures."),
    ] = None,
) -> None:
    """Run (or resume) an active-learning campaign without an LLM; write the store and campaign.png."""
    from autoscope.instruments.factory import DEFAULT_SCENARIO
    from autoscope.tools.campaign import default_campaign_path, load_campaign, run_campaign
    from autoscope.tools.figures import campaign_figure
    from autoscope.tools.store import RunStore

    with _cli_errors():
        name = scenario or (None if (remote or replay or backend == "nion") else DEFAULT_SCENARIO)
        if campaign_file is None and name is None:
            raise ConfigError("campaign", "a remote, replayed or Nion instrument needs a campaign file")
        cfg = load_campaign(campaign_file or default_campaign_path(name))
        changes = {"method": method, "budget": budget, "seed": seed, "pipeline": pipeline}
        cfg = cfg.with_(**{k: v for k, v in changes.items() if v is not None})
        store = RunStore.open_or_create(out, meta={"command": "campaign", "scenario": name, "seed": cfg.seed})
        _mirror(store)
        with store, contextlib.ExitStack() as opened:
            scope = _open_for_run(
                store,
                _limits(limits),
                name,
                cfg.seed,
                sim_config,
                replay,
                remote,
                token,
                backend,
                nion_config,
            )
            opened.callback(scope.close)
            with _progress("campaign", cfg.budget) as advance:
                result = run_campaign(scope, store, cfg, on_step=lambda _i: advance(1))
            png = campaign_figure(
                result,
                Path(out) / "campaign.png",
                title=f"{name or remote or replay or backend} — {cfg.method}",
            )
        log.info(
            "campaign done: %d measurements (%d distinct), best %.4g, dose %.3g e, column dead %.0f %% "
            "of the loop (waiting for the model %.0f %%); %s",
            len(result.measured),
            len(set(result.measured)),
            max(result.y, default=float("nan")),
            result.dose_e,
            100 * result.timing.dead_fraction,
            100 * result.timing.wait_fraction,
            png,
        )
        typer.echo(str(Path(out).resolve()))
        if result.stopped_by is not None:
            err.print(
                f"[yellow]stopped by the {result.stopped_by.kind} monitor:[/yellow] {result.stopped_by.message}"
            )
            raise typer.Exit(EXIT_STOPPED)


@contextlib.contextmanager
def _progress(label: str, total: int) -> Iterator[Callable[[int], None]]:
    with Progress(
        TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err, transient=True
    ) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


@bench_app.command("latency")
def bench_latency_cmd(
    candidates: Annotated[int, typer.Option(min=2, help="Candidate positions.")] = 4096,
    dim: Annotated[int, typer.Option(min=1, help="Descriptor dimensions.")] = 64,
    observations: Annotated[int, typer.Option(min=2, help="Measurements the model is fitted on.")] = 200,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    steps: Annotated[int, typer.Option(min=1, help="Steps timed per method (median).")] = 5,
    replay: Annotated[
        Path | None, typer.Option(help="Take descriptors from a recorded spectrum image.")
    ] = None,
    refs: Annotated[
        bool, typer.Option("--refs/--no-refs", help="Also time the gpytorch and BoTorch references.")
    ] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Median step time (fit + predict + acquisition) and optimizer iterations of DKL and GP
    vs gpytorch (exact GP, DKL), BoTorch (SingleTaskGP + LogEI) and scikit-learn's ARD GP."""
    from autoscope.evals.latency import bench_latency, format_latency

    with _cli_errors():
        if device not in ("cpu", "cuda"):
            raise ConfigError("device", f"{device!r}: choose cpu or cuda")
        result = bench_latency(
            candidates=candidates,
            dim=dim,
            observations=observations,
            device=device,
            steps=steps,
            replay=replay,
            refs=refs,
        )
        typer.echo(json.dumps(result) if as_json else format_latency(result))


def _pct_cell(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f} %"


def _num_cell(value: float | None, fmt: str = ".1f") -> str:
    return "—" if value is None else format(value, fmt)


@bench_app.command("llm")
def bench_llm_cmd(
    models: Annotated[
        str, typer.Option(help="Comma-separated model keys (embedded models; none = reference).")
    ] = "smollm2,qwen2.5-coder-1.5b",
    scenarios: Annotated[
        str, typer.Option(help="Comma-separated scenarios.")
    ] = "plasmonic,tmd-defects,oxide-interface",
    seeds: Annotated[int, typer.Option(min=1, help="Seeds per scenario.")] = 1,
    budget: Annotated[int, typer.Option(min=1, help="Spectra per run.")] = 12,
    rounds: Annotated[int, typer.Option(min=1, max=20, help="Hypotheses per run.")] = 2,
    keep: Annotated[Path | None, typer.Option(help="Keep the run directories (report.md) here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Valid proposals (first try, after repair, fallback) and speed of each LLM on the real graph."""
    from autoscope.evals.llm_plans import bench_llm, check_names

    with _cli_errors():
        chosen = [m.strip() for m in models.split(",") if m.strip()]
        names = [s.strip() for s in scenarios.split(",") if s.strip()]
        check_names(chosen, names)
        with _progress("bench", len(chosen) * len(names) * seeds) as advance:
            result = bench_llm(chosen, names, seeds, budget, rounds, progress=advance, keep_dir=keep)
        if as_json:
            typer.echo(json.dumps(result))
            return
        table = Table(
            "model",
            "scenario",
            "proposals",
            "1st try",
            "after repair",
            "fallback",
            "calls/prop.",
            "tok/s (median call)",
            "s/prop. (median)",
            "load (s)",
            "run (s, median)",
            "differs from example",
            "new test",
            title=f"LLM proposals: {seeds} seed(s), budget {budget}, {rounds} rounds, "
            f"{result['cpus']} CPUs (load {result['load_avg_start'][0]:.1f})",
        )
        for key, r in result["results"].items():
            rows = [(f"{key}" + (" (reference)" if r["reference"] else ""), "all", r, r["load_s"])]
            rows += [("", s, sr, None) for s, sr in r["scenarios"].items()] if len(r["scenarios"]) > 1 else []
            for name, scen, row, load_s in rows:
                table.add_row(
                    name,
                    scen,
                    str(row["proposals"]),
                    _pct_cell(row["first_try_pct"]),
                    _pct_cell(row["valid_after_repair_pct"]),
                    _pct_cell(row["fallback_pct"]),
                    _num_cell(row["calls_per_proposal"], ".2f"),
                    f"{_num_cell(row['completion_tokens_per_s'])} "
                    f"({_num_cell(row['completion_tokens_per_s_median_call'])})",
                    _num_cell(row["median_proposal_latency_s"]),
                    _num_cell(load_s),
                    _num_cell(row["run_wall_s_median"]),
                    _pct_cell(row.get("differs_from_example_pct")),
                    _pct_cell(row.get("differs_in_substance_pct")),
                )
        Console().print(table)


@instrument_app.command("serve")
def instrument_serve(
    scenario: Annotated[
        str | None, typer.Option(help="Simulated scenario to serve (default: the default one).")
    ] = None,
    replay: Annotated[Path | None, typer.Option(help="Serve a recorded spectrum image instead.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the simulated sample.")] = 0,
    host: Annotated[str | None, typer.Option(help="Bind address (loopback by default).")] = None,
    port: Annotated[int | None, typer.Option(help="TCP port.")] = None,
    token: Annotated[
        str | None, typer.Option(help="Bearer token (default: settings, else a new one).")
    ] = None,
    limits: Annotated[Path | None, typer.Option(help="Safety limits file enforced by the server.")] = None,
    sim_config: Annotated[Path | None, typer.Option(help="Twin settings file: drift, noise, faults.")] = None,
    backend: BackendOpt = None,
    nion_config: NionConfigOpt = None,
    idle_exit_s: Annotated[float | None, typer.Option(help="Stop after this long without a request.")] = None,
    state_dir: Annotated[
        Path | None,
        typer.Option(
            help="Where the server keeps its idempotency cache and acquisition ledger across restarts "
            "(default: settings, else the user state directory per port)."
        ),
    ] = None,
) -> None:
    """Serve a microscope over HTTP (FastAPI + uvicorn), behind its safety limits."""
    from autoscope.instruments.factory import open_microscope
    from autoscope.instruments.remote.server import serve
    from autoscope.instruments.remote.state import ServerState, default_state_dir, is_loopback

    settings = load_settings()
    with _cli_errors():
        bind, at = host or settings.host, port or settings.port
        tok = token or settings.token
        if not tok and not is_loopback(bind):
            raise ConfigError(
                "token",
                f"{bind} is not a loopback address: choose a token (--token or AUTOSCOPE_TOKEN) "
                "before the instrument is reachable from other machines",
            )
        state = ServerState(state_dir or settings.server_state_dir or default_state_dir(at))
        history = state.history()

        def remember(event: dict) -> None:  # the dose between requests, charged again on restart
            if event["kind"] == "beam_dose":
                state.add_acquisition(event)

        scope = open_microscope(
            _limits(limits),
            scenario=scenario,
            seed=seed,
            sim_config=sim_config,
            replay=replay,
            backend=backend,
            nion_config=nion_config,
            history=history,
            on_event=remember,
        )
        if history:
            log.warning(
                "%d earlier acquisitions in %s are charged against the limits "
                "(a new sample needs a new --state-dir)",
                len(history),
                state.dir,
            )
        if not tok:
            tok = secrets.token_urlsafe(24)
            err.print(f"token: {tok}")
        try:
            serve(scope, host=bind, port=at, token=tok, idle_exit_s=idle_exit_s, state=state)
        finally:
            scope.close()  # the Nion simulator's threads must be stopped before exit


bench_app.command("discovery")(cli_bench.discovery)
bench_app.command("growth")(cli_bench.growth)
bench_app.command("science")(cli_bench.science)
bench_app.command("score")(cli_bench.score)
bench_app.command("reliability")(cli_bench.reliability)
bench_app.command("throughput")(cli_bench.throughput)
bench_app.command("overhead")(cli_overhead.overhead)
bench_app.command("deadtime")(cli_bench.deadtime)
app.command("run")(cli_run.run)
app.command("resume")(cli_run.resume)
app.command("chat")(cli_run.chat)
app.command("plan-schema")(cli_run.plan_schema)
app.command("eval")(cli_eval.eval_cmd)
from autoscope.agents import cli_web  # noqa: E402 - beside the other commands

app.command("web")(cli_web.web)
from autoscope.agents import cli_mcp  # noqa: E402 - beside the other commands

app.command("mcp")(cli_mcp.mcp)


def main() -> None:
    app()
