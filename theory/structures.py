"""Atomic models of the scenarios' materials and the candidate defect models a hypothesis can name.

Every builder returns a pymatgen ``Structure`` (Å) whose c axis is the beam direction
(perpendicular to a and b), so images are projections along c. A structure carries
``properties["origin_nm"]``: the sample-frame position (nm) of its Cartesian origin, so
sample-frame x, y = cart[:, :2] / 10 + origin. ``mos2_monolayer(supercell=(38, 22),
center_nm=(0, 0))`` reproduces the twin's tmd-defects supercell site for site.

Builders: ``mos2_monolayer`` (1H MoS2), ``oxide_interface`` (LaTiO3/SrTiO3 stacked along
x, seen along [001]), ``nanoparticle`` (fcc clusters carved by shape). Defects:
``substitute``, ``vacancy``, ``candidate_models``. Round-trips: ``to_cif``/``from_cif``,
``to_json``/``from_json``; ``structure_hash`` keys cached energies.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, PrivateAttr, model_validator
from pymatgen.core import Lattice, Structure
from pymatgen.io.cif import CifFile, CifParser, CifWriter

log = logging.getLogger(__name__)

ORIGIN_KEY = "origin_nm"
MOS2_A_ANG = 3.16
MOS2_S_HEIGHT_ANG = 3.17  # vertical S–S distance within the monolayer
SRTIO3_A_ANG = 3.905
#: fcc lattice constants at room temperature (Å; Kittel, Introduction to Solid State Physics, 8th ed.)
FCC_A_ANG = {"Ag": 4.086, "Au": 4.078, "Cu": 3.615, "Al": 4.050, "Pt": 3.924, "Pd": 3.891, "Ni": 3.524}
MAX_PARTICLE_ATOMS = 60_000
_ORIGIN_COMMENT = "# autoscope origin_nm"


# ----------------------------------------------------------------------------- frame helpers
def origin_nm(structure: Structure) -> tuple[float, float]:
    """Sample-frame position (nm) of the structure's Cartesian origin (0, 0 when unset)."""
    x, y = (structure.properties or {}).get(ORIGIN_KEY, (0.0, 0.0))
    return float(x), float(y)


def sample_xy_nm(structure: Structure) -> np.ndarray:
    """(n, 2) sample-frame x, y (nm) of every site."""
    return structure.cart_coords[:, :2] / 10.0 + np.asarray(origin_nm(structure))


def _with_origin(structure: Structure, origin: Sequence[float]) -> Structure:
    structure.properties = {**(structure.properties or {}), ORIGIN_KEY: [float(origin[0]), float(origin[1])]}
    return structure


def _check_beam_axis(structure: Structure) -> None:
    m = structure.lattice.matrix
    if abs(m[0, 2]) > 1e-6 or abs(m[1, 2]) > 1e-6 or abs(m[2, 0]) > 1e-6 or abs(m[2, 1]) > 1e-6:
        raise ValueError("the lattice must have a and b in the xy plane and c along z (the beam)")


def sites_near(
    structure: Structure, x_nm: float, y_nm: float, radius_nm: float, species: str | None = None
) -> list[int]:
    """Indices of sites whose projected (minimum-image) distance to (x_nm, y_nm) is ≤ ``radius_nm``,
    nearest first; only sites of element ``species`` when given."""
    _check_beam_axis(structure)
    d = _projected_distance_nm(structure, x_nm, y_nm)
    idx = np.flatnonzero(d <= radius_nm)
    if species is not None:
        idx = np.array([i for i in idx if structure[i].specie.symbol == species], dtype=int)
    return [int(i) for i in idx[np.argsort(d[idx], kind="stable")]]


