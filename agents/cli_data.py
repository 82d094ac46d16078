"""``autoscope data inspect`` and ``autoscope data convert``: recorded spectrum images in the field's formats."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

data_app = typer.Typer(
    help="Recorded spectrum images: what a file holds, and conversion for replay.", no_args_is_help=True
)

ImageOpt = Annotated[
    Path | None, typer.Option("--image", help="The survey image of the same field, from a second file.")
]


def _read(file, image, dwell_s, spectrum_dwell_s, current_pA, pixel_size_nm, energy_shift_eV):
    """The recording, with the conditions the person gave on the command line."""
    from autoscope.instruments.readers import read_recording

    vals = {
        "dwell_s": dwell_s,
        "spectrum_dwell_s": spectrum_dwell_s,
        "current_pA": current_pA,
        "pixel_size_nm": pixel_size_nm,
    }
    given = {k: v for k, v in vals.items() if v is not None}
    return read_recording(file, image_path=image, given=given, energy_shift_eV=energy_shift_eV)


DwellOpt = Annotated[float | None, typer.Option(help="Image dwell per pixel (s), when the file has none.")]
SpecDwellOpt = Annotated[float | None, typer.Option(help="Spectrum dwell per pixel (s).")]
CurrentOpt = Annotated[float | None, typer.Option("--current-pA", help="Beam current (pA).")]
PixelOpt = Annotated[float | None, typer.Option(help="Scan pixel size (nm).")]
ShiftOpt = Annotated[float, typer.Option("--energy-shift-eV", help="Added to the file's energy offset (eV).")]


@data_app.command("inspect")
def inspect(
    file: Annotated[
        Path,
        typer.Argument(
            help="A spectrum image (.dm3/.dm4, .emd, .hspy/.zspy, USID .h5, .npz) or a replay file (.yaml)."
        ),
    ],
    image: ImageOpt = None,
    dwell_s: DwellOpt = None,
    spectrum_dwell_s: SpecDwellOpt = None,
    current_pA: CurrentOpt = None,
    pixel_size_nm: PixelOpt = None,
    energy_shift_eV: ShiftOpt = 0.0,
    figure: Annotated[
        Path | None, typer.Option(help="Where to write the figure (default FILE-stem.inspect.png here).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """What a recorded file holds: axes, counts, each recording condition as read from the file or assumed."""
    from autoscope.agents.cli import _cli_errors
    from autoscope.tools.figures import recording_figure

    with _cli_errors():
        rec = _read(file, image, dwell_s, spectrum_dwell_s, current_pA, pixel_size_nm, energy_shift_eV)
        fig = recording_figure(rec, figure or Path(f"{file.stem}.inspect.png"))
        rep = {**rec.report(), "figure": str(fig)}
        if as_json:
            typer.echo(json.dumps(rep, indent=2))
            return
        out = Console()
        s, ax = rep["shape"], rep["energy_axis"]
        out.print(f"{rep['file']} ({rep['reader']}): {rep['signal_type']}, {s['rows']} rows × {s['columns']} columns "
                  f"× {s['channels']} channels; {ax['name']} {ax['first_eV']:.6g}–{ax['last_eV']:.6g} eV; "
                  f"field {rep['field_nm'][0]:.4g} × {rep['field_nm'][1]:.4g} nm")  # fmt: skip
        c = rep["counts"]
        out.print(f"image: {rep['image']}; counts {c['min']:.4g}..{c['max']:.4g}, "
                  f"{c['negative_fraction']:.1%} negative, {c['non_finite']} not finite")  # fmt: skip
        t = Table("condition", "value", "source", "where")
        for k, v in rep["conditions"].items():
            t.add_row(k, f"{v['value']:.6g}", v["source"], v["where"])
        out.print(t)
        for what, m in rep["replay_noise"].items():
            out.print(f"replay {what}: {m['kind']} (gain {m['gain']:g}, offset {m['offset']:g}): {m['why']}",
                      highlight=False)  # fmt: skip
        for n in rep["notes"]:
            out.print(f"note: {n}", highlight=False)
        out.print(f"figure: {fig}")


@data_app.command("convert")
def convert(
    file: Annotated[Path, typer.Argument(help="A spectrum image in any format `data inspect` reads.")],
    out: Annotated[Path, typer.Argument(help="The internal format to write: .h5 or .npz.")],
    image: ImageOpt = None,
    dwell_s: DwellOpt = None,
    spectrum_dwell_s: SpecDwellOpt = None,
    current_pA: CurrentOpt = None,
    pixel_size_nm: PixelOpt = None,
    energy_shift_eV: ShiftOpt = 0.0,
) -> None:
    """Write a recorded spectrum image in the internal replay format, with the conditions read or given."""
    from autoscope.agents.cli import _cli_errors
    from autoscope.instruments.errors import ConfigError
    from autoscope.instruments.replay import save_spectrum_image

    with _cli_errors():
        if out.suffix not in (".h5", ".hdf5", ".npz"):
            raise ConfigError("out", f"{out.suffix or '(none)'}: write .h5 or .npz")
        if out.exists():
            raise ConfigError("out", f"{out} exists: not overwritten")
        rec = _read(file, image, dwell_s, spectrum_dwell_s, current_pA, pixel_size_nm, energy_shift_eV)
        si = rec.spectrum_image()
        save_spectrum_image(
            out,
            si.image,
            si.spectra,
            **{k: v.value for k, v in rec.conditions.items()},
            image_noise=rec.image_noise,  # kept only when given: otherwise a replay chooses again
            spectrum_noise=rec.spectrum_noise,
        )
        assumed = ", ".join(rec.assumed()) or "none"
        typer.echo(f"wrote {out}: {si.spectra.shape} from {file} (assumed: {assumed})")
