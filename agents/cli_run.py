"""The agent commands of the CLI: ``run``, ``resume``, ``chat``, ``plan-schema``.

Exit codes: 0 the run is done, 3 it stopped for a person (a gate, a safety limit),
2 bad input (the message names the field), 1 an instrument failure (resume the run).
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from autoscope.agents.settings import load_settings
from autoscope.instruments.errors import InvalidRequest

#: the instrument options every command that opens one shares (run, campaign, survey, instrument serve)
BackendOpt = Annotated[
    str | None, typer.Option(help="twin (default) or nion: a Nion column, or Nion's simulator headless.")
]
NionConfigOpt = Annotated[
    Path | None, typer.Option(help="Nion hardware sources and controls (YAML); default: the simulator's.")
]

err = Console(stderr=True)
EXIT_STOPPED = 3
AUTONOMY = ("manual", "supervised", "autonomous")
LLMS = ("local", "openai", "none")


def _choice(value: str | None, allowed: tuple[str, ...], field: str) -> str | None:
    if value is not None and value not in allowed:
        raise InvalidRequest(field, f"{value!r}: choose {', '.join(allowed)}")
    return value


@contextlib.contextmanager
def _display(total: int) -> Iterator[tuple]:
    """A progress bar over the run's spectra with the current node as its label."""
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    ) as bar:
        task = bar.add_task("run", total=total)
        yield (lambda _info: bar.advance(task, 1)), (lambda text: bar.update(task, description=text))


@contextlib.contextmanager
def _interruptible(holder: dict) -> Iterator[None]:
    """First Ctrl-C ends the running scan after its current spectrum; a second one aborts."""

    def handler(signum, frame):
        ctx = holder.get("ctx")
        if ctx is None or ctx.stop_requested.is_set():
            raise KeyboardInterrupt
        ctx.stop_requested.set()
        err.print("[yellow]stopping the scan after the current spectrum (Ctrl-C again to abort)[/yellow]")

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _finish(outcome) -> None:
    s = outcome.summary
    typer.echo(str(outcome.run_dir.resolve()))
    verdicts = ", ".join(f"{h['id']} {h['verdict']}" for h in s["hypotheses"]) or "no hypotheses"
    err.print(
        f"{s['status']}: {s['measurements']} spectra, dose {s['dose_e_per_A2'] or 0:.3g} e/Å²; {verdicts}; "
        f"LLM {s['llm']['backend']} {s['llm']['calls']} calls; checkpoint {s['checkpoint_bytes']} bytes",
        highlight=False,
    )
    if outcome.pending is not None:
        err.print(
            f"[yellow]waiting for a person at the {outcome.pending.gate} gate:[/yellow] "
            f"{outcome.pending.question}\n"
            f"answer with: autoscope resume {outcome.run_dir} --answer approve|reject|redirect|edit ...",
            highlight=False,
        )
        raise typer.Exit(EXIT_STOPPED)