def site_near(structure: Structure, x_nm: float, y_nm: float, species: str | None = None) -> int:
    """Index of the site nearest in projection to the sample-frame point (x_nm, y_nm).

    Distances use the minimum image over the in-plane lattice vectors; ``species``
    restricts the search to one element. Of a column's atoms the first listed wins.
    """
    _check_beam_axis(structure)
    d = _projected_distance_nm(structure, x_nm, y_nm)
    if species is not None:
        mask = np.array([s.specie.symbol == species for s in structure])
        if not mask.any():
            raise ValueError(f"no {species} site in the structure")
        d = np.where(mask, d, np.inf)
    return int(np.argmin(d))


def _projected_distance_nm(structure: Structure, x_nm: float, y_nm: float) -> np.ndarray:
    m2 = structure.lattice.matrix[:2, :2] / 10.0  # rows: a, b in nm
    delta = sample_xy_nm(structure) - [x_nm, y_nm]
    frac = delta @ np.linalg.inv(m2)
    frac -= np.round(frac)
    best = np.full(len(delta), np.inf)
    for i in (-1, 0, 1):  # skewed cells: the nearest image may be one cell beyond the rounded one
        for j in (-1, 0, 1):
            best = np.minimum(best, np.linalg.norm((frac + [i, j]) @ m2, axis=1))
    return best


# ----------------------------------------------------------------------------- builders
def mos2_monolayer(
    supercell: tuple[int, int] = (1, 1),
    *,
    a_A: float = MOS2_A_ANG,
    s_height_A: float = MOS2_S_HEIGHT_ANG,
    vacuum_A: float = 20.0,
    orthogonal: bool = True,
    center_nm: tuple[float, float] | None = None,
) -> Structure:
    """1H-MoS2 monolayer (Mo at z = c/2, S above and below), ``supercell`` repeats of the cell.

    ``orthogonal``: repeat the a × √3a rectangular cell (6 atoms, as the twin does);
    otherwise the hexagonal primitive cell. ``vacuum_A`` is the c spacing. ``center_nm``:
    place the cell so that its centre lies at that sample-frame point, snapped to a lattice
    translation so the atoms sit where the twin's lattice has them; None puts the Cartesian
    origin at the sample origin.
    """
    n, m = (int(v) for v in supercell)
    if n < 1 or m < 1:
        raise ValueError(f"supercell must be positive, got {supercell}")
    dz = s_height_A / 2 / vacuum_A
    s = Structure(
        Lattice.hexagonal(a_A, vacuum_A),
        ["Mo", "S", "S"],
        [[1 / 3, 2 / 3, 0.5], [2 / 3, 1 / 3, 0.5 + dz], [2 / 3, 1 / 3, 0.5 - dz]],
    )
    if orthogonal:
        s.make_supercell([[1, 0, 0], [1, 2, 0], [0, 0, 1]])
    s.make_supercell([n, m, 1])
    origin = np.zeros(2)
    if center_nm is not None:
        half = (s.lattice.matrix[0, :2] + s.lattice.matrix[1, :2]) / 20.0
        want = np.asarray(center_nm, float) - half
        prim = np.array([[a_A, 0.0], [-a_A / 2, a_A * math.sqrt(3) / 2]]) / 10.0  # rows a1, a2 (nm)
        origin = np.round(want @ np.linalg.inv(prim)) @ prim
    return _with_origin(s, origin)


