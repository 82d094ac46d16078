"""What the hypothesis agent reads of a survey map: text a scientist would write in a notebook,
and where the survey spectra should go (one on each kind of feature)."""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from autoscope.tools.grounding.classes import DESCRIPTIONS
from autoscope.tools.grounding.model import SurveyMap, interface_distance


def _range(values: list[float], unit: str = "") -> str:
    if not values:
        return "–"
    lo, hi = min(values), max(values)
    return f"{lo:.3g}{unit}" if abs(hi - lo) < 1e-9 else f"{lo:.3g}–{hi:.3g}{unit}"


def map_summary(smap: SurveyMap, candidates_nm: np.ndarray) -> str:
    """A few lines: the features found, the classes present (with their population), the spectra."""
    lines = []
    if smap.particles:
        by_shape: dict[str, list] = {}
        for p in smap.particles:
            by_shape.setdefault(p.shape, []).append(p)
        parts = []
        for shape, ps in sorted(by_shape.items(), key=lambda kv: -len(kv[1])):
            desc = f"{len(ps)} {shape}{'s' if len(ps) > 1 else ''}"
            if shape == "rod":
                desc += (
                    f" (length {_range([p.length_nm for p in ps], ' nm')}, width {_range([p.width_nm for p in ps], ' nm')},"
                    f" aspect ratio {_range([p.aspect_ratio for p in ps])})"
                )
            else:
                desc += f" (edge {_range([p.size_nm for p in ps], ' nm')})"
            parts.append(desc)
        lines.append(f"Particles: {len(smap.particles)}: " + "; ".join(parts) + ".")
    if smap.lattice is not None:
        lat = smap.lattice
        counts: dict[str, int] = {}
        for s in lat.sites:
            counts[s.cls] = counts.get(s.cls, 0) + 1
        lines.append(
            f"Atomic lattice: {len(lat.sites)} column sites, nearest-neighbour distance {lat.nn_distance_nm:.3f} nm, "
            f"two sublattices by intensity; " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + "."
        )
    if smap.interface is not None:
        pts = np.asarray(smap.interface.points_nm)
        n = smap.interface.bright_side_normal
        lines.append(
            f"Interface: a line through ({pts[:, 0].mean():.1f}, {pts[:, 1].mean():.1f}) nm; the bright side lies "
            f"toward ({n[0]:+.2f}, {n[1]:+.2f}); brightness contrast {smap.interface.contrast:.2f}."
        )
    if smap.flakes is not None:
        f = smap.flakes
        grid = np.asarray(f.layers)
        lines.append(
            f"Flakes on a film: HAADF steps of {f.step:.3g} counts above the film ({f.film_level:.3g}), "
            f"{f.step / max(f.noise, 1e-12):.1f} noise σ each; up to {int(grid.max())} flakes stacked; "
            f"{100 * np.mean(grid > 0):.0f} % of the field covered."
        )
    present = smap.classes_present(candidates_nm)
    if present:
        lines.append("Feature classes (members: sites or grid points), names to use in a prediction:")
        lines += [f"- {c} ({n}): {DESCRIPTIONS[c]}" for c, n in present.items()]
    groups = smap.groups_present(candidates_nm)
    if groups:
        lines.append("Groups of classes: " + ", ".join(f"{g} ({n})" for g, n in groups.items()) + ".")
    if smap.spectra:
        lines.append("Survey spectra (peaks: energy eV, height per electron; edges: onset eV and element):")
        for i, s in enumerate(smap.spectra):
            peaks = ", ".join(f"{p.energy_eV:.2f} eV ({p.height:.2g})" for p in s.peaks) or "none"
            edges = ", ".join(
                f"{e.onset_eV:.1f} eV" + (f" {e.element} {e.edge}" if e.element else "") for e in s.edges
            )
            lines.append(
                f"- #{i} on {s.cls} at ({s.x_nm:.2f}, {s.y_nm:.2f}) nm: peaks {peaks}"
                + (f"; edges {edges}" if edges else "")
            )
    if not lines:
        lines.append("No particles, lattice or interface were recognised in the overview image.")
    return "\n".join(lines)


def spectrum_positions(smap: SurveyMap, candidates_nm: np.ndarray, n: int) -> list[tuple[float, float]]:
    """Up to ``n`` positions, one on each kind of feature: the key point of the largest particle of
    each shape, the substrate point farthest from every particle, then the most extreme site of
    each lattice class, then the two sides of an interface, far from it, then the film, a single and
    stacked flakes, each deepest inside its class."""
    out: list[tuple[float, float]] = []
    for shape in ("rod", "triangle", "cube", "other"):
        ps = [p for p in smap.particles if p.shape == shape]
        if ps:
            big = max(ps, key=lambda p: p.area_nm2)
            out.append(tuple(big.key_points_nm[0]) if big.key_points_nm else tuple(big.center_nm))
    if smap.particles:
        cls = smap.area_class(candidates_nm)
        free = candidates_nm[cls == "substrate"]
        if len(free):
            centres = np.array([p.center_nm for p in smap.particles])
            d = np.min(
                np.hypot(free[:, None, 0] - centres[None, :, 0], free[:, None, 1] - centres[None, :, 1]),
                axis=1,
            )
            out.append(tuple(free[int(np.argmax(d))]))
    if smap.lattice is not None:
        by_cls: dict[str, list] = {}
        for s in smap.lattice.sites:
            by_cls.setdefault(s.cls, []).append(s)
        order = sorted(by_cls, key=lambda c: (c.startswith("sublattice"), c))
        for c in order:
            s = max(by_cls[c], key=lambda s: abs(s.z))
            out.append((s.x_nm, s.y_nm))
    if smap.interface is not None:
        cls = smap.area_class(candidates_nm)
        centre = np.asarray(smap.center_nm)
        for side, target in (
            ("bright_side", smap.fov_nm / 6),
            ("dim_side", smap.fov_nm / 6),
            ("interface", 0.0),
        ):
            pts = candidates_nm[cls == side]
            if len(pts):  # a point about a sixth of the field from the interface, near the middle
                d = np.abs(interface_distance(smap.interface, pts))
                cost = np.abs(d - target) + 0.1 * np.hypot(*(pts - centre).T)
                out.append(tuple(pts[int(np.argmin(cost))]))
    if smap.flakes is not None:
        cls = smap.area_class(candidates_nm)
        centre = np.asarray(smap.center_nm)
        for c in ("bare_film", "single_flake", "stacked_flakes"):
            pts = candidates_nm[cls == c]
            if len(pts):  # deepest inside its class (farthest from other classes), near the middle
                other = candidates_nm[cls != c]
                depth = cKDTree(other).query(pts)[0] if len(other) else np.zeros(len(pts))
                out.append(tuple(pts[int(np.argmax(depth - 1e-3 * np.hypot(*(pts - centre).T)))]))
    seen, uniq = set(), []
    for p in out:
        key = (round(float(p[0]), 4), round(float(p[1]), 4))
        if key not in seen:
            seen.add(key)
            uniq.append((float(p[0]), float(p[1])))
    return uniq[:n]


__all__ = ["map_summary", "spectrum_positions"]
