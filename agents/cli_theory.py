"""``autoscope theory``: theory in the loop from the command line (simulate a HAADF image, rank
defect models against a measured patch)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from autoscope.instruments.errors import InvalidRequest

theory_app = typer.Typer(
    help="Theory in the loop: simulate images, rank defect models.", no_args_is_help=True
)


def _cli_errors():
    from autoscope.agents.cli import _cli_errors as errors

    return errors()


def _pair(text: str, field: str) -> tuple[float, float]:
    try:
        x, y = (float(v) for v in text.split(","))
    except ValueError:
        raise InvalidRequest(field, f"expected X,Y in nm, got {text!r}") from None
    return x, y


def _defect(text: str):
    from autoscope.theory.structures import DefectSpec

    species, _, host = text.partition(":")
    if not host:
        raise InvalidRequest(
            "defect", f"expected SPECIES:HOST (e.g. W:Mo, or V:S for a vacancy), got {text!r}"
        )
    if species == "V":
        return DefectSpec(kind="vacancy", host=host)
    return DefectSpec(kind="substitution", host=host, species=species)


@theory_app.command("simulate")
def simulate(
    structure: Annotated[
        Path, typer.Option(help="Structure file: CIF, our JSON, or anything pymatgen reads.")
    ],
    out: Annotated[Path, typer.Option(help="PNG to write.")],
    fov_nm: Annotated[float | None, typer.Option(help="Field of view (nm); default: the cell.")] = None,
    pixels: Annotated[int, typer.Option(min=16, max=2048, help="Pixels per side.")] = 256,
    voltage_kv: Annotated[float, typer.Option("--voltage-kV", help="Accelerating voltage.")] = 80.0,
    convergence_mrad: Annotated[float, typer.Option(help="Probe semi-angle.")] = 30.0,
    defocus_nm: Annotated[float, typer.Option(help="Defocus.")] = 0.0,
    backend: Annotated[str, typer.Option(help="fast or abtem (needs the abtem extra).")] = "fast",
) -> None:
    """Simulate a HAADF image of a structure (incoherent Z-contrast, or abTEM multislice)."""
    from autoscope.theory.haadf import simulate_haadf
    from autoscope.theory.probe import ProbeSpec
    from autoscope.theory.structures import sample_xy_nm
    from autoscope.tools.figures import image_figure
    from autoscope.tools.theory import load_structure

    with _cli_errors():
        if backend not in ("fast", "abtem"):
            raise InvalidRequest("backend", f"{backend!r}: choose fast or abtem")
        s = load_structure(structure)
        xy = sample_xy_nm(s)
        lo, hi = xy.min(axis=0), xy.max(axis=0)
        fov = fov_nm or float(max(hi - lo)) or 1.0
        centre = tuple(float(v) for v in (lo + hi) / 2)
        probe = ProbeSpec(voltage_kV=voltage_kv, convergence_mrad=convergence_mrad, defocus_nm=defocus_nm)
        img = simulate_haadf(s, fov_nm=fov, pixels=pixels, center_nm=centre, probe=probe, backend=backend)
        image_figure(
            img,
            fov,
            centre,
            out,
            title=f"{s.composition.reduced_formula}: {backend} HAADF, {voltage_kv:g} kV",
        )
        typer.echo(str(Path(out).resolve()))


@theory_app.command("rank")
def rank(
    run: Annotated[Path, typer.Option(help="Run directory holding a survey image.")],
    position: Annotated[str, typer.Option(help="X,Y of the feature in nm (sample frame).")],
    defect: Annotated[str, typer.Option(help="SPECIES:HOST, e.g. W:Mo; V:S for a vacancy.")] = "W:Mo",
    wrong_sites: Annotated[int, typer.Option(min=1, max=12, help="Wrong-site candidates.")] = 3,
    patch_nm: Annotated[float, typer.Option(help="Side of the measured patch (nm).")] = 2.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Rank candidate defect models against the measured survey patch at a position."""
    from autoscope.tools.store import RunStore
    from autoscope.tools.survey import IMAGE_STEP
    from autoscope.tools.theory import RankRequest, rank_at

    with _cli_errors():
        x, y = _pair(position, "position")
        store = RunStore.open(run, read_only=True)
        if not store.has_step(IMAGE_STEP):
            raise InvalidRequest("run", f"{run} holds no survey image ({IMAGE_STEP})")
        req = RankRequest(x_nm=x, y_nm=y, defect=_defect(defect), wrong_sites=wrong_sites, patch_nm=patch_nm)
        outcome = rank_at(store.load(IMAGE_STEP), req)
        if as_json:
            typer.echo(outcome.model_dump_json(exclude={"candidates": {"__all__": {"structure"}}}))
            return
        r = outcome.result
        table = Table(
            "candidate", "site (nm)", "score", "±", title=f"{len(r.scores)} models at ({x:.2f}, {y:.2f}) nm"
        )
        rows = zip(outcome.candidates, r.scores, r.uncertainties, strict=True)
        for cand, score, unc in sorted(rows, key=lambda t: -t[1]):
            site = "—" if cand.x_nm is None else f"({cand.x_nm:.2f}, {cand.y_nm:.2f})"
            table.add_row(cand.label, site, f"{score:.4f}", f"{unc:.4f}")
        Console().print(table)
        typer.echo(r.statement)