def run(
    campaign_file: Annotated[
        Path | None, typer.Argument(help="Run file: goal, notes, rounds, budget, template (see README).")
    ] = None,
    scenario: Annotated[str | None, typer.Option(help="Simulated scenario.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the sample, noise and agents.")] = None,
    autonomy: Annotated[str | None, typer.Option(help="manual, supervised or autonomous.")] = None,
    llm: Annotated[str | None, typer.Option(help="local, openai or none (deterministic planner).")] = None,
    out: Annotated[Path | None, typer.Option(help="Run directory (default: runs/run-<time>).")] = None,
    budget: Annotated[int | None, typer.Option(min=1, help="Spectra for the whole run.")] = None,
    rounds: Annotated[int | None, typer.Option(min=1, help="Hypotheses to test at most.")] = None,
    remote: Annotated[str | None, typer.Option(help="URL of a served instrument.")] = None,
    token: Annotated[str | None, typer.Option(help="Bearer token of the remote instrument.")] = None,
    replay: Annotated[
        Path | None,
        typer.Option(help="A recorded spectrum image to run on (the scenario gives the template)."),
    ] = None,
    limits: Annotated[Path | None, typer.Option(help="Safety limits file.")] = None,
    sim_config: Annotated[Path | None, typer.Option(help="Twin settings file: drift, noise, faults.")] = None,
    backend: BackendOpt = None,
    nion_config: NionConfigOpt = None,
) -> None:
    """Headless campaign: survey, hypotheses, plans, gates, active learning, verdicts, report."""
    from autoscope.agents.cli import _cli_errors
    from autoscope.agents.run_spec import load_run_spec
    from autoscope.agents.runner import RunOptions, launch
    from autoscope.instruments.factory import describe_scenarios

    with _cli_errors():
        _choice(autonomy, AUTONOMY, "autonomy")
        _choice(llm, LLMS, "llm")
        names = [n for n, _ in describe_scenarios()]
        if scenario is not None and scenario not in names:
            raise InvalidRequest("scenario", f"unknown scenario {scenario!r}; choose from {', '.join(names)}")
        spec = load_run_spec(campaign_file, scenario)
        changes = {"seed": seed, "budget": budget, "rounds": rounds}
        spec = spec.model_validate(
            {**spec.model_dump(), **{k: v for k, v in changes.items() if v is not None}}
        )
        run_dir = out or load_settings().runs_dir / f"run-{time.strftime('%Y%m%d-%H%M%S')}"
        options = RunOptions(
            autonomy=autonomy,
            llm=llm,
            limits=limits,
            sim_config=sim_config,
            remote=remote,
            token=token,
            replay=replay,
            backend=backend,
            nion_config=nion_config,
        )
        holder: dict = {}
        with _display(spec.total_budget) as (on_step, on_status), _interruptible(holder):
            outcome = launch(
                Path(run_dir),
                spec,
                options,
                on_step=on_step,
                on_status=on_status,
                context_hook=lambda ctx: holder.update(ctx=ctx),
            )
    _finish(outcome)


def _answer(answer: str | None, reason: str, instruction: str, edit: Path | None):
    from autoscope.agents.gates import GateResponse
    from autoscope.instruments.config_files import read_mapping

    if answer is None:
        return None
    if answer not in ("approve", "reject", "redirect", "edit"):
        raise InvalidRequest("answer", f"{answer!r}: choose approve, reject, redirect or edit")
    if answer == "edit" and edit is None:
        raise InvalidRequest("edit", "--answer edit needs --edit FILE (the modified proposal, YAML or JSON)")
    if answer == "redirect" and not instruction:
        raise InvalidRequest("instruction", "--answer redirect needs --instruction TEXT")
    return GateResponse(
        action=answer,
        reason=reason,
        instruction=instruction,
        edit=read_mapping(edit, "edit") if edit else None,
        actor="human",
        who="cli",
    )


def resume(
    run_dir: Annotated[Path, typer.Argument(help="Run directory of a stopped or killed run.")],
    answer: Annotated[
        str | None, typer.Option(help="Answer to the pending gate: approve, reject, redirect or edit.")
    ] = None,
    reason: Annotated[str, typer.Option(help="Why (with --answer reject).")] = "",
    instruction: Annotated[str, typer.Option(help="New instruction (with --answer redirect).")] = "",
    edit: Annotated[Path | None, typer.Option(help="Modified proposal (with --answer edit).")] = None,
    autonomy: Annotated[str | None, typer.Option(help="Change the autonomy level from here on.")] = None,
    llm: Annotated[str | None, typer.Option(help="Change the LLM backend from here on.")] = None,
    token: Annotated[str | None, typer.Option(help="Bearer token of a remote instrument.")] = None,
) -> None:
    """Continue a run from its checkpoint: a killed run where it was, a stopped one at its gate."""
    from autoscope.agents.cli import _cli_errors
    from autoscope.agents.runner import RunOptions, launch, load_run_file

    with _cli_errors():
        _choice(autonomy, AUTONOMY, "autonomy")
        _choice(llm, LLMS, "llm")
        budget = load_run_file(run_dir)["spec"].get("budget") or 0
        first = _answer(answer, reason, instruction, edit)
        used = {"done": False}

        def responder(request):
            if first is not None and not used["done"]:
                used["done"] = True
                return first
            return None

        holder: dict = {}
        with _display(budget) as (on_step, on_status), _interruptible(holder):
            outcome = launch(
                run_dir,
                None,
                RunOptions(autonomy=autonomy, llm=llm, token=token),
                responder=responder,
                on_step=on_step,
                on_status=on_status,
                context_hook=lambda ctx: holder.update(ctx=ctx),
            )
    _finish(outcome)


