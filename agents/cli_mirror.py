"""``autoscope runs pull``: a run directory back from S3-compatible object storage.

Exit codes: 0 restored, 2 a bad URL, no run there, or a directory that already holds a
run (the message says which), 1 an object whose bytes do not match its checksum.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from autoscope.agents.settings import load_settings

err = Console(stderr=True)
EXIT_BAD_INPUT = 2


def pull(
    url: Annotated[str, typer.Argument(help="The run in object storage: s3://bucket/prefix/run-name.")],
    directory: Annotated[
        Path, typer.Argument(help="Run directory to restore it into (must not hold a run).")
    ],
    endpoint_url: Annotated[
        str | None, typer.Option(help="S3-compatible endpoint (default: AUTOSCOPE_STORE_ENDPOINT_URL).")
    ] = None,
) -> None:
    """Restore a mirrored run (log, step files, run files; data.h5 rebuilt), checking every checksum.

    The directory can then be resumed (``autoscope resume DIR``), scored and queried like the original.
    """
    from autoscope.tools.mirror import ChecksumMismatch, MirrorError, pull_run

    try:
        result = pull_run(url, directory, endpoint_url=endpoint_url or load_settings().store_endpoint_url)
    except ChecksumMismatch as exc:
        err.print(f"[red]checksum mismatch:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None
    except MirrorError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    err.print(
        f"pulled {result.files} files ({result.steps} steps, {result.bytes / 1e6:.2f} MB) "
        f"in {result.seconds:.1f} s; checksums match",
        highlight=False,
    )
    typer.echo(str(result.directory.resolve()))
