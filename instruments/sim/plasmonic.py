"""Plasmonic scenario: Ag nanorods, nanoprisms and nanocubes on a thin support film.

Physics (all noise-free; the twin adds shot noise, drift and the rest):

- HAADF: 1 - exp(-Σ μ_i t_i), μ ∝ n Z^1.7 (incoherent Z-contrast), t the projected
  thickness of metal, support film and contamination; probe blur by a Gaussian of
  the given σ (erf edges for flat prisms, Gauss–Hermite across rod profiles).
- Low-loss EELS per incident electron: zero-loss peak (Gaussian core of the energy
  resolution plus a Lorentzian tail) weighted by exp(-t/λ) (Poisson law of plural
  scattering), Ag bulk plasmon (3.8 eV) and interband onset inside the metal, the
  support's valence loss, and localized surface plasmon (LSP) modes.
- LSP energies from the quasi-static Drude resonance ε(ω) = -ε_env (1/L - 1) with
  depolarisation factors L of spheroids (Gans 1912; Bohren & Huffman 1983, §5.3):
  prolate for rods (aspect ratio ⇒ longitudinal dipole red-shift), oblate for thin
  prisms (edge/thickness; Nelayah et al., Nat. Phys. 3, 348 (2007)); cube corner
  modes from the cube's dipole resonance ε ≈ -3.4 ε_env (Fuchs, PRB 11, 1732 (1975))
  red-shifted by retardation with size (Mazzucco et al., Nano Lett. 12, 1288 (2012)).
  Higher modes (rod m = 2, 3; prism edge and centre; cube edge and face) lie between
  the dipole and the planar surface plasmon, approaching it (Rossouw & Botton, PRL
  106, 066801 (2011)).
- LSP strength vs probe position: the mode's surface-charge pattern (rod mode m:
  cos²(mπ(s+1)/2) along the axis, strongest at the tips; prism/cube corner, edge and
  centre patterns) times an aloof decay K0(q b)/K0(q b0) outside the particle with
  q = 2ω/(vγ) + 2/size (Ritchie 1957; García de Abajo, RMP 82, 209 (2010)).
- Damage: hydrocarbon contamination grows with areal dose, c = c_max (1 - exp(-D/D_sat));
  it adds carbon (HAADF background, valence loss) and damps and broadens LSP peaks.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy import special, stats

from autoscope.instruments.dose import DoseMap
from autoscope.instruments.sim.sample import Sample, SpectrometerSpec, SurveyDefaults

# Ag, Drude with interband screening: bulk plasmon ωp/√ε∞ ≈ 3.8 eV
AG_PLASMA_eV = 8.9
AG_EPS_INF = 5.45
AG_BULK_PLASMON_eV = 3.8
AG_BULK_WIDTH_eV = 0.3
AG_MU_PER_NM = 8.0e-3  # HAADF attenuation per nm (n Z^1.7 scaling; 20 nm Ag ≈ 15 %)
AG_MFP_NM = 90.0  # inelastic mean free path at 200 kV
HAADF_PER_NZ17 = AG_MU_PER_NM / (58.6 * 47**1.7)  # μ = k n Z^1.7, n in atoms/nm³

SUBSTRATES: dict[str, dict[str, float]] = {
    # thickness (nm), atoms/nm³, mean Z^1.7, optical ε, inelastic mfp (nm), valence-loss onset (eV)
    "carbon": {"thickness_nm": 10.0, "n": 100.0, "z17": 6**1.7, "eps": 3.5, "mfp_nm": 160.0, "onset_eV": 1.0},
    "SiN": {"thickness_nm": 15.0, "n": 93.0, "z17": 54.0, "eps": 4.2, "mfp_nm": 120.0, "onset_eV": 5.0},
}
CONTAM_MU_PER_NM = HAADF_PER_NZ17 * 100.0 * 6**1.7
CONTAM_MAX_NM = 8.0
CONTAM_SAT_E_PER_A2 = 5.0e6
ZLP_FWHM_eV = 0.3
ZLP_TAIL_FRACTION = 0.03
COLLECTION_EFFICIENCY = 0.7
SUBSTRATE_COUPLING = 0.3  # share of the support's polarisability felt by a particle lying on it
_GH_X, _GH_W = np.polynomial.hermite_e.hermegauss(5)
_GH_W = _GH_W / _GH_W.sum()


def depolarisation_prolate(aspect_ratio: float) -> float:
    """Depolarisation factor along the long axis of a prolate spheroid (Bohren & Huffman 5.33)."""
    if aspect_ratio <= 1.0 + 1e-9:
        return 1.0 / 3.0
    e = math.sqrt(1.0 - 1.0 / aspect_ratio**2)
    return (1 - e**2) / e**2 * (-1 + math.log((1 + e) / (1 - e)) / (2 * e))


def depolarisation_oblate(aspect_ratio: float) -> float:
    """Depolarisation factor along a long (in-plane) axis of an oblate spheroid (B&H 5.35)."""
    if aspect_ratio <= 1.0 + 1e-9:
        return 1.0 / 3.0
    e = math.sqrt(1.0 - 1.0 / aspect_ratio**2)
    g = math.sqrt((1 - e**2) / e**2)
    return g / (2 * e**2) * (math.pi / 2 - math.atan(g)) - g**2 / 2


def drude_resonance_eV(depolarisation: float, eps_env: float) -> float:
    """Quasi-static LSP energy of Ag: ε∞ - ωp²/ω² = -ε_env (1/L - 1)."""
    return AG_PLASMA_eV / math.sqrt(AG_EPS_INF + eps_env * (1.0 / depolarisation - 1.0))


def surface_plasmon_eV(eps_env: float) -> float:
    """Planar Ag surface plasmon: ε(ω) = -ε_env."""
    return AG_PLASMA_eV / math.sqrt(AG_EPS_INF + eps_env)


def rod_dipole_energy_eV(length_nm: float, diameter_nm: float, eps_env: float) -> float:
    """Longitudinal dipole of a rod, modelled as a prolate spheroid of the same aspect ratio."""
    return drude_resonance_eV(depolarisation_prolate(length_nm / diameter_nm), eps_env)


@dataclasses.dataclass(frozen=True)
class Mode:
    name: str
    energy_eV: float
    width_eV: float
    strength: float  # loss probability per electron at the mode's hot spot (integrated over energy)
    pattern: str  # rod_m1, rod_m2, rod_m3, rod_transverse, corner, edge, centre


@dataclasses.dataclass(frozen=True)
class Particle:
    kind: str  # rod, triangle, cube
    x_nm: float
    y_nm: float
    angle_rad: float
    size_nm: float  # rod length, triangle or cube edge
    width_nm: float  # rod diameter; triangle thickness; cube edge
    thickness_nm: float  # maximum projected thickness
    modes: tuple[Mode, ...]

    @property
    def bound_nm(self) -> float:
        if self.kind == "rod":
            return self.size_nm / 2
        if self.kind == "triangle":
            return self.size_nm / math.sqrt(3)
        return self.size_nm / math.sqrt(2)

    @property
    def near_field_nm(self) -> float:
        return {"rod": self.width_nm, "triangle": self.size_nm / 3, "cube": self.size_nm / 2}[self.kind]

    def local(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c, s = math.cos(self.angle_rad), math.sin(self.angle_rad)
        dx, dy = x - self.x_nm, y - self.y_nm
        return c * dx + s * dy, -s * dx + c * dy

    def to_global(self, u: float, v: float) -> list[float]:
        c, s = math.cos(self.angle_rad), math.sin(self.angle_rad)
        return [self.x_nm + c * u - s * v, self.y_nm + s * u + c * v]

    def vertices_local(self) -> np.ndarray:
        """Polygon corners (k, 2) in the particle frame (triangles and cubes)."""
        k = 3 if self.kind == "triangle" else 4
        circum = self.size_nm / (2 * math.sin(math.pi / k))
        a = np.pi / 2 + 2 * np.pi * np.arange(k) / k if k == 3 else np.pi / 4 + np.pi / 2 * np.arange(k)
        return circum * np.stack([np.cos(a), np.sin(a)], axis=1)

    def sdf(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Signed distance (nm) to the projected outline, negative inside."""
        if self.kind == "rod":
            r = self.width_nm / 2
            a = max(self.size_nm / 2 - r, 0.0)
            return np.hypot(u - np.clip(u, -a, a), v) - r
        verts = self.vertices_local()
        inside = np.ones(u.shape, dtype=bool)
        dist = np.full(u.shape, np.inf)
        for p0, p1 in zip(verts, np.roll(verts, -1, axis=0), strict=True):
            ex, ey = p1 - p0
            wx, wy = u - p0[0], v - p0[1]
            t = np.clip((wx * ex + wy * ey) / (ex * ex + ey * ey), 0.0, 1.0)
            dist = np.minimum(dist, np.hypot(wx - t * ex, wy - t * ey))
            inside &= (ex * wy - ey * wx) >= 0  # counter-clockwise: interior on the left
        return np.where(inside, -dist, dist)

    def thickness(self, u: np.ndarray, v: np.ndarray, sigma_nm: float) -> np.ndarray:
        """Projected metal thickness (nm), blurred by a Gaussian probe of ``sigma_nm``."""
        d = self.sdf(u, v)
        if self.kind != "rod":
            if sigma_nm <= 0:
                return np.where(d <= 0, self.thickness_nm, 0.0)
            return self.thickness_nm * 0.5 * special.erfc(d / (math.sqrt(2) * sigma_nm))
        r = self.width_nm / 2
        axis_dist = d + r
        out = np.zeros_like(d)
        for xk, wk in zip(_GH_X, _GH_W, strict=True):
            dk = np.abs(axis_dist + sigma_nm * xk)
            out += wk * 2 * np.sqrt(np.clip(r * r - dk * dk, 0.0, None))
        return out

    def pattern(self, name: str, u: np.ndarray, v: np.ndarray, d: np.ndarray) -> np.ndarray:
        """Relative excitation strength (0..1) of a mode at particle-frame points."""
        if name.startswith("rod_m"):
            m = int(name[-1])
            s = np.clip(u / (self.size_nm / 2), -1.0, 1.0)
            return np.cos(m * np.pi * (s + 1) / 2) ** 2
        if name == "rod_transverse":
            s = np.clip(u / (self.size_nm / 2), -1.0, 1.0)
            return 1.0 - 0.7 * s**4
        verts = self.vertices_local()
        r_corner = np.min(np.hypot(u[..., None] - verts[:, 0], v[..., None] - verts[:, 1]), axis=-1)
        corner = np.exp(-r_corner / (0.15 * self.size_nm))
        if name == "corner":
            return corner
        if name == "edge":
            return np.exp(-np.abs(d) / (0.08 * self.size_nm + 2.0)) * (1.0 - 0.8 * corner)
        return np.exp(-((np.hypot(u, v) / (0.3 * self.size_nm)) ** 2))  # centre / face

    def hot_spots(self, mode: Mode) -> list[list[float]]:
        """Sample-frame points where ``mode`` is excited most strongly."""
        if mode.pattern.startswith("rod_m"):
            m = int(mode.pattern[-1])
            return [self.to_global((-1 + 2 * j / m) * self.size_nm / 2, 0.0) for j in range(m + 1)]
        if mode.pattern == "rod_transverse":
            return [self.to_global(0.0, self.width_nm / 2), self.to_global(0.0, -self.width_nm / 2)]
        verts = self.vertices_local()
        if mode.pattern == "corner":
            return [self.to_global(*p) for p in verts]
        if mode.pattern == "edge":
            return [self.to_global(*p) for p in (verts + np.roll(verts, -1, axis=0)) / 2]
        return [[self.x_nm, self.y_nm]]


