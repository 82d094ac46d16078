"""``autoscope runs export``: a run directory in the field's document formats.

Exit codes: 0 written, 2 bad input (not a run directory, an unknown format, an output that
cannot be written; the message names which), 1 documents that fail event-model's validation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console

err = Console(stderr=True)
EXIT_BAD_INPUT = 2
FORMATS: tuple[Literal["bluesky"], ...] = ("bluesky",)


def export(
    run_dir: Annotated[Path, typer.Argument(help="The run directory (it holds events.jsonl).")],
    out: Annotated[Path, typer.Option(help="The file to write (JSON lines: one [name, doc] pair a line).")],
    fmt: Annotated[
        str, typer.Option("--format", help="bluesky: event-model documents (RunStart ... RunStop).")
    ] = "bluesky",
) -> None:
    """Write a run's Bluesky event-model documents: the plan, hypotheses and verdicts in the start and
    stop documents, one event per acquisition, the arrays as resources in the run's HDF5 files.

    Feed the file to bluesky's ``TiledWriter`` to serve the run through Tiled (see README).
    """
    import jsonschema

    from autoscope.tools.bluesky_docs import ExportError, InvalidDocuments, write_jsonl
    from autoscope.tools.store import EVENTS, RunStoreError

    def bad(field: str, message: str) -> typer.Exit:
        err.print(f"[red]error:[/red] {field}: {message}", highlight=False)
        return typer.Exit(EXIT_BAD_INPUT)

    if fmt not in FORMATS:
        raise bad("format", f"{fmt!r} is not a format runs export writes: choose {', '.join(FORMATS)}")
    if not (run_dir / EVENTS).is_file():
        raise bad("run_dir", f"{run_dir} is not an autoscope run directory (no {EVENTS})")
    if not out.parent.is_dir():
        raise bad("out", f"{out.parent} is not a directory")
    try:
        result = write_jsonl(run_dir, out)
    except InvalidDocuments as exc:
        err.print(f"[red]invalid documents:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None
    except (ExportError, RunStoreError) as exc:
        raise bad("run_dir", str(exc)) from None
    except jsonschema.ValidationError as exc:
        err.print(f"[red]invalid document:[/red] {exc.message}", highlight=False)
        raise typer.Exit(1) from None
    counts = ", ".join(f"{n} {name}" for name, n in result.counts.items())
    err.print(f"wrote {counts} in {result.seconds:.2f} s", highlight=False)
    typer.echo(str(result.out.resolve()))