def chat(
    scenario: Annotated[str | None, typer.Option(help="Simulated scenario.")] = None,
    remote: Annotated[
        str | None, typer.Option(help="URL of a served instrument instead of the twin.")
    ] = None,
    token: Annotated[str | None, typer.Option(help="Bearer token of the remote instrument.")] = None,
    out: Annotated[Path | None, typer.Option(help="Run directory (default: runs/chat-<time>).")] = None,
    llm: Annotated[str | None, typer.Option(help="local, openai or none.")] = None,
    autonomy: Annotated[
        str, typer.Option(help="Who decides at gates (default: you approve plans).")
    ] = "supervised",
    rounds: Annotated[int | None, typer.Option(min=1, help="Hypotheses to test at most.")] = None,
    budget: Annotated[int | None, typer.Option(min=1, help="Spectra for the whole run.")] = None,
    campaign_file: Annotated[Path | None, typer.Option("--campaign", help="Run file to start from.")] = None,
) -> None:
    """Converse with the planner: state a goal, ask about the data, answer at every gate."""
    from autoscope.agents.chat import ChatResponder
    from autoscope.agents.cli import _cli_errors
    from autoscope.agents.run_spec import load_run_spec
    from autoscope.agents.runner import RunOptions, launch
    from autoscope.agents.session import new_spec

    with _cli_errors():
        _choice(autonomy, AUTONOMY, "autonomy")
        _choice(llm, LLMS, "llm")
        if scenario and remote:
            raise InvalidRequest("remote", "give either --scenario or --remote, not both")
        if remote and campaign_file is None:
            raise InvalidRequest("campaign", "a remote instrument needs --campaign FILE (its template)")
        spec = load_run_spec(campaign_file, scenario)
        run_dir = Path(out or load_settings().runs_dir / f"chat-{time.strftime('%Y%m%d-%H%M%S')}")
        holder: dict = {}

        def say(text: str) -> None:
            sys.stdout.write(text + ("" if text.endswith("> ") else "\n"))
            sys.stdout.flush()

        responder = ChatResponder(sys.stdin, say, run_dir, lambda: holder.get("ctx") and holder["ctx"].llm)
        say(f"autoscope chat on {remote or spec.scenario}. Default goal: {spec.goal}")
        goal = responder.read("goal (empty keeps the default)> ")
        while goal and goal.startswith("?"):
            responder.question(goal[1:])
            goal = responder.read("goal> ")
        spec = new_spec(
            scenario=scenario, campaign_file=campaign_file, goal=goal or "", budget=budget, rounds=rounds
        )
        with _interruptible(holder):
            outcome = launch(
                run_dir,
                spec,
                RunOptions(autonomy=autonomy, llm=llm, remote=remote, token=token),
                responder=responder,
                on_status=lambda text: say(f"… {text}"),
                context_hook=lambda ctx: holder.update(ctx=ctx),
            )
        for h in outcome.summary["hypotheses"]:
            say(f"{h['id']}: {h['verdict']} — {h['statement']}")
        say(f"report: {run_dir / 'report.md'}")
    _finish(outcome)


def plan_schema(
    kind: Annotated[str, typer.Option(help="plan or hypothesis.")] = "plan",
) -> None:
    """Print the JSON schema of a plan (or a hypothesis) in the plan language."""
    from autoscope.agents.cli import _cli_errors
    from autoscope.tools.plan import Hypothesis, plan_schema

    with _cli_errors():
        if kind not in ("plan", "hypothesis"):
            raise InvalidRequest("kind", f"{kind!r}: choose plan or hypothesis")
        schema = plan_schema() if kind == "plan" else Hypothesis.model_json_schema()
        typer.echo(json.dumps(schema, indent=2))