def oxide_interface(
    n_lto: int = 4,
    n_sto: int = 4,
    *,
    width_cells: int = 2,
    thickness_cells: int = 1,
    a_A: float = SRTIO3_A_ANG,
    center_nm: tuple[float, float] = (0.0, 0.0),
) -> Structure:
    """LaTiO3/SrTiO3 superlattice stacked along x, seen along [001] (c = beam).

    ``n_lto`` LaTiO3 cells (x < interface) then ``n_sto`` SrTiO3 cells, periodic along x
    (so two interfaces: at the cell centre and at its edge); ``width_cells`` along y and
    ``thickness_cells`` along the beam. Both share the cubic SrTiO3 lattice (LaTiO3
    strained in-plane, octahedral tilts ignored), as in the twin. The LaTiO3/SrTiO3
    boundary sits at sample x = ``center_nm[0]``.
    """
    if min(n_lto, n_sto, width_cells, thickness_cells) < 1:
        raise ValueError("every cell count must be at least 1")
    nx = n_lto + n_sto
    species: list[str] = []
    frac: list[list[float]] = []
    basis = [((0, 0, 0), "A"), ((0.5, 0.5, 0.5), "Ti"), ((0.5, 0.5, 0), "O"), ((0.5, 0, 0.5), "O")]
    basis.append(((0, 0.5, 0.5), "O"))
    for i in range(nx):
        a_site = "La" if i < n_lto else "Sr"
        for j in range(width_cells):
            for k in range(thickness_cells):
                for (u, v, w), el in basis:
                    species.append(a_site if el == "A" else el)
                    frac.append([(i + u) / nx, (j + v) / width_cells, (k + w) / thickness_cells])
    lat = Lattice.orthorhombic(nx * a_A, width_cells * a_A, thickness_cells * a_A)
    s = Structure(lat, species, frac)
    origin = (center_nm[0] - n_lto * a_A / 10.0, center_nm[1] - width_cells * a_A / 20.0)
    return _with_origin(s, origin)


def _fcc_points(a_A: float, half_extent_A: float, rotation: np.ndarray | None) -> np.ndarray:
    n = int(math.ceil(half_extent_A * math.sqrt(3) / a_A)) + 1
    g = np.arange(-n, n + 1)
    cells = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3).astype(float)
    basis = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    pts = (cells[:, None, :] + basis[None]).reshape(-1, 3) * a_A
    return pts @ rotation.T if rotation is not None else pts


def _rotation_111_to_z() -> np.ndarray:
    """Rotation taking [111] to z and [1-10] to x (a {111} plate lies in the image plane)."""
    x = np.array([1.0, -1.0, 0.0]) / math.sqrt(2)
    z = np.ones(3) / math.sqrt(3)
    return np.vstack([x, np.cross(z, x), z])


def nanoparticle(
    kind: Literal["sphere", "cube", "rod", "triangle", "octahedron"],
    size_nm: float,
    metal: str = "Ag",
    *,
    aspect_ratio: float = 3.0,
    vacuum_A: float = 10.0,
    center_nm: tuple[float, float] = (0.0, 0.0),
) -> Structure:
    """An fcc ``metal`` cluster carved by shape, centred at ``center_nm``, in a vacuum box.

    ``size_nm`` is the largest dimension: sphere diameter, cube edge, rod length (a
    spherocylinder along x of diameter size/aspect_ratio), triangle edge (a {111} plate of
    thickness size/aspect_ratio), octahedron vertex-to-vertex. Cube and rod are [001]
    along the beam, the triangle [111]. Kept small: over ``MAX_PARTICLE_ATOMS`` atoms is an
    error.
    """
    if metal not in FCC_A_ANG:
        raise ValueError(f"no fcc lattice constant for {metal!r}; known: {', '.join(FCC_A_ANG)}")
    if size_nm <= 0 or aspect_ratio < 1:
        raise ValueError("size_nm must be positive and aspect_ratio at least 1")
    a = FCC_A_ANG[metal]
    half = size_nm * 5.0  # Å
    pts = _fcc_points(a, half, _rotation_111_to_z() if kind == "triangle" else None)
    x, y, z = pts.T
    eps = 1e-6
    if kind == "sphere":
        keep = np.linalg.norm(pts, axis=1) <= half + eps
    elif kind == "cube":
        keep = np.max(np.abs(pts), axis=1) <= half + eps
    elif kind == "octahedron":
        keep = np.abs(x) + np.abs(y) + np.abs(z) <= half + eps
    elif kind == "rod":
        r = half / aspect_ratio
        xc = np.clip(x, -(half - r), half - r)
        keep = np.sqrt((x - xc) ** 2 + y**2 + z**2) <= r + eps
    elif kind == "triangle":
        t = half / aspect_ratio
        circ = 2 * half / math.sqrt(3)  # circumradius of an equilateral triangle of edge 2·half
        normals = [(0.0, -1.0), (math.sqrt(3) / 2, 0.5), (-math.sqrt(3) / 2, 0.5)]
        keep = np.abs(z) <= t + eps
        for nx, ny in normals:
            keep &= x * nx + y * ny <= circ / 2 + eps
    else:
        raise ValueError(f"unknown particle kind {kind!r}")
    pts = pts[keep]
    if len(pts) > MAX_PARTICLE_ATOMS:
        raise ValueError(f"{len(pts)} atoms exceed {MAX_PARTICLE_ATOMS}; choose a smaller size_nm")
    lo, hi = pts.min(axis=0) - vacuum_A, pts.max(axis=0) + vacuum_A
    box = hi - lo
    s = Structure(Lattice.orthorhombic(*box), [metal] * len(pts), pts - lo, coords_are_cartesian=True)
    log.debug("%s %s of %.2f nm: %d atoms", metal, kind, size_nm, len(pts))
    return _with_origin(s, (center_nm[0] + lo[0] / 10.0, center_nm[1] + lo[1] / 10.0))


