"""The feature-class vocabulary shared by grounding, hypotheses, verdicts and ground truth.

A hypothesis names where a signal should be ("at rod tips", "at the dimmer sites of the
dim sublattice", "on the bright side of the interface") with one of these names. The
survey map (``tools/grounding``) assigns classes from the survey image alone; the
evaluation's ground truth (``evals/truth.py``) assigns the same names from the twin's
oracle with the same geometric rules written below, so a verdict is scored on what the
sample really is, and a segmentation error counts against the experiment.

Classes are exclusive at this level: a point belongs to at most one class (points in
none of them are ``unassigned``). ``CLASS_GROUPS`` names unions a hypothesis may also use.

Geometric rules (nm; "size" is a rod's length or a polygon's edge):

- particle zone: inside the outline, or outside it by at most ``NEAR_MARGIN_NM`` (the probe
  excites surface plasmons aloof, just outside the metal);
- key points: a rod's two tips (ends of its long axis), a triangle's 3 or a cube's 4 corners;
  a zone point within ``key_radius_nm(size)`` of a key point is ``rod_tip`` / ``*_corner``;
- the rest of a polygon's zone is ``*_edge`` when it lies outside the outline or within
  ``EDGE_DEPTH_FRACTION`` × size inside it, else ``*_face``; the rest of a rod's zone is
  ``rod_side``;
- a particle is a rod when its aspect ratio (long/short axis of its second moments) is at
  least ``ROD_MIN_ASPECT``; otherwise a triangle or a cube (square in projection) by its
  outline;
- ``substrate``: farther than ``SUBSTRATE_CLEARANCE_NM`` from every outline;
- lattice sites: the projected column positions of a two-sublattice crystal; the brighter
  sublattice (heavier columns) is ``sublattice_bright``, the other ``sublattice_dim``; a site
  whose integrated intensity deviates from its sublattice's median by more than
  ``OUTLIER_Z`` robust standard deviations is an outlier class (``bright_site_brighter``:
  a heavier substituent; ``dim_site_dimmer``: a vacancy or a lighter substituent, an empty
  column included; ``dim_site_brighter``: a heavier substituent on the dim sublattice);
  a point belongs to a site when it lies within ``SITE_RADIUS_FRACTION`` × the
  nearest-neighbour distance of it;
- flakes: flat flakes of one thickness stacked on a film, each adding one HAADF step; the
  number stacked at a pixel is ``bare_film`` (0), ``single_flake`` (1) or ``stacked_flakes``
  (2 or more); a pixel on a step edge (its 3 × 3 neighbourhood not all one count) is in none;
- interface: a line separating two regions of different mean intensity; points within
  ``INTERFACE_HALF_WIDTH_NM`` of it are ``interface``, the others ``bright_side`` (the
  heavier, brighter side) or ``dim_side``.
"""

from __future__ import annotations

from typing import Literal, get_args

FeatureClass = Literal[
    "rod_tip",
    "rod_side",
    "triangle_corner",
    "triangle_edge",
    "triangle_face",
    "cube_corner",
    "cube_edge",
    "cube_face",
    "other_particle",
    "substrate",
    "sublattice_bright",
    "sublattice_dim",
    "bright_site_brighter",
    "dim_site_dimmer",
    "dim_site_brighter",
    "bright_side",
    "dim_side",
    "interface",
    "bare_film",
    "single_flake",
    "stacked_flakes",
]
FEATURE_CLASSES: tuple[str, ...] = get_args(FeatureClass)
UNASSIGNED = "unassigned"

#: unions a hypothesis may name as well (a group's name is not itself a class)
ClassGroup = Literal["rod", "triangle", "cube", "particle", "lattice_site", "defect_site", "side", "flake"]
_SHAPES = {
    "rod": ("rod_tip", "rod_side"),
    "triangle": ("triangle_corner", "triangle_edge", "triangle_face"),
    "cube": ("cube_corner", "cube_edge", "cube_face"),
}
_DEFECT_SITES = ("bright_site_brighter", "dim_site_dimmer", "dim_site_brighter")
CLASS_GROUPS: dict[str, tuple[str, ...]] = {
    **_SHAPES,
    "particle": (*(c for cs in _SHAPES.values() for c in cs), "other_particle"),
    "lattice_site": ("sublattice_bright", "sublattice_dim", *_DEFECT_SITES),
    "defect_site": _DEFECT_SITES,
    "side": ("bright_side", "dim_side"),
    "flake": ("single_flake", "stacked_flakes"),
}
#: a class or a group
ClassName = FeatureClass | ClassGroup

