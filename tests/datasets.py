"""Test helper: spectrum images recorded on the twin, for the replay backend."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from autoscope.instruments.replay import save_spectrum_image
from autoscope.instruments.sim.scenarios import make_microscope


def record_from_twin(
    path: Path,
    *,
    grid: int = 10,
    fov_nm: float | None = None,
    channels: int = 200,
    spectrum_dwell_s: float = 0.01,
    scenario: str = "plasmonic",
    seed: int = 0,
) -> Path:
    """Record a ``grid`` × ``grid`` spectrum image: one scan, then one spectrum per pixel."""
    twin = make_microscope(scenario, seed=seed)
    caps = twin.capabilities()
    fov_nm = fov_nm or min(caps.max_fov_nm / 4, 40.0)
    window = (caps.energy_min_eV, min(caps.energy_max_eV, caps.energy_min_eV + channels * caps.dispersion_eV))
    twin.unblank_beam()
    image = twin.acquire_image(fov_nm, grid, 1e-5)
    spectra = [
        twin.acquire_spectrum(*image.pixel_to_nm(row, col), spectrum_dwell_s, *window)
        for row in range(grid)
        for col in range(grid)
    ]
    twin.blank_beam()
    return save_spectrum_image(
        path,
        image.data,
        np.stack([s.counts for s in spectra]).reshape(grid, grid, -1),
        pixel_size_nm=image.pixel_size_nm,
        energy_offset_eV=spectra[0].energy_offset_eV,
        dispersion_eV=spectra[0].dispersion_eV,
        dwell_s=image.dwell_s,
        spectrum_dwell_s=spectrum_dwell_s,
        current_pA=image.current_pA,
        origin_x_nm=image.center_x_nm - fov_nm / 2,
        origin_y_nm=image.center_y_nm - fov_nm / 2,
    )
