"""Fast incoherent HAADF image simulation: projected Σ Z^n convolved with the probe intensity.

For an incoherent (high-angle annular dark-field) image of thin specimens
I(r) = Σ_j Z_j^n · P(r − r_j), with P the probe intensity (area-normalised) and n ≈ 1.7
(Pennycook & Jesson, Ultramicroscopy 37, 14 (1991); Krivanek et al., Nature 464, 571
(2010)). The sum is evaluated exactly in Fourier space: each column contributes
w_j exp(−2πi k·r_j) (a separable matrix product over columns, so positions are exact to
sub-pixel precision; only frequencies below 2α/λ are needed, since the probe intensity
transfers nothing beyond), thermal smearing is a Gaussian in k, and the probe transfer
comes from ``probe.probe_intensity_transfer``. The field is padded by ``MARGIN_NM`` so the
FFT's wrap-around stays outside it; a grid coarser than the probe's band is oversampled
(odd factor, so the coarse pixel centres are fine-grid points) and read back at the
pixel centres, as a scan samples points.

Geometry: the image is ``pixels`` × ``pixels`` (row = y, column = x) of side ``fov_nm``
centred on sample-frame ``center_nm``; pixel (r, c) is at
(cx − fov/2 + (c + ½) p, cy − fov/2 + (r + ½) p), as in ``ImageRecord.pixel_to_nm``.
Atoms are placed by ``structures.sample_xy_nm`` and tiled over their in-plane lattice
when ``periodic``. Output units: Z^n per nm² (a probe-weighted areal Z^n density).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Literal

import numpy as np
from pymatgen.core import Structure
from scipy import fft as sfft

from autoscope.theory.probe import ProbeSpec, max_sampling_nm, probe_intensity_transfer
from autoscope.theory.structures import sample_xy_nm

log = logging.getLogger(__name__)

MARGIN_NM = 0.6
#: RMS thermal displacement per in-plane axis (nm): ~0.08 Å, typical of MoS2 and perovskites at 300 K
THERMAL_SIGMA_NM = 0.008


def atoms_in_window(
    structure: Structure,
    x_range_nm: tuple[float, float],
    y_range_nm: tuple[float, float],
    *,
    periodic: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sample-frame x, y (nm), z (Å) and atomic numbers of atoms in a window, tiling periodic images.

    Partial occupancies weight the atomic number list by repetition rounded to whole atoms.
    """
    xy = sample_xy_nm(structure)
    z_ang = structure.cart_coords[:, 2]
    numbers = np.array([sum(int(round(o)) * el.Z for el, o in site.species.items()) for site in structure])
    shifts = [np.zeros(2)]
    if periodic:
        m2 = structure.lattice.matrix[:2, :2] / 10.0
        corners = np.array([[x, y] for x in x_range_nm for y in y_range_nm])
        lo_xy, hi_xy = xy.min(axis=0), xy.max(axis=0)
        rel = np.concatenate([corners - lo_xy, corners - hi_xy]) @ np.linalg.inv(m2)
        i0, i1 = int(np.floor(rel[:, 0].min())) - 1, int(np.ceil(rel[:, 0].max())) + 1
        j0, j1 = int(np.floor(rel[:, 1].min())) - 1, int(np.ceil(rel[:, 1].max())) + 1
        if (i1 - i0 + 1) * (j1 - j0 + 1) > 40_000:
            raise ValueError("window too large for the cell's periodic images")
        shifts = [np.array([i, j]) @ m2 for i in range(i0, i1 + 1) for j in range(j0, j1 + 1)]
    out_xy, out_z, out_n = [], [], []
    for s in shifts:
        p = xy + s
        inside = (p[:, 0] >= x_range_nm[0]) & (p[:, 0] <= x_range_nm[1])
        inside &= (p[:, 1] >= y_range_nm[0]) & (p[:, 1] <= y_range_nm[1])
        if inside.any():
            out_xy.append(p[inside])
            out_z.append(z_ang[inside])
            out_n.append(numbers[inside])
    if not out_xy:
        return np.zeros((0, 2)), np.zeros(0), np.zeros(0, int)
    return np.concatenate(out_xy), np.concatenate(out_z), np.concatenate(out_n)


def _columns(xy_nm: np.ndarray, weights: np.ndarray, tol_nm: float = 0.002) -> tuple[np.ndarray, np.ndarray]:
    """Merge atoms sharing a projected position (fewer Fourier terms; the image is the same)."""
    if len(xy_nm) == 0:
        return xy_nm, weights
    keys = np.round(xy_nm / tol_nm).astype(np.int64)
    _, first, inv = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    return xy_nm[first], np.bincount(inv.ravel(), weights)


