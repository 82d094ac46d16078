"""Real DFT through GPAW, run as a separate process under the system Python.

Debian's ``gpaw`` and ``gpaw-data`` packages install GPAW for ``/usr/bin/python3``, not
for our virtual environment, so a calculation is a subprocess: the structure goes to a
temporary directory as plain JSON, ``gpaw_job.py`` (standard library + ASE + GPAW only)
computes the energy and writes ``out.json``, and a failure becomes ``TheoryJobError``
with the tail of stderr. Install: ``sudo apt-get install gpaw gpaw-data``.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from pymatgen.core import Element, Structure

log = logging.getLogger(__name__)

SYSTEM_PYTHON = Path("/usr/bin/python3")
GPAW_SCRIPT = Path(__file__).with_name("gpaw_job.py")
_TAIL_CHARS = 2000


class TheoryJobError(RuntimeError):
    """A theory job failed (the calculation, its process, or its timeout)."""

    def __init__(self, message: str, *, stderr_tail: str = "", returncode: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.stderr_tail = stderr_tail
        self.returncode = returncode

    def __reduce__(self) -> tuple[Any, ...]:  # pickles across Dask workers with its fields
        return (_rebuild_error, (self.message, self.stderr_tail, self.returncode))

    def __str__(self) -> str:
        if self.stderr_tail:
            return f"{self.message}\n--- stderr (tail) ---\n{self.stderr_tail}"
        return self.message


def _rebuild_error(message: str, stderr_tail: str, returncode: int | None) -> TheoryJobError:
    return TheoryJobError(message, stderr_tail=stderr_tail, returncode=returncode)


class GpawParams(BaseModel):
    """GPAW settings of one single point (all of them enter the job's cache key)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: Literal["lcao", "pw", "fd"] = "lcao"
    basis: str = Field("dzp", description="LCAO basis set")
    pw_cutoff_eV: float = Field(300.0, gt=0, description="plane-wave cutoff (mode 'pw')")
    grid_spacing_A: float = Field(0.2, gt=0, description="real-space grid spacing (modes 'lcao', 'fd')")
    xc: str = "PBE"
    kpts: tuple[int, int, int] = (1, 1, 1)
    charge: float = 0.0
    spinpol: bool = False


class GpawResult(BaseModel):
    """What one GPAW run reports."""

    model_config = ConfigDict(frozen=True)

    energy_eV: float
    n_atoms: int
    n_electrons: float
    iterations: int
    gpaw_version: str
    wall_s: float
    run_id: str = Field(description="unique per process launch: a cached result keeps the launch's id")
    pid: int


@functools.cache
def gpaw_available(python: Path = SYSTEM_PYTHON) -> tuple[bool, str]:
    """Whether ``python`` can import GPAW, and why not (checked once per process)."""
    if not Path(python).exists():
        return False, f"{python} not found; install GPAW with `apt-get install gpaw gpaw-data`"
    try:
        proc = subprocess.run(
            [str(python), "-c", "import gpaw, ase; print(gpaw.__version__)"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"could not run {python}: {exc}"
    if proc.returncode != 0:
        last = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        return (
            False,
            f"{python} cannot import gpaw ({last[0]}); install with `apt-get install gpaw gpaw-data`",
        )
    return True, f"GPAW {proc.stdout.strip()} under {python}"


# Valence electrons of GPAW's default PAW setups (semicore states included where GPAW has them).
_GPAW_VALENCE = {
    "H": 1, "He": 2, "Li": 1, "Be": 2, "B": 3, "C": 4, "N": 5, "O": 6, "F": 7, "Na": 7, "Mg": 8,
    "Al": 3, "Si": 4, "P": 5, "S": 6, "Cl": 7, "Ti": 12, "Fe": 8, "Cu": 11, "Zn": 12, "Ga": 13,
    "Se": 6, "Sr": 10, "Mo": 14, "Ag": 11, "W": 14, "Pt": 10, "Au": 11, "La": 11,
}  # fmt: skip


def valence_electrons(structure: Structure) -> int:
    """Valence electrons GPAW treats explicitly (outside the table: Z minus the noble-gas core)."""
    total = 0
    for site in structure:
        symbol = site.specie.symbol
        if symbol in _GPAW_VALENCE:
            total += _GPAW_VALENCE[symbol]
        else:
            z = Element(symbol).Z
            total += z - max(n for n in (0, 2, 10, 18, 36, 54, 86) if n < z)
    return total


def estimate_gpaw_cost(structure: Structure, params: GpawParams) -> tuple[float, float, str]:
    """(seconds, memory_MB, basis) of a GPAW single point — an order of magnitude, for budgets.

    Calibrated on LCAO/dzp, Γ only, one core: H2 ≈ 2 s (mostly start-up); MoS2 monolayers
    of 3, 12, 27 atoms (26, 104, 234 electrons) ≈ 6, 15, 34 s. Grid work grows as N_e,
    diagonalisation as N_e³ (dominant beyond ~1000 electrons); × k-points; PW ×3 over LCAO.
    """
    n_e = valence_electrons(structure)
    n_k = int(np.prod(params.kpts))
    mode_factor = {"lcao": 1.0, "fd": 2.0, "pw": 3.0}[params.mode]
    seconds = 2.0 + mode_factor * n_k * (0.13 * n_e + 1.3e-7 * n_e**3)
    memory_MB = 150.0 + mode_factor * (2.0 * n_e + 1e-3 * n_k * n_e**2)
    basis = f"GPAW {params.mode}: 2 s start-up + (0.13 N_e + 1.3e-7 N_e³) s per k-point, N_e={n_e}, {n_k} k-point(s)"
    return float(seconds), float(memory_MB), basis


def _tail(text: str) -> str:
    return text[-_TAIL_CHARS:]


def run_gpaw(
    structure: Structure,
    params: GpawParams | None = None,
    *,
    timeout_s: float = 3600.0,
    python: Path = SYSTEM_PYTHON,
) -> GpawResult:
    """GPAW single-point energy of ``structure`` in a subprocess of the system Python.

    Non-periodic directions come from ``structure.lattice.pbc`` (a molecule in a box:
    all False). Raises ``TheoryJobError`` when GPAW is missing, the run fails or it
    exceeds ``timeout_s``.
    """
    params = params or GpawParams()
    ok, reason = gpaw_available(python)
    if not ok:
        raise TheoryJobError(f"GPAW is not available: {reason}")
    spec = {
        "symbols": [site.specie.symbol for site in structure],
        "positions_A": structure.cart_coords.tolist(),
        "cell_A": structure.lattice.matrix.tolist(),
        "pbc": [bool(p) for p in structure.lattice.pbc],
        "params": params.model_dump(mode="json"),
    }
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", PYTHONNOUSERSITE="1")
    env.pop("PYTHONPATH", None)  # the venv's packages must not shadow the system ones
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="autoscope-gpaw-") as tmp:
        in_path, out_path = Path(tmp, "in.json"), Path(tmp, "out.json")
        in_path.write_text(json.dumps(spec))
        try:
            proc = subprocess.run(
                [str(python), str(GPAW_SCRIPT), str(in_path), str(out_path)],
                capture_output=True,
                text=True,
                timeout=timeout_s,
                cwd=tmp,
                env=env,
            )
        except subprocess.TimeoutExpired as exc:
            stderr = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
            raise TheoryJobError(
                f"GPAW on {structure.formula} exceeded {timeout_s:g} s", stderr_tail=_tail(stderr)
            ) from exc
        if proc.returncode != 0 or not out_path.exists():
            gpaw_log = Path(tmp, "gpaw.txt")
            detail = proc.stderr or (gpaw_log.read_text() if gpaw_log.exists() else "")
            raise TheoryJobError(
                f"GPAW on {structure.formula} failed (exit {proc.returncode})",
                stderr_tail=_tail(detail),
                returncode=proc.returncode,
            )
        result = GpawResult.model_validate_json(out_path.read_text())
    log.info(
        "GPAW %s: %.6f eV, %d SCF iterations, %.1f s",
        structure.formula,
        result.energy_eV,
        result.iterations,
        time.perf_counter() - start,
    )
    return result