def _width_eV(energy_eV: float) -> float:
    """Intrinsic (Ag Drude ħ/τ ≈ 0.1 eV) plus interband/radiative damping rising with energy."""
    return 0.1 + 0.04 * energy_eV


def _between(e_dipole: float, e_sp: float, frac: float) -> float:
    return e_sp - (e_sp - e_dipole) * frac


def _modes(kind: str, size_nm: float, width_nm: float, eps_env: float) -> tuple[Mode, ...]:
    e_sp = surface_plasmon_eV(eps_env)
    scale = math.sqrt(size_nm / 50.0)
    if kind == "rod":
        l_long = depolarisation_prolate(size_nm / width_nm)
        e1 = drude_resonance_eV(l_long, eps_env)
        spec = [
            ("dipole", e1, 0.03, "rod_m1"),
            ("quadrupole", _between(e1, e_sp, 0.55), 0.015, "rod_m2"),
            ("hexapole", _between(e1, e_sp, 0.35), 0.008, "rod_m3"),
            ("transverse", drude_resonance_eV((1 - l_long) / 2, eps_env), 0.01, "rod_transverse"),
        ]
    elif kind == "triangle":
        e1 = drude_resonance_eV(depolarisation_oblate(0.8 * size_nm / width_nm), eps_env)
        spec = [
            ("corner", e1, 0.025, "corner"),
            ("edge", _between(e1, e_sp, 0.45), 0.015, "edge"),
            ("centre", _between(e1, e_sp, 0.2), 0.01, "centre"),
        ]
    else:
        e1 = drude_resonance_eV(1 / (1 + 3.4), eps_env) / math.sqrt(1 + (size_nm / 150.0) ** 2)
        spec = [
            ("corner", e1, 0.025, "corner"),
            ("edge", _between(e1, e_sp, 0.5), 0.015, "edge"),
            ("face", _between(e1, e_sp, 0.2), 0.01, "centre"),
        ]
    return tuple(Mode(n, e, _width_eV(e), s * scale, p) for n, e, s, p in spec)


