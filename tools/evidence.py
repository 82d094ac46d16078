"""The verdict's evidence: the strata a verdict draws from and the effect judged on them.

Shared by the plan engine (the audit's top-up judges as it measures) and the analysis (the
verdict itself), so both read the same populations, per-site values and trend features.
"""

from __future__ import annotations

import numpy as np

from autoscope.instruments.records import ImageRecord
from autoscope.tools.grounding import population_grid
from autoscope.tools.grounding.classes import KEY_CLASSES, SHAPE_OF, SITE_CLASSES, members
from autoscope.tools.grounding.model import SurveyMap, interface_distance
from autoscope.tools.plan import Hypothesis
from autoscope.tools.predictions import PARTICLE_COVARIATES, LocalizedAt, Trend
from autoscope.tools.queries import StratumValue
from autoscope.tools.verdicts import LEVEL, ClassEstimate, Effect, judge


def stratum_population(smap: SurveyMap, name: str, h: Hypothesis, survey: ImageRecord) -> np.ndarray:
    """(n, 2) positions an audit stratum draws from; 'elsewhere' is the complement of the
    hypothesis' class among points of the same kind (sites, or the population grid)."""
    grid = population_grid(survey).xy_nm
    if name != "elsewhere":
        return smap.population(name, grid)
    p = h.prediction
    at = p.at if isinstance(p, LocalizedAt) else p.classes()[0]
    inside = {tuple(v) for v in np.round(smap.population(at, grid), 6)}
    if smap.lattice is not None and all(c in SITE_CLASSES for c in members(at)):
        pts = np.array([(s.x_nm, s.y_nm) for s in smap.lattice.sites])
    else:
        pts = grid
    keep = np.array([tuple(v) not in inside for v in np.round(pts, 6)], dtype=bool)
    return pts[keep]


def site_targets(smap: SurveyMap, name: str) -> list[tuple[tuple[float, float], int | None]]:
    """(position, feature id) of the sites of a class: lattice sites, or the key points of particles."""
    out: list[tuple[tuple[float, float], int | None]] = []
    for cls in members(name):
        if cls in KEY_CLASSES:
            shape = SHAPE_OF[cls]
            out += [(tuple(k), p.id) for p in smap.particles if p.shape == shape for k in p.key_points_nm]
        else:
            out += [((float(x), float(y)), None) for x, y in smap.site_positions(cls)]
    return out


def trend_features(h: Hypothesis, strata: dict[str, list[StratumValue]], smap) -> list[tuple[float, float]]:
    """(covariate, signal) per feature of a trend: per particle (its key-point spectra averaged)
    for a particle covariate, per spectrum for the distance to the interface."""
    p = h.prediction
    assert isinstance(p, Trend)
    vals = strata.get(p.over, [])
    if p.covariate in PARTICLE_COVARIATES:
        by_particle: dict[int, list[float]] = {}
        for v in vals:
            if v.feature is not None:
                by_particle.setdefault(int(v.feature), []).append(v.value)
        parts = {q.id: q for q in smap.particles}
        attr = {
            "aspect_ratio": "aspect_ratio",
            "size_nm": "size_nm",
            "length_nm": "length_nm",
            "width_nm": "width_nm",
        }
        out = []
        for pid, ys in sorted(by_particle.items()):
            finite = [y for y in ys if y == y]
            if pid in parts and finite:
                out.append((float(getattr(parts[pid], attr[p.covariate])), sum(finite) / len(finite)))
        return out
    if smap.interface is None or not vals:
        return []
    d = interface_distance(smap.interface, np.array([(v.x_nm, v.y_nm) for v in vals]))
    return [(float(di), v.value) for di, v in zip(d, vals, strict=True)]


def population_sizes(h: Hypothesis, strata: dict[str, list[StratumValue]], smap, survey) -> dict[str, int]:
    """Members of each stratum's class: its sites for a sites step, its population for an audit."""
    out = {}
    for c, vs in strata.items():
        if any("-site-" in v.step_id or v.step_id.startswith("rank-") for v in vs):
            out[c] = len(site_targets(smap, c))
        else:
            out[c] = len(stratum_population(smap, c, h, survey))
    return out


def judge_strata(
    h: Hypothesis,
    strata: dict[str, list[StratumValue]],
    smap: SurveyMap,
    survey: ImageRecord,
    *,
    level: float = LEVEL,
    population: dict[str, int] | None = None,
) -> tuple[Effect, dict[str, ClassEstimate], list[tuple[float, float]]]:
    """The effect of ``h`` on per-site ``strata`` (``queries.per_site``), with each class's
    finite population (``population_sizes`` unless given) and shot noise, and the trend's
    features; ``(effect, estimates, features)``."""
    data = {c: [v.value for v in vs] for c, vs in strata.items()}
    noise = {c: [v.sd for v in vs] for c, vs in strata.items()}
    features = trend_features(h, strata, smap) if isinstance(h.prediction, Trend) else []
    effect, ests = judge(
        h.prediction,
        data,
        energy=h.energy_signal,
        features=features,
        noise=noise,
        population=population if population is not None else population_sizes(h, strata, smap, survey),
        level=level,
    )
    return effect, ests, features


__all__ = ["judge_strata", "population_sizes", "site_targets", "stratum_population", "trend_features"]