#: classes whose members are sites (the probe is parked on a column), not areas of the field
SITE_CLASSES = frozenset(CLASS_GROUPS["lattice_site"])
#: classes at the key points of a particle (a spectrum there sees the strongest corner/tip modes)
KEY_CLASSES = frozenset({"rod_tip", "triangle_corner", "cube_corner"})
#: the key class (tips, corners) of each particle shape
KEY_CLASS_OF_SHAPE: dict[str, str] = {"rod": "rod_tip", "triangle": "triangle_corner", "cube": "cube_corner"}
#: the shape a particle class belongs to
SHAPE_OF: dict[str, str] = {c: shape for shape in ("rod", "triangle", "cube") for c in CLASS_GROUPS[shape]}

NEAR_MARGIN_NM = 12.0
SUBSTRATE_CLEARANCE_NM = 40.0
KEY_RADIUS_FRACTION = 0.2
KEY_RADIUS_MIN_NM = 12.0
KEY_RADIUS_MAX_NM = 30.0
EDGE_DEPTH_FRACTION = 0.15
ROD_MIN_ASPECT = 1.8
OUTLIER_Z = 4.0
SITE_RADIUS_FRACTION = 0.3
INTERFACE_HALF_WIDTH_NM = 1.5

DESCRIPTIONS: dict[str, str] = {
    "rod_tip": "the two ends of a rod (long-axis tips), on the metal and just outside it",
    "rod_side": "the rest of a rod: along its long sides",
    "triangle_corner": "the corners of a triangular prism",
    "triangle_edge": "the edges of a triangular prism, away from its corners",
    "triangle_face": "the inner face of a triangular prism",
    "cube_corner": "the corners of a cube (a square in projection)",
    "cube_edge": "the edges of a cube, away from its corners",
    "cube_face": "the inner face of a cube",
    "other_particle": "a particle that is neither a rod, a triangle nor a cube",
    "substrate": f"the support film, farther than {SUBSTRATE_CLEARANCE_NM:g} nm from every particle",
    "sublattice_bright": "regular columns of the brighter (heavier) sublattice",
    "sublattice_dim": "regular columns of the dimmer (lighter) sublattice",
    "bright_site_brighter": "bright-sublattice columns brighter than their peers (heavier substituent)",
    "dim_site_dimmer": "dim-sublattice columns dimmer than their peers (vacancy or lighter substituent)",
    "dim_site_brighter": "dim-sublattice columns brighter than their peers (heavier substituent)",
    "bright_side": "the brighter (heavier) side of the interface, away from it",
    "dim_side": "the dimmer (lighter) side of the interface, away from it",
    "interface": f"within {INTERFACE_HALF_WIDTH_NM:g} nm of the interface",
    "bare_film": "the support film where no flake lies",
    "single_flake": "one flake on the film (one HAADF step above it)",
    "stacked_flakes": "two or more flakes stacked (two or more HAADF steps)",
}


def key_radius_nm(size_nm: float) -> float:
    """Radius (nm) around a tip or corner that counts as that key point."""
    return float(min(max(KEY_RADIUS_FRACTION * size_nm, KEY_RADIUS_MIN_NM), KEY_RADIUS_MAX_NM))


def members(name: str) -> tuple[str, ...]:
    """The classes a class or group name stands for; ValueError for an unknown name."""
    if name in CLASS_GROUPS:
        return CLASS_GROUPS[name]
    if name in FEATURE_CLASSES:
        return (name,)
    raise ValueError(
        f"unknown feature class {name!r}; known: {', '.join(FEATURE_CLASSES + tuple(CLASS_GROUPS))}"
    )
