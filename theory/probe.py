"""The STEM probe: a convergent aberrated wave, its intensity, and its transfer function.

ψ(k) = A(k) · exp(−i χ(k)) with A the condenser aperture (λ|k| ≤ α) and the aberration
function χ(k) = 2π/λ · (½ C1 θ² + ¼ C3 θ⁴ + ⅙ C5 θ⁶), θ = λ|k|, C1 = −defocus
(abTEM's convention: positive defocus is underfocus). The probe is ψ(r) = F⁻¹[ψ(k)], its
intensity |ψ(r)|²; a finite effective source (partial spatial coherence) blurs the
intensity by a Gaussian of ``source_fwhm_nm``. The wavelength is relativistic:
λ = h / √(2 m₀ e V (1 + e V / 2 m₀ c²)) (Kirkland, Advanced Computing in Electron
Microscopy, 2nd ed., eq. 2.5), 0.04176 Å at 80 kV.

An aberration-free 80 kV, 30 mrad probe has an Airy core of FWHM 1.029 λ / 2α ≈ 0.072 nm;
with the default 0.05 nm source it is ≈ 0.085 nm, as on a corrected instrument.
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

PLANCK_J_S = 6.62607015e-34
ELECTRON_MASS_KG = 9.1093837015e-31
ELEMENTARY_CHARGE_C = 1.602176634e-19
LIGHT_SPEED_M_S = 299792458.0
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


def wavelength_nm(voltage_kV: float) -> float:
    """Relativistic electron wavelength (nm) at accelerating voltage ``voltage_kV``."""
    ev = ELEMENTARY_CHARGE_C * voltage_kV * 1e3
    p = math.sqrt(2.0 * ELECTRON_MASS_KG * ev * (1.0 + ev / (2.0 * ELECTRON_MASS_KG * LIGHT_SPEED_M_S**2)))
    return PLANCK_J_S / p * 1e9


class ProbeSpec(BaseModel):
    """Electron-optical settings that shape the probe."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    voltage_kV: float = Field(80.0, gt=0, le=1000, description="accelerating voltage (kV)")
    convergence_mrad: float = Field(30.0, gt=0, le=200, description="probe semi-angle (mrad)")
    defocus_nm: float = Field(0.0, description="defocus (nm), positive = underfocus (C1 = −defocus)")
    c3_mm: float = Field(0.0, description="third-order spherical aberration Cs (mm)")
    c5_mm: float = Field(0.0, description="fifth-order spherical aberration (mm)")
    source_fwhm_nm: float = Field(0.05, ge=0, description="effective source size, Gaussian FWHM (nm)")

    @property
    def wavelength_nm(self) -> float:
        return wavelength_nm(self.voltage_kV)

    @property
    def aperture_k_per_nm(self) -> float:
        """Radius of the aperture in reciprocal space, α/λ (nm⁻¹)."""
        return self.convergence_mrad * 1e-3 / self.wavelength_nm

    @property
    def source_sigma_nm(self) -> float:
        return self.source_fwhm_nm / FWHM_PER_SIGMA


def aberration_phase(probe: ProbeSpec, k_nm: np.ndarray) -> np.ndarray:
    """χ(k) (rad) at spatial frequency magnitude ``k_nm`` (nm⁻¹)."""
    lam = probe.wavelength_nm
    theta2 = (lam * np.asarray(k_nm, float)) ** 2
    c1, c3, c5 = -probe.defocus_nm, probe.c3_mm * 1e6, probe.c5_mm * 1e6
    return 2.0 * math.pi / lam * (0.5 * c1 * theta2 + 0.25 * c3 * theta2**2 + c5 * theta2**3 / 6.0)


def _k_grid(shape: tuple[int, int], sampling_nm: float) -> tuple[np.ndarray, np.ndarray]:
    ky = np.fft.fftfreq(shape[0], sampling_nm)
    kx = np.fft.fftfreq(shape[1], sampling_nm)
    return ky[:, None], kx[None, :]


def max_sampling_nm(probe: ProbeSpec) -> float:
    """Coarsest grid pitch that holds the probe intensity's full band (2 α/λ) without aliasing."""
    return 1.0 / (4.0 * probe.aperture_k_per_nm)


def probe_intensity_transfer(
    probe: ProbeSpec,
    shape: tuple[int, int],
    sampling_nm: float,
    extra_sigma_nm: float = 0.0,
    *,
    half: bool = False,
) -> np.ndarray:
    """FFT of the probe intensity on a periodic grid (value 1 at k = 0), source blur included.

    Multiply the FFT of an object by this and invert to convolve it with the probe.
    ``extra_sigma_nm`` adds a further Gaussian blur (thermal smearing of the columns).
    ``half``: the ``rfft2`` half-spectrum (columns kx ≥ 0) instead of the full ``fft2``.
    It vanishes beyond |k| = 2α/λ (the aperture's autocorrelation).
    """
    ky, kx = _k_grid(shape, sampling_nm)
    k = np.sqrt(kx**2 + ky**2)
    aperture = k <= probe.aperture_k_per_nm
    if aperture.sum() < 5:
        raise ValueError(
            f"grid of {shape} at {sampling_nm} nm cannot hold a {probe.convergence_mrad} mrad probe"
        )
    psi_k = np.where(aperture, np.exp(-1j * aberration_phase(probe, k)), 0.0)
    intensity = np.abs(np.fft.ifft2(psi_k)) ** 2
    intensity /= intensity.sum()
    sigma2 = probe.source_sigma_nm**2 + extra_sigma_nm**2
    if half:
        kh = np.sqrt(ky**2 + np.fft.rfftfreq(shape[1], sampling_nm)[None, :] ** 2)
        return np.fft.rfft2(intensity) * np.exp(-2.0 * math.pi**2 * sigma2 * kh**2)
    return np.fft.fft2(intensity) * np.exp(-2.0 * math.pi**2 * sigma2 * k**2)


def probe_intensity(probe: ProbeSpec, pixels: int = 256, sampling_nm: float | None = None) -> np.ndarray:
    """Probe intensity (pixels × pixels, centred at pixel pixels // 2, summing to 1)."""
    h = sampling_nm or max_sampling_nm(probe) / 2.0
    tf = probe_intensity_transfer(probe, (pixels, pixels), h)
    img = np.fft.fftshift(np.real(np.fft.ifft2(tf)))
    return img / img.sum()


def probe_fwhm_nm(probe: ProbeSpec, *, fov_nm: float = 2.0) -> float:
    """Full width at half maximum of the probe intensity (nm), from its radial profile."""
    h = min(max_sampling_nm(probe) / 4.0, 0.005)
    n = int(math.ceil(fov_nm / h / 2.0)) * 2
    img = probe_intensity(probe, n, h)
    row = img[n // 2, n // 2 :]
    half = row[0] / 2.0
    i = int(np.argmax(row < half))
    if i == 0:
        raise ValueError("probe wider than the field used to measure it")
    r0, r1 = (i - 1) * h, i * h  # linear interpolation of the half-maximum crossing
    r = r0 + (row[i - 1] - half) / (row[i - 1] - row[i]) * (r1 - r0)
    return 2.0 * r