def _fast_haadf(
    structure: Structure,
    fov_nm: float,
    pixels: int,
    center_nm: tuple[float, float],
    probe: ProbeSpec,
    z_exponent: float,
    thermal_sigma_nm: float,
    periodic: bool,
) -> np.ndarray:
    p = fov_nm / pixels
    f = max(1, math.ceil(p / max_sampling_nm(probe)))
    f += 1 - f % 2  # odd, so coarse pixel centres fall on fine-grid points
    h = p / f
    pad = math.ceil(MARGIN_NM / p)
    n_fine = sfft.next_fast_len((pixels + 2 * pad) * f)
    cx, cy = center_nm
    # fine-grid point 0 sits (f-1)/2 fine steps before the centre of padded coarse pixel 0
    x0 = cx - fov_nm / 2 + 0.5 * p - pad * p - (f - 1) / 2 * h
    y0 = cy - fov_nm / 2 + 0.5 * p - pad * p - (f - 1) / 2 * h
    span = n_fine * h
    xy, _, numbers = atoms_in_window(
        structure, (x0 - h / 2, x0 + span - h / 2), (y0 - h / 2, y0 + span - h / 2), periodic=periodic
    )
    cols, w = _columns(xy, numbers.astype(float) ** z_exponent)
    # the probe transfer vanishes beyond 2α/λ: only those frequencies need the column sum
    k_cut = 2.0 * probe.aperture_k_per_nm + 2.0 / span
    ky, kx = np.fft.fftfreq(n_fine, h), np.fft.rfftfreq(n_fine, h)
    sel_y, sel_x = np.flatnonzero(np.abs(ky) <= k_cut), np.flatnonzero(kx <= k_cut)
    phase_y = np.exp(-2j * np.pi * np.outer(ky[sel_y], cols[:, 1] - y0))
    phase_x = np.exp(-2j * np.pi * np.outer(kx[sel_x], cols[:, 0] - x0))
    spectrum = np.zeros((n_fine, len(kx)), complex)
    spectrum[np.ix_(sel_y, sel_x)] = (phase_y * w) @ phase_x.T  # rows: ky, columns: kx
    tf = probe_intensity_transfer(probe, (n_fine, n_fine), h, extra_sigma_nm=thermal_sigma_nm, half=True)
    fine = sfft.irfft2(spectrum * tf, s=(n_fine, n_fine)) / h**2
    start = pad * f + (f - 1) // 2
    stop = start + pixels * f
    return np.ascontiguousarray(fine[start:stop:f, start:stop:f], dtype=np.float64)


def simulate_haadf(
    structure: Structure,
    *,
    fov_nm: float,
    pixels: int,
    center_nm: tuple[float, float] = (0.0, 0.0),
    probe: ProbeSpec | None = None,
    z_exponent: float = 1.7,
    thermal_sigma_nm: float = THERMAL_SIGMA_NM,
    periodic: bool = True,
    backend: Literal["fast", "abtem"] = "fast",
    **backend_options: Any,
) -> np.ndarray:
    """HAADF image (pixels × pixels, row = y) of ``structure`` seen along c.

    ``backend="fast"``: the incoherent Z^``z_exponent`` model above (units Z^n/nm²).
    ``backend="abtem"``: abTEM multislice (optional extra; ``backend_options`` go to
    ``abtem_backend.simulate_haadf_abtem``), in fractions of the incident beam.
    """
    if fov_nm <= 0 or pixels < 2:
        raise ValueError("fov_nm must be positive and pixels at least 2")
    probe = probe or ProbeSpec()
    if backend == "abtem":
        from autoscope.theory.abtem_backend import simulate_haadf_abtem

        return simulate_haadf_abtem(
            structure,
            fov_nm=fov_nm,
            pixels=pixels,
            center_nm=center_nm,
            probe=probe,
            thermal_sigma_nm=thermal_sigma_nm,
            periodic=periodic,
            **backend_options,
        )
    if backend != "fast":
        raise ValueError(f"unknown backend {backend!r}; use 'fast' or 'abtem'")
    if backend_options:
        raise TypeError(f"the fast backend takes no options {sorted(backend_options)}")
    return _fast_haadf(
        structure,
        fov_nm,
        pixels,
        (float(center_nm[0]), float(center_nm[1])),
        probe,
        z_exponent,
        thermal_sigma_nm,
        periodic,
    )
