"""abTEM multislice HAADF: the high-fidelity backend of ``haadf.simulate_haadf`` (optional extra).

Install with ``pip install 'autoscope[abtem]'``. abTEM is imported only when used; without
it ``simulate_haadf_abtem`` raises ``AbtemNotInstalled`` saying how to install it.

The atoms within the field plus a margin (periodic images tiled as in the fast model)
become an ASE cell that abTEM treats as periodic; a probe of the same voltage,
convergence, defocus and Cs is scanned over the pixel centres of the fast model's grid
and the annular detector integrates ``detector_mrad``. The finite source and the thermal
smearing are applied afterwards as one Gaussian blur (no frozen phonons by default: a
static lattice is an approximation that keeps the run short; pass ``frozen_phonons`` > 0
for thermal diffuse scattering with ``thermal_sigma_nm`` displacements instead).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
from pymatgen.core import Structure
from scipy import ndimage

from autoscope.theory.probe import ProbeSpec

log = logging.getLogger(__name__)


class AbtemNotInstalled(ImportError):
    """abTEM, the optional multislice backend, is not installed."""


def _import_abtem() -> Any:
    try:
        import abtem
    except ImportError as exc:
        raise AbtemNotInstalled(
            "the 'abtem' backend needs abTEM: pip install 'autoscope[abtem]' (or pip install abtem); "
            "backend='fast' needs nothing extra"
        ) from exc
    return abtem


def simulate_haadf_abtem(
    structure: Structure,
    *,
    fov_nm: float,
    pixels: int,
    center_nm: tuple[float, float] = (0.0, 0.0),
    probe: ProbeSpec | None = None,
    thermal_sigma_nm: float = 0.008,
    periodic: bool = True,
    detector_mrad: tuple[float, float] = (70.0, 200.0),
    sampling_A: float = 0.05,
    slice_thickness_A: float = 1.0,
    margin_nm: float = 0.6,
    frozen_phonons: int = 0,
    seed: int = 0,
) -> np.ndarray:
    """Multislice HAADF image (pixels × pixels, row = y), fraction of the incident beam.

    Same geometry as ``haadf.simulate_haadf``. ``sampling_A``: potential grid pitch (Å),
    fine enough for the detector's outer angle; ``slice_thickness_A``: multislice step.
    """
    abtem = _import_abtem()
    from ase import Atoms

    from autoscope.theory.haadf import atoms_in_window

    probe = probe or ProbeSpec()
    lam_A = probe.wavelength_nm * 10.0
    max_mrad = 2.0 / 3.0 * lam_A / (2.0 * sampling_A) * 1e3  # abTEM's antialiasing cut-off
    if detector_mrad[1] > max_mrad:
        raise ValueError(
            f"sampling_A {sampling_A} resolves only {max_mrad:.0f} mrad < outer {detector_mrad[1]}"
        )
    p = fov_nm / pixels
    cx, cy = center_nm
    x0, y0 = cx - fov_nm / 2 - margin_nm, cy - fov_nm / 2 - margin_nm
    side = fov_nm + 2 * margin_nm
    xy, z, numbers = atoms_in_window(structure, (x0, x0 + side), (y0, y0 + side), periodic=periodic)
    if len(numbers) == 0:
        raise ValueError("no atoms in the field")
    z_lo, z_hi = z.min() - 2.0, z.max() + 2.0
    atoms = Atoms(
        numbers=numbers,
        positions=np.column_stack([(xy[:, 0] - x0) * 10, (xy[:, 1] - y0) * 10, z - z_lo]),
        cell=[side * 10, side * 10, z_hi - z_lo],
        pbc=True,
    )
    sources: Any = atoms
    if frozen_phonons > 0:
        sources = abtem.FrozenPhonons(atoms, frozen_phonons, sigmas=thermal_sigma_nm * 10, seed=seed)
    potential = abtem.Potential(sources, sampling=sampling_A, slice_thickness=slice_thickness_A)
    wave = abtem.Probe(
        energy=probe.voltage_kV * 1e3,
        semiangle_cutoff=probe.convergence_mrad,
        defocus=probe.defocus_nm * 10,
        Cs=probe.c3_mm * 1e7,
        C50=probe.c5_mm * 1e7,
    )
    start = (margin_nm + 0.5 * p) * 10
    scan = abtem.GridScan(
        start=(start, start), end=(start + fov_nm * 10, start + fov_nm * 10), gpts=pixels, endpoint=False
    )
    detector = abtem.AnnularDetector(inner=detector_mrad[0], outer=detector_mrad[1])
    log.debug("abTEM: %d atoms, cell %.1f Å, %d² scan positions", len(atoms), side * 10, pixels)
    measurement = wave.scan(potential, scan=scan, detectors=detector).compute(progress_bar=False)
    image = np.asarray(measurement.array, dtype=np.float64)
    if image.ndim == 3:  # frozen phonon configurations
        image = image.mean(axis=0)
    image = image.T  # abTEM is (x, y); ours is (row = y, column = x)
    blur2 = probe.source_sigma_nm**2 + (thermal_sigma_nm**2 if frozen_phonons == 0 else 0.0)
    if blur2 > 0:
        image = ndimage.gaussian_filter(image, math.sqrt(blur2) / p, mode="nearest")
    return image