# ----------------------------------------------------------------------------- defects
def substitute(structure: Structure, site_index: int, species: str) -> Structure:
    """A copy of ``structure`` with the site ``site_index`` occupied by ``species``."""
    s = structure.copy()
    s.replace(int(site_index), species)
    return s


def vacancy(structure: Structure, site_index: int) -> Structure:
    """A copy of ``structure`` without the site ``site_index``."""
    s = structure.copy()
    s.remove_sites([int(site_index)])
    return s


class DefectSpec(BaseModel):
    """A point defect a hypothesis can name: ``W`` substituting ``Mo``, or a vacancy of ``S``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["substitution", "vacancy"]
    host: str
    species: str | None = None

    @model_validator(mode="after")
    def _species(self) -> DefectSpec:
        if (self.kind == "substitution") != (self.species is not None):
            raise ValueError("a substitution names its species; a vacancy does not")
        return self

    @property
    def label(self) -> str:
        """Kröger–Vink-like short label: ``W_Mo``, ``V_S``."""
        return f"{self.species}_{self.host}" if self.kind == "substitution" else f"V_{self.host}"

    def apply(self, structure: Structure, site_index: int) -> Structure:
        """The defect at ``site_index``; the site must hold ``host``."""
        found = structure[int(site_index)].specie.symbol
        if found != self.host:
            raise ValueError(f"site {site_index} holds {found}, not {self.host}")
        if self.kind == "substitution":
            return substitute(structure, site_index, str(self.species))
        return vacancy(structure, site_index)

    def describe(self, site_index: int, x_nm: float, y_nm: float) -> str:
        what = f"{self.species} substituting {self.host}" if self.species else f"{self.host} vacancy"
        return f"{what} at site {site_index} (x = {x_nm:.3f} nm, y = {y_nm:.3f} nm)"


class CandidateModel(BaseModel):
    """One atomic model a hypothesis can cite: a base structure with (at most) one named defect."""

    model_config = ConfigDict(frozen=True)

    label: str
    description: str
    defect: DefectSpec | None = None
    site_index: int | None = None
    x_nm: float | None = None
    y_nm: float | None = None
    structure_hash: str
    structure: dict[str, Any]  # pymatgen ``Structure.as_dict()``
    _cached: Structure | None = PrivateAttr(default=None)

    def to_structure(self) -> Structure:
        """The model's structure (built once, then shared: copy it before changing it)."""
        if self._cached is None:
            self._cached = Structure.from_dict(self.structure)
        return self._cached

    @classmethod
    def of(cls, structure: Structure, **fields: Any) -> CandidateModel:
        """A candidate holding ``structure`` (hash and dict filled in)."""
        model = cls(structure_hash=structure_hash(structure), structure=structure.as_dict(), **fields)
        model._cached = structure
        return model


