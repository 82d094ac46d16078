"""The survey map: typed features of the overview image and the survey spectra.

``SurveyMap`` is what the hypothesis agent sees of a sample (``summary()``), what a plan's
audit and site steps sample from (``population``), and what a verdict groups spectra by
(``area_class``). It is built from the survey image and spectra only (``build_survey_map``
in this package), never from the twin's oracle, so it works on replayed and remote data.
The geometric rules are those of ``classes.py``.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy.spatial import cKDTree

from autoscope.tools.grounding.classes import (
    CLASS_GROUPS,
    EDGE_DEPTH_FRACTION,
    FEATURE_CLASSES,
    INTERFACE_HALF_WIDTH_NM,
    NEAR_MARGIN_NM,
    SITE_CLASSES,
    SITE_RADIUS_FRACTION,
    SUBSTRATE_CLEARANCE_NM,
    UNASSIGNED,
    key_radius_nm,
    members,
)

Shape = Literal["rod", "triangle", "cube", "other"]


class ParticleFeature(BaseModel):
    """One segmented particle, with the descriptors a scientist would use."""

    model_config = ConfigDict(extra="forbid")

    id: int
    shape: Shape
    center_nm: tuple[float, float]
    area_nm2: float
    length_nm: float = Field(description="long axis (rod length, or the longest extent)")
    width_nm: float = Field(description="short axis")
    aspect_ratio: float
    orientation_deg: float = Field(description="long axis from +x toward +y, 0..180")
    size_nm: float = Field(description="rod length, or polygon edge length")
    mean_intensity: float
    key_points_nm: list[tuple[float, float]] = Field(description="rod tips or polygon corners")
    outline_nm: list[tuple[float, float]] = Field(description="convex outline, counter-clockwise")


class LatticeSite(BaseModel):
    model_config = ConfigDict(extra="forbid")

    x_nm: float
    y_nm: float
    sublattice: Literal["bright", "dim"]
    intensity: float
    z: float = Field(description="robust z-score within its sublattice")
    cls: str


class LatticeMap(BaseModel):
    model_config = ConfigDict(extra="forbid")

    nn_distance_nm: float
    sites: list[LatticeSite]
    quality: float = Field(description="fraction of detected columns on the fitted lattice (0..1)")


class InterfaceMap(BaseModel):
    """An interface as a polyline; the signed distance is positive on the dim side."""

    model_config = ConfigDict(extra="forbid")

    points_nm: list[tuple[float, float]] = Field(description="polyline along the interface, in order")
    bright_side_normal: tuple[float, float] = Field(description="unit vector pointing into the bright side")
    contrast: float = Field(description="(bright − dim)/dim mean intensity across it")


class SpectralPeak(BaseModel):
    model_config = ConfigDict(extra="forbid")

    energy_eV: float
    height: float = Field(description="above the local baseline, per incident electron")
    width_eV: float
    snr: float


class SpectralEdge(BaseModel):
    model_config = ConfigDict(extra="forbid")

    onset_eV: float
    jump_ratio: float = Field(description="post-edge over extrapolated background")
    snr: float
    element: str | None = None
    edge: str | None = None


class SurveySpectrum(BaseModel):
    """One survey spectrum: where it was taken, on which class, and what it shows."""

    model_config = ConfigDict(extra="forbid")

    step_id: str
    x_nm: float
    y_nm: float
    cls: str
    peaks: list[SpectralPeak] = []
    edges: list[SpectralEdge] = []


class FlakeMap(BaseModel):
    """Flakes stacked on a film (``flakes.py``): layers per survey pixel, -1 where unstable."""

    model_config = ConfigDict(extra="forbid")

    film_level: float = Field(description="HAADF counts of the bare film")
    step: float = Field(description="HAADF counts one flake adds")
    noise: float = Field(description="noise σ of the film level after the median filter")
    layers: list[list[int]] = Field(
        description="flakes stacked at each pixel (rows × columns); -1: a step edge"
    )

    def classes(self, rows_cols: np.ndarray) -> np.ndarray:
        """The flake class of each (row, col) pixel index (n, 2); unassigned outside or on an edge."""
        grid = np.asarray(self.layers)
        rc = np.rint(np.atleast_2d(rows_cols)).astype(int)
        inside = (rc[:, 0] >= 0) & (rc[:, 0] < grid.shape[0]) & (rc[:, 1] >= 0) & (rc[:, 1] < grid.shape[1])
        n = np.full(len(rc), -1)
        n[inside] = grid[rc[inside, 0], rc[inside, 1]]
        out = np.full(len(rc), UNASSIGNED, dtype=object)
        out[n == 0] = "bare_film"
        out[n == 1] = "single_flake"
        out[n >= 2] = "stacked_flakes"
        return out


class SurveyMap(BaseModel):
    """Everything the grounding found in a survey (see the module doc)."""

    model_config = ConfigDict(extra="forbid")

    fov_nm: float
    center_nm: tuple[float, float]
    pixels: int
    particles: list[ParticleFeature] = []
    lattice: LatticeMap | None = None
    interface: InterfaceMap | None = None
    flakes: FlakeMap | None = None
    spectra: list[SurveySpectrum] = []

    # ------------------------------------------------------------------ classes
    def area_class(self, xy_nm: np.ndarray) -> np.ndarray:
        """The area class (particle zones, substrate, interface sides) of each point (n, 2)."""
        xy = np.atleast_2d(np.asarray(xy_nm, dtype=np.float64))
        out = np.full(len(xy), UNASSIGNED, dtype=object)
        if self.particles:
            out[:] = particle_classes(self.particles, xy)
        if self.flakes is not None:
            rows = len(self.flakes.layers)
            p = self.fov_nm / self.pixels
            x0, y0 = self.center_nm[0] - self.fov_nm / 2, self.center_nm[1] - rows * p / 2
            out[:] = self.flakes.classes(
                np.column_stack([(xy[:, 1] - y0) / p - 0.5, (xy[:, 0] - x0) / p - 0.5])
            )
        if self.interface is not None:
            d = interface_distance(self.interface, xy)
            side = np.where(d < 0, "bright_side", "dim_side")
            side = np.where(np.abs(d) <= INTERFACE_HALF_WIDTH_NM, "interface", side)
            free = out == UNASSIGNED
            out[free] = side[free]
        return out.astype(str)

    def site_positions(self, cls: str) -> np.ndarray:
        """(n, 2) positions of the lattice sites of a site class."""
        if self.lattice is None:
            return np.zeros((0, 2))
        pts = [(s.x_nm, s.y_nm) for s in self.lattice.sites if s.cls == cls]
        return np.asarray(pts, dtype=np.float64).reshape(-1, 2)

    def population(self, name: str, candidates_nm: np.ndarray) -> np.ndarray:
        """(n, 2) positions a class or group stands for: its sites, or the candidates in its area."""
        cls = members(name)
        sites = [self.site_positions(c) for c in cls if c in SITE_CLASSES]
        areas = [c for c in cls if c not in SITE_CLASSES]
        out = list(sites)
        if areas:
            cand = np.atleast_2d(np.asarray(candidates_nm, dtype=np.float64))
            out.append(cand[np.isin(self.area_class(cand), areas)])
        return np.concatenate(out) if out else np.zeros((0, 2))

    def class_of_point(self, x_nm: float, y_nm: float) -> str:
        """The class of one point: its lattice site when within reach of one (unless an interface,
        the larger structure, divides the field), else its area class."""
        if self.lattice is not None and self.lattice.sites and self.interface is None:
            xy = np.array([[s.x_nm, s.y_nm] for s in self.lattice.sites])
            d, i = cKDTree(xy).query([x_nm, y_nm])
            if d <= SITE_RADIUS_FRACTION * self.lattice.nn_distance_nm:
                return self.lattice.sites[int(i)].cls
        return str(self.area_class(np.array([[x_nm, y_nm]]))[0])

    def classes_present(self, candidates_nm: np.ndarray) -> dict[str, int]:
        """Population size of every class with at least one member (sites, or candidates)."""
        counts: dict[str, int] = {}
        area = self.area_class(candidates_nm)
        for c in FEATURE_CLASSES:
            n = len(self.site_positions(c)) if c in SITE_CLASSES else int(np.sum(area == c))
            if n:
                counts[c] = n
        return counts

    def groups_present(self, candidates_nm: np.ndarray) -> dict[str, int]:
        present = self.classes_present(candidates_nm)
        return {
            g: sum(present.get(c, 0) for c in cs)
            for g, cs in CLASS_GROUPS.items()
            if sum(present.get(c, 0) for c in cs) and len([c for c in cs if c in present]) > 1
        }


# ---------------------------------------------------------------------- geometry
def polygon_sdf(poly_nm: np.ndarray, xy_nm: np.ndarray) -> np.ndarray:
    """Signed distance (nm) of points to a convex polygon (counter-clockwise), negative inside."""
    p = np.asarray(poly_nm, dtype=np.float64)
    x, y = xy_nm[:, 0], xy_nm[:, 1]
    inside = np.ones(len(xy_nm), dtype=bool)
    dist = np.full(len(xy_nm), np.inf)
    for p0, p1 in zip(p, np.roll(p, -1, axis=0), strict=True):
        ex, ey = p1 - p0
        wx, wy = x - p0[0], y - p0[1]
        t = np.clip((wx * ex + wy * ey) / max(ex * ex + ey * ey, 1e-12), 0.0, 1.0)
        dist = np.minimum(dist, np.hypot(wx - t * ex, wy - t * ey))
        inside &= (ex * wy - ey * wx) >= 0
    return np.where(inside, -dist, dist)


def particle_classes(particles: list[ParticleFeature], xy: np.ndarray) -> np.ndarray:
    """Area classes of points from particle outlines and key points (the rules of ``classes.py``).

    Only the points inside a particle's bounding box grown by the substrate clearance can be
    within reach of it (a point outside is farther from the outline than from the box), so each
    particle measures distances to those alone."""
    out = np.full(len(xy), "substrate", dtype=object)
    nearest = np.full(len(xy), np.inf)
    reach = max(SUBSTRATE_CLEARANCE_NM, NEAR_MARGIN_NM)
    for p in particles:
        poly = np.asarray(p.outline_nm, dtype=np.float64)
        lo, hi = poly.min(axis=0) - reach, poly.max(axis=0) + reach
        idx = np.flatnonzero(np.all((xy >= lo) & (xy <= hi), axis=1))
        if not idx.size:
            continue
        sub = xy[idx]
        d = polygon_sdf(poly, sub)
        free = (d <= SUBSTRATE_CLEARANCE_NM) & (out[idx] == "substrate")
        out[idx[free]] = UNASSIGNED
        zone = (d <= NEAR_MARGIN_NM) & (d < nearest[idx])
        if not zone.any():
            continue
        nearest[idx[zone]] = d[zone]
        key = np.asarray(p.key_points_nm, dtype=np.float64).reshape(-1, 2)
        r = key_radius_nm(p.size_nm)
        near_key = np.zeros(len(sub), dtype=bool)
        if len(key):
            dk = np.min(
                np.hypot(sub[:, None, 0] - key[None, :, 0], sub[:, None, 1] - key[None, :, 1]), axis=1
            )
            near_key = dk <= r
        if p.shape == "rod":
            cls = np.where(near_key, "rod_tip", "rod_side")
        elif p.shape in ("triangle", "cube"):
            edge = d >= -EDGE_DEPTH_FRACTION * p.size_nm
            cls = np.where(
                near_key, f"{p.shape}_corner", np.where(edge, f"{p.shape}_edge", f"{p.shape}_face")
            )
        else:
            cls = np.full(len(sub), "other_particle", dtype=object)
        out[idx[zone]] = cls[zone]
    return out


def interface_distance(iface: InterfaceMap, xy: np.ndarray) -> np.ndarray:
    """Signed distance (nm) to the interface polyline: negative on the bright side."""
    pts = np.asarray(iface.points_nm, dtype=np.float64)
    best = np.full(len(xy), np.inf)
    for p0, p1 in zip(pts[:-1], pts[1:], strict=True):
        e = p1 - p0
        w = xy - p0
        t = np.clip((w @ e) / max(float(e @ e), 1e-12), 0.0, 1.0)
        best = np.minimum(best, np.hypot(*(w - t[:, None] * e).T))
    n = np.asarray(iface.bright_side_normal, dtype=np.float64)
    n = n / max(math.hypot(*n), 1e-12)
    # side from the nearest polyline point: project onto the bright-side normal
    tree = cKDTree(_densify(pts))
    _, i = tree.query(xy)
    side = (xy - _densify(pts)[i]) @ n
    return np.where(side > 0, -best, best)


def _densify(pts: np.ndarray, step_nm: float = 0.05) -> np.ndarray:
    out = [pts[:1]]
    for p0, p1 in zip(pts[:-1], pts[1:], strict=True):
        n = max(2, int(math.ceil(math.hypot(*(p1 - p0)) / step_nm)))
        out.append(np.linspace(p0, p1, n)[1:])
    return np.concatenate(out)