class PlasmonicSample(Sample):
    """Ag nanoparticles (rods, triangles, cubes) scattered on a thin carbon or SiN film."""

    name: ClassVar[str] = "plasmonic"
    description: ClassVar[str] = (
        "Ag nanorods, nanoprisms and nanocubes on a thin film: localized surface plasmons in low-loss EELS"
    )

    class Variant(BaseModel):
        """Particle populations of a variant (ranges inclusive; the defaults are the scenario's own).

        The shapes' modes follow from their geometry, so a variant changes the physics, not a label:
        rods of aspect ratio below ~4 put their dipole above 1.7 eV, thick small triangles too."""

        model_config = ConfigDict(frozen=True, extra="forbid")

        counts: dict[Literal["rod", "triangle", "cube"], tuple[int, int]] = Field(
            default_factory=lambda: {"rod": (6, 9), "triangle": (4, 6), "cube": (4, 6)},
            description="how many particles of each shape: (fewest, most)",
        )
        rod_width_nm: tuple[float, float] = (15.0, 35.0)
        rod_aspect: tuple[float, float] = (2.5, 7.0)
        triangle_size_nm: tuple[float, float] = (50.0, 140.0)
        triangle_thickness_nm: tuple[float, float] = (8.0, 15.0)
        cube_size_nm: tuple[float, float] = (40.0, 90.0)

        @model_validator(mode="after")
        def _ordered(self) -> PlasmonicSample.Variant:
            for name in type(self).model_fields:
                v = getattr(self, name)
                for lo, hi in v.values() if isinstance(v, dict) else [v]:
                    if not 0 <= lo <= hi:
                        raise ValueError(f"{name}: need 0 <= low <= high, got ({lo}, {hi})")
            return self

    def __init__(self, rng: np.random.Generator, variant: Variant | None = None) -> None:
        self.variant = variant or self.Variant()
        self.extent_nm = (-500.0, 500.0, -500.0, 500.0)
        self.dose_cell_nm = 2.0
        self.probe_fwhm_nm = 1.0
        self.voltage_kV = 200.0
        self.spectrometer = SpectrometerSpec(
            energy_min_eV=-2.0, energy_max_eV=10.0, dispersion_eV=0.025, default_window_eV=(-1.0, 6.0)
        )
        self.survey = SurveyDefaults(
            fov_nm=1000.0, pixels=512, dwell_s=4e-6, current_pA=50.0, spectrum_dwell_s=0.05
        )
        self.substrate = str(rng.choice(sorted(SUBSTRATES)))
        sub = SUBSTRATES[self.substrate]
        self._sub = sub
        self.eps_env = 1.0 + SUBSTRATE_COUPLING * (sub["eps"] - 1.0)
        gamma = 1.0 + self.voltage_kV / 511.0
        beta = math.sqrt(1.0 - 1.0 / gamma**2)
        self._omega_over_v_per_eV = 1.0 / (197.327 * beta * gamma)  # ω/(vγ) in nm⁻¹ per eV
        self.particles: list[Particle] = []
        self._place(rng)
        self._contam_nm: np.ndarray | None = None
        self._grid: tuple[float, float, float] = (0.0, 0.0, 1.0)

    # ------------------------------------------------------------ structure
    def _place(self, rng: np.random.Generator) -> None:
        x0, x1, y0, y1 = self.extent_nm
        v = self.variant
        kinds = []
        for shape in ("rod", "triangle", "cube"):
            lo, hi = v.counts.get(shape, (0, 0))
            kinds += [shape] * int(rng.integers(lo, hi + 1))
        for kind in kinds:
            if kind == "rod":
                width = rng.uniform(*v.rod_width_nm)
                size, thick, angle = width * rng.uniform(*v.rod_aspect), width, rng.uniform(0, math.pi)
            elif kind == "triangle":
                size, width = rng.uniform(*v.triangle_size_nm), rng.uniform(*v.triangle_thickness_nm)
                thick, angle = width, rng.uniform(0, 2 * math.pi / 3)
            else:
                size = rng.uniform(*v.cube_size_nm)
                width, thick, angle = size, size, rng.uniform(0, math.pi / 2)
            modes = _modes(kind, size, width, self.eps_env)
            for _ in range(500):
                p = Particle(kind, 0.0, 0.0, angle, size, width, thick, modes)
                margin = p.bound_nm + 30.0
                cx, cy = rng.uniform(x0 + margin, x1 - margin), rng.uniform(y0 + margin, y1 - margin)
                if all(
                    math.hypot(cx - q.x_nm, cy - q.y_nm) > p.bound_nm + q.bound_nm + 20.0
                    for q in self.particles
                ):
                    self.particles.append(dataclasses.replace(p, x_nm=cx, y_nm=cy))
                    break

    def _near(self, x: np.ndarray, y: np.ndarray, reach_nm: float):
        """Particles with the indices of the points within ``reach_nm`` of their bounding circle."""
        for p in self.particles:
            r = p.bound_nm + reach_nm
            idx = np.flatnonzero((np.abs(x - p.x_nm) < r) & (np.abs(y - p.y_nm) < r))
            if idx.size:
                yield p, idx

    def metal_thickness_nm(self, x: np.ndarray, y: np.ndarray, sigma_nm: float) -> np.ndarray:
        x, y = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
        t = np.zeros(x.shape)
        for p, idx in self._near(x, y, 5 * sigma_nm + 1.0):
            u, v = p.local(x[idx], y[idx])
            t[idx] += p.thickness(u, v, sigma_nm)
        return t

    def contamination_nm(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Contamination thickness (nm) at sample-frame points."""
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        if self._contam_nm is None:
            return np.zeros(np.broadcast(x, y).shape)
        gx, gy, cell = self._grid
        ny, nx = self._contam_nm.shape
        ix = np.clip(np.floor((x - gx) / cell).astype(int), 0, nx - 1)
        iy = np.clip(np.floor((y - gy) / cell).astype(int), 0, ny - 1)
        return self._contam_nm[iy, ix]

    # ------------------------------------------------------------ Sample API
    def haadf(self, x_nm: np.ndarray, y_nm: np.ndarray, probe_sigma_nm: float) -> np.ndarray:
        x, y = np.asarray(x_nm, dtype=np.float64), np.asarray(y_nm, dtype=np.float64)
        shape = np.broadcast(x, y).shape
        x, y = np.broadcast_to(x, shape).ravel(), np.broadcast_to(y, shape).ravel()
        mu_t = AG_MU_PER_NM * self.metal_thickness_nm(x, y, probe_sigma_nm)
        mu_t += HAADF_PER_NZ17 * self._sub["n"] * self._sub["z17"] * self._sub["thickness_nm"]
        mu_t += CONTAM_MU_PER_NM * self.contamination_nm(x, y)
        return (1.0 - np.exp(-mu_t)).reshape(shape)

    def spectrum(self, x_nm: float, y_nm: float, energy_eV: np.ndarray, probe_sigma_nm: float) -> np.ndarray:
        e = np.asarray(energy_eV, dtype=np.float64)
        disp = float(e[1] - e[0]) if e.size > 1 else self.spectrometer.dispersion_eV
        sig_e = ZLP_FWHM_eV / 2.3548
        # probe footprint: 5×5 Gauss–Hermite points
        gx, gy = np.meshgrid(_GH_X * probe_sigma_nm, _GH_X * probe_sigma_nm)
        gw = np.outer(_GH_W, _GH_W).ravel()
        px, py = x_nm + gx.ravel(), y_nm + gy.ravel()
        t_m = float(gw @ self.metal_thickness_nm(px, py, 0.0))
        t_s = self._sub["thickness_nm"]
        c = float(self.contamination_nm(np.array(x_nm), np.array(y_nm)))
        zero_loss = COLLECTION_EFFICIENCY * math.exp(
            -(t_m / AG_MFP_NM + t_s / self._sub["mfp_nm"] + c / 160.0)
        )

        lo, hi = e - disp / 2, e + disp / 2
        gauss = 0.5 * (special.erf(hi / (math.sqrt(2) * sig_e)) - special.erf(lo / (math.sqrt(2) * sig_e)))
        half = ZLP_FWHM_eV / 2
        lorentz = (np.arctan(hi / half) - np.arctan(lo / half)) / math.pi
        out = zero_loss * ((1 - ZLP_TAIL_FRACTION) * gauss + ZLP_TAIL_FRACTION * lorentz)

        pos = e > 0
        # metal: bulk plasmon and interband transitions (single scattering, Poisson law)
        if t_m > 0:
            out += (
                zero_loss
                * 0.55
                * t_m
                / AG_MFP_NM
                * special.voigt_profile(e - AG_BULK_PLASMON_eV, sig_e, AG_BULK_WIDTH_eV / 2)
                * disp
            )
            out += zero_loss * 0.25 * t_m / AG_MFP_NM * stats.gamma.pdf(e - 3.9, a=1.5, scale=2.0) * disp
        # support film and contamination: valence loss from the band/pseudo-gap onset
        out[pos] += (
            zero_loss
            * 0.3
            * t_s
            / self._sub["mfp_nm"]
            * stats.gamma.pdf(e[pos] - self._sub["onset_eV"], a=2.5, scale=2.0)
            * disp
        )
        if c > 0:
            out[pos] += zero_loss * 0.3 * c / 160.0 * stats.gamma.pdf(e[pos] - 1.0, a=2.5, scale=2.0) * disp

        # localized surface plasmons
        damp, broaden = math.exp(-c / 4.0), 1.0 + 0.1 * c
        for p, idx in self._near(px, py, 250.0):
            u, v = p.local(px[idx], py[idx])
            d = p.sdf(u, v)
            w = gw[idx]
            for mode in p.modes:
                q = 2.0 * mode.energy_eV * self._omega_over_v_per_eV + 2.0 / p.near_field_nm
                b0 = 0.5
                outside = special.k0(q * (np.clip(d, 0.0, None) + b0)) / special.k0(q * b0)
                radial = np.where(d > 0, outside, 0.5 + 0.5 * np.exp(np.clip(d, None, 0.0) / 2.0))
                amp = mode.strength * float(w @ (p.pattern(mode.pattern, u, v, d) * radial))
                if amp > 1e-9:
                    line = special.voigt_profile(e - mode.energy_eV, sig_e, mode.width_eV * broaden / 2)
                    out += zero_loss * amp * damp * line * disp
        return out

    def apply_damage(self, dose: DoseMap, rng: np.random.Generator) -> None:
        """Hydrocarbon contamination builds up where the beam has been (monotone in dose)."""
        self._grid = (dose.x_min_nm, dose.y_min_nm, dose.cell_nm)
        self._contam_nm = CONTAM_MAX_NM * -np.expm1(-dose.e_per_A2 / CONTAM_SAT_E_PER_A2)

    def truth(self) -> dict[str, Any]:
        parts = []
        for i, p in enumerate(self.particles):
            parts.append(
                {
                    "id": i,
                    "kind": p.kind,
                    "center_nm": [p.x_nm, p.y_nm],
                    "orientation_deg": math.degrees(p.angle_rad),
                    "size_nm": p.size_nm,
                    "width_nm": p.width_nm,
                    "thickness_nm": p.thickness_nm,
                    "bound_radius_nm": p.bound_nm,
                    "outline_nm": [p.to_global(*q) for q in p.vertices_local()] if p.kind != "rod" else None,
                    "modes": [
                        {
                            "name": m.name,
                            "energy_eV": m.energy_eV,
                            "width_eV": m.width_eV,
                            "strength": m.strength,
                            "hot_spots_nm": p.hot_spots(m),
                        }
                        for m in p.modes
                    ],
                }
            )
        return {
            "scenario": self.name,
            "metal": "Ag",
            "substrate": self.substrate,
            "bulk_plasmon_eV": AG_BULK_PLASMON_eV,
            "surface_plasmon_eV": surface_plasmon_eV(self.eps_env),
            "particles": parts,
        }