def pristine_model(base: Structure) -> CandidateModel:
    """The defect-free base structure as a candidate."""
    return CandidateModel.of(base, label="pristine", description="pristine lattice (no defect at the site)")


def candidate_models(
    base: Structure, defect: DefectSpec, sites: Sequence[int], *, include_pristine: bool = False
) -> list[CandidateModel]:
    """One candidate per site in ``sites``: ``defect`` applied to ``base`` there (pristine first if asked)."""
    out = [pristine_model(base)] if include_pristine else []
    xy = sample_xy_nm(base)
    for i in sites:
        s = defect.apply(base, int(i))
        x, y = (float(v) for v in xy[int(i)])
        out.append(
            CandidateModel.of(
                s,
                label=f"{defect.label}@{int(i)}",
                description=defect.describe(int(i), x, y),
                defect=defect,
                site_index=int(i),
                x_nm=x,
                y_nm=y,
            )
        )
    return out


# ----------------------------------------------------------------------------- round trips
def to_cif(structure: Structure) -> str:
    """CIF text (P1, all sites in order); the sample-frame origin rides along as a comment."""
    x, y = origin_nm(structure)
    return f"{_ORIGIN_COMMENT} {x!r} {y!r}\n{CifWriter(structure)}"


def from_cif(text: str) -> Structure:
    """Structure from ``to_cif`` text (or any P1 CIF), sites in the file's order; origin 0, 0 if absent."""
    parsed = CifParser.from_str(text, frac_tolerance=0.0).parse_structures(primitive=False, on_error="raise")[
        0
    ]
    block = next(iter(CifFile.from_str(text).data.values())).data
    rows = np.array([[float(block[f"_atom_site_fract_{ax}"][i]) for ax in "xyz"] for i in range(len(parsed))])
    d = np.mod(rows[:, None, :] - parsed.frac_coords[None, :, :] + 0.5, 1.0) - 0.5
    order = np.argmin(np.linalg.norm(d, axis=2), axis=1)  # parser groups by species: restore row order
    if len(set(order.tolist())) == len(parsed):
        parsed = Structure.from_sites([parsed[int(i)] for i in order])
    m = re.search(rf"^{_ORIGIN_COMMENT} (\S+) (\S+)$", text, flags=re.M)
    return _with_origin(parsed, (float(m.group(1)), float(m.group(2))) if m else (0.0, 0.0))


def to_json(structure: Structure) -> str:
    """JSON of pymatgen's ``as_dict`` (origin included, in ``properties``)."""
    return json.dumps(structure.as_dict())


def from_json(text: str) -> Structure:
    return Structure.from_dict(json.loads(text))


def structure_hash(structure: Structure, *, decimals: int = 4) -> str:
    """SHA-256 of the lattice parameters and the sorted (species, fractional position) list.

    Independent of site order, lattice orientation and the sample-frame origin; positions
    are rounded to ``decimals`` (fractional, wrapped into [0, 1)), lattice lengths (Å) and
    angles (°) to ``decimals``.
    """
    # the offset keeps rounding boundaries off "round" coordinates such as 0.57925, where file
    # precision (1e-8) could otherwise flip the last digit
    offset = 0.37 * 10.0**-decimals
    frac = np.round(np.mod(structure.frac_coords + offset, 1.0), decimals) % 1.0 + 0.0  # no -0.0
    species = [str(site.species) for site in structure]
    rows = sorted(zip(species, (tuple(f) for f in frac.tolist()), strict=True))
    payload = {
        "lattice": [
            f"{v:.{decimals}f}" for v in np.round(np.add(structure.lattice.parameters, offset), decimals)
        ],
        "sites": [[sp, [f"{v:.{decimals}f}" for v in f]] for sp, f in rows],
        "charge": structure.charge,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
