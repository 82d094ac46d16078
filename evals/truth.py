"""Ground truth of a hypothesis: is its claim true of the sample, by the twin's oracle?

The verdict estimator (``tools/verdicts.py``) estimates a prediction's effect θ from noisy
spectra, grouped by the classes its survey map assigned from the image. Here θ is
computed independently: feature classes come from the oracle's true geometry (particle
outlines, the interface profile, lattice columns and seeded defects) with the rules and
constants of ``tools/grounding/classes.py``, and the signal is the scalarizer applied to
the noise-free spectrum of a fresh, undamaged twin of the same scenario and seed, so
damage done by the experiment does not change the answer. The effect is the same
function of class means (``tools/predictions.effect``) the estimator uses.
"""

from __future__ import annotations

import logging
import math
import zlib
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict
from scipy.stats import spearmanr

from autoscope.agents.answer import HOST_MIN_RATIO
from autoscope.evals.discovery import _truth_axis, _truth_record
from autoscope.instruments.records import ImageRecord, SpectrumRecord
from autoscope.instruments.sim.oracle import Oracle
from autoscope.instruments.sim.scenarios import make_microscope
from autoscope.tools.grounding import population_grid
from autoscope.tools.grounding.classes import (
    EDGE_DEPTH_FRACTION,
    INTERFACE_HALF_WIDTH_NM,
    KEY_CLASS_OF_SHAPE,
    KEY_CLASSES,
    NEAR_MARGIN_NM,
    SHAPE_OF,
    SITE_CLASSES,
    SUBSTRATE_CLEARANCE_NM,
    UNASSIGNED,
    key_radius_nm,
    members,
)
from autoscope.tools.plan import Hypothesis
from autoscope.tools.predictions import PARTICLE_COVARIATES, Identity, LocalizedAt, Trend, effect

log = logging.getLogger(__name__)

#: sites this close to the survey field's border (nm) are left out, as the estimator does
SITE_FIELD_MARGIN_NM = 0.3
#: which true defect types make which site class (the rest of the columns are regular)
DEFECT_CLASS = dict(W_Mo="bright_site_brighter", Se_S="dim_site_brighter", O_S="dim_site_dimmer")
DEFECT_CLASS |= dict(V_S="dim_site_dimmer", V_S2="dim_site_dimmer")
#: a band-intensity class mean smaller in magnitude than what this many spectra at the dwell could
#: resolve (shot-noise sd of one spectrum's value / sqrt of it) counts as no signal: 0
RESOLVABLE_SPECTRA = 10_000


class HypothesisTruth(BaseModel):
    """Whether a hypothesis is true of the sample, and the population quantities that decide."""

    model_config = ConfigDict(extra="forbid")

    hypothesis_id: str
    holds: bool
    effect: float  # θ of the prediction; NaN when a class is empty
    means: dict[str, float]  # true mean signal per class (or per trend feature set)
    members: dict[str, int]  # population size per class
    evaluated: dict[str, int]  # members whose true signal was computed
    trend_rho: float | None = None
    non_finite: dict[str, int] = {}  # evaluated members whose signal was not finite (dropped)
    zeroed: dict[str, float] = {}  # raw means below the resolvable floor, counted as 0 in ``means``
    rule: str


# ---------------------------------------------------------------------- geometry
def _segment_distance(xy: np.ndarray, p0: np.ndarray, p1: np.ndarray) -> np.ndarray:
    e = p1 - p0
    w = xy - p0
    t = np.clip((w @ e) / max(float(e @ e), 1e-12), 0.0, 1.0)
    return np.hypot(w[:, 0] - t * e[0], w[:, 1] - t * e[1])


def _rod_axis(p: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    a = math.radians(p["orientation_deg"])
    return np.asarray(p["center_nm"], float), np.array([math.cos(a), math.sin(a)])


def particle_sdf(p: dict[str, Any], xy: np.ndarray) -> np.ndarray:
    """Exact signed distance (nm, negative inside) of points to a true particle's projected outline."""
    if p["kind"] == "rod":
        c, u = _rod_axis(p)
        r = p["width_nm"] / 2
        a = max(p["size_nm"] / 2 - r, 0.0)
        return _segment_distance(xy, c - a * u, c + a * u) - r
    poly = np.asarray(p["outline_nm"], float)
    dist = np.full(len(xy), np.inf)
    cross = []
    for p0, p1 in zip(poly, np.roll(poly, -1, axis=0), strict=True):
        dist = np.minimum(dist, _segment_distance(xy, p0, p1))
        e, w = p1 - p0, xy - p0
        cross.append(e[0] * w[:, 1] - e[1] * w[:, 0])
    cr = np.stack(cross)
    inside = np.all(cr >= 0, axis=0) | np.all(cr <= 0, axis=0)  # convex, either orientation
    return np.where(inside, -dist, dist)


def particle_key_points(p: dict[str, Any]) -> np.ndarray:
    """(k, 2) key points of a true particle: a rod's two tips, a polygon's corners."""
    if p["kind"] == "rod":
        c, u = _rod_axis(p)
        return np.stack([c - p["size_nm"] / 2 * u, c + p["size_nm"] / 2 * u])
    return np.asarray(p["outline_nm"], float).reshape(-1, 2)


def _particle_labels(particles: list[dict[str, Any]], xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Area class of each point, and the index of the particle whose zone it is in (−1: none)."""
    out = np.full(len(xy), "substrate", dtype=object)
    owner = np.full(len(xy), -1)
    nearest = np.full(len(xy), np.inf)
    for i, p in enumerate(particles):
        d = particle_sdf(p, xy)
        out[(d <= SUBSTRATE_CLEARANCE_NM) & (out == "substrate")] = UNASSIGNED
        zone = (d <= NEAR_MARGIN_NM) & (d < nearest)
        if not zone.any():
            continue
        nearest[zone], owner[zone] = d[zone], i
        key = particle_key_points(p)
        dk = np.min(np.hypot(xy[:, None, 0] - key[None, :, 0], xy[:, None, 1] - key[None, :, 1]), axis=1)
        near_key = dk <= key_radius_nm(p["size_nm"])
        shape = p["kind"]
        if shape == "rod":
            cls = np.where(near_key, "rod_tip", "rod_side")
        else:
            edge = d >= -EDGE_DEPTH_FRACTION * p["size_nm"]
            cls = np.where(near_key, f"{shape}_corner", np.where(edge, f"{shape}_edge", f"{shape}_face"))
        out[zone] = cls[zone]
    return out, owner


def interface_signed_distance(profile: dict[str, list[float]], xy: np.ndarray) -> np.ndarray:
    """Exact signed distance (nm) to the true stepped interface: positive on the dim (SrTiO3) side.

    Row k of the profile holds y in [y_k − a/4, y_k + 3a/4) (the twin's own row rule); the
    interface is the polyline of each row's vertical segment at x_k and the steps between.
    """
    y = np.asarray(profile["y_nm"], float)
    x = np.asarray(profile["interface_x_nm"], float)
    a = float(np.median(np.diff(y))) if len(y) > 1 else 1.0
    lo, hi = y - a / 4, y + 3 * a / 4
    lo[0], hi[-1] = -1e6, 1e6
    pts: list[tuple[float, float]] = []
    for k in range(len(y)):
        pts += [(x[k], lo[k]), (x[k], hi[k])]
    poly = np.asarray(pts)
    dist = np.full(len(xy), np.inf)
    for p0, p1 in zip(poly[:-1], poly[1:], strict=True):
        dist = np.minimum(dist, _segment_distance(xy, p0, p1))
    row = np.clip(np.floor((xy[:, 1] - y[0]) / a + 0.25).astype(int), 0, len(y) - 1)
    return np.where(xy[:, 0] < x[row], -dist, dist)


def true_area_classes(truth: dict[str, Any], xy_nm: np.ndarray) -> np.ndarray:
    """The area class (``classes.py`` rules) of each point (n, 2), from the oracle's true geometry."""
    xy = np.atleast_2d(np.asarray(xy_nm, float))
    out = np.full(len(xy), UNASSIGNED, dtype=object)
    if truth.get("particles"):
        out[:] = _particle_labels(truth["particles"], xy)[0]
    if truth.get("interface_profile"):
        d = interface_signed_distance(truth["interface_profile"], xy)
        side = np.where(
            np.abs(d) <= INTERFACE_HALF_WIDTH_NM, "interface", np.where(d < 0, "bright_side", "dim_side")
        )
        free = out == UNASSIGNED
        out[free] = side[free]
    return out.astype(str)


def true_sites(
    truth: dict[str, Any],
    cls: str,
    sample: Any = None,
    *,
    field: tuple[tuple[float, float], float] | None = None,
    margin_nm: float = SITE_FIELD_MARGIN_NM,
    defect_type: str | None = None,
) -> np.ndarray:
    """(n, 2) true positions of the lattice sites of a site class (MoS2, "tmd-defects").

    ``sample``: the oracle's ``TMDSample`` (``Oracle(scope)._sample``); ``field``: ((cx, cy),
    fov_nm) of the survey; sites within ``margin_nm`` of its border are left out;
    ``defect_type`` (e.g. ``"W_Mo"``): only the sites of the class that hold that defect.
    """
    if cls not in SITE_CLASSES:
        raise ValueError(f"{cls!r} is not a lattice-site class")
    if sample is None or not hasattr(sample, "column_positions_nm"):
        raise ValueError("true_sites needs the twin's lattice sample (Oracle(scope)._sample)")
    metal, chalc = sample.column_positions_nm("metal"), sample.column_positions_nm("chalcogen")
    label = {"metal": np.full(len(metal), "sublattice_bright", dtype=object)}
    label["chalcogen"] = np.full(len(chalc), "sublattice_dim", dtype=object)
    kinds = {
        "metal": np.full(len(metal), "", dtype=object),
        "chalcogen": np.full(len(chalc), "", dtype=object),
    }
    for d in truth.get("defects", []):
        kind = "metal" if d["type"] == "W_Mo" else "chalcogen"
        cols = metal if kind == "metal" else chalc
        i = int(np.argmin(np.hypot(cols[:, 0] - d["x_nm"], cols[:, 1] - d["y_nm"])))
        label[kind][i] = DEFECT_CLASS[d["type"]]
        kinds[kind][i] = d["type"]
    xy = np.concatenate([metal, chalc])
    keep = np.concatenate([label["metal"], label["chalcogen"]]) == cls
    if defect_type is not None:
        keep &= np.concatenate([kinds["metal"], kinds["chalcogen"]]) == defect_type
    if field is not None:
        (cx, cy), fov = field
        half = fov / 2 - margin_nm
        keep &= (np.abs(xy[:, 0] - cx) <= half) & (np.abs(xy[:, 1] - cy) <= half)
    return xy[keep]


# ---------------------------------------------------------------------- signal
def _truth_records(
    scope: Any, xy_nm: np.ndarray, *, dwell_s: float, energy_min_eV: float, energy_max_eV: float
) -> Iterator[SpectrumRecord]:
    """Noise-free spectrum records (expected counts at the dwell and the twin's current) at points."""
    cfg = SimpleNamespace(spectrum_dwell_s=dwell_s, energy_min_eV=energy_min_eV, energy_max_eV=energy_max_eV)
    oracle = Oracle(scope)
    offset, channels = _truth_axis(scope, cfg)
    dispersion = scope.capabilities().dispersion_eV
    energy = offset + dispersion * np.arange(channels)
    current = scope.beam_current_pA()
    for x, y in np.asarray(xy_nm, float).reshape(-1, 2):
        yield _truth_record(oracle.true_spectrum(x, y, energy), offset, dispersion, cfg, current, x, y)


def true_signal(
    scope: Any,
    scalarizer: Any,
    xy_nm: np.ndarray,
    *,
    dwell_s: float,
    energy_min_eV: float,
    energy_max_eV: float,
) -> np.ndarray:
    """Noise-free scalarized signal at sample-frame points (NaN where the scalarizer gives none)."""
    window = {"dwell_s": dwell_s, "energy_min_eV": energy_min_eV, "energy_max_eV": energy_max_eV}
    return np.array([scalarizer(r) for r in _truth_records(scope, xy_nm, **window)], dtype=float)


def _subsample(xy: np.ndarray, max_points: int, seed: int) -> np.ndarray:
    if len(xy) <= max_points:
        return xy
    return xy[np.sort(np.random.default_rng(seed).choice(len(xy), max_points, replace=False))]


class _Evaluator:
    """Populations and true means of classes on one fresh twin and survey field."""

    def __init__(
        self, scope: Any, survey: ImageRecord, scalarizer: Any, n: int, seed: int, truth=None, **window
    ):
        self.scope, self.scalarizer, self.window = scope, scalarizer, window
        self.max_points, self.seed = n, seed
        oracle = Oracle(scope)
        self.truth, self.sample = truth or oracle.truth(), oracle._sample
        self.grid = population_grid(survey).xy_nm
        self.grid_cls = true_area_classes(self.truth, self.grid)
        self.field = ((survey.center_x_nm, survey.center_y_nm), survey.fov_nm)
        self.members: dict[str, int] = {}  # population size, evaluated members, non-finite values
        self.evaluated: dict[str, int] = {}
        self.non_finite: dict[str, int] = {}
        self.zeroed: dict[str, float] = {}  # raw means counted as 0
        self.floor = getattr(scalarizer, "kind", "") == "band_intensity"  # zero level: see ``mean``

    @classmethod
    def on_fresh_twin(
        cls,
        scenario: str,
        seed: int,
        survey: ImageRecord,
        scalarizer: Any,
        *,
        spectrum_dwell_s: float,
        energy_min_eV: float,
        energy_max_eV: float,
        max_points: int,
        sample: dict[str, Any] | None = None,
    ) -> _Evaluator:
        """An evaluator on a fresh, undamaged twin of the scenario, seed and sample variant, at the
        spectrometer window and dwell the run used."""
        window = {"dwell_s": spectrum_dwell_s, "energy_min_eV": energy_min_eV, "energy_max_eV": energy_max_eV}
        scope = make_microscope(scenario, seed=seed, variant=sample)
        return cls(scope, survey, scalarizer, max_points, seed, **window)

    @staticmethod
    def is_site(name: str) -> bool:
        cls = members(name)
        site = [c in SITE_CLASSES for c in cls]
        if any(site) and not all(site):
            raise ValueError(f"{name!r} mixes lattice sites and areas")
        return all(site)

    def population(self, name: str, *, exclude: str | None = None) -> np.ndarray:
        """Members of a class or group; with ``exclude``, every point of that class's kind not in it."""
        ref = exclude or name
        if self.is_site(ref):
            wanted = [c for c in SITE_CLASSES if c not in members(ref)] if exclude else members(name)
            pts = [true_sites(self.truth, c, self.sample, field=self.field) for c in sorted(wanted)]
            return np.concatenate(pts) if pts else np.zeros((0, 2))
        inside = np.isin(self.grid_cls, members(ref))
        return self.grid[~inside if exclude else inside]

    def values(self, key: str, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(points, true signal) at a seeded subsample of ``xy``; counts recorded under ``key``."""
        self.members[key] = len(xy)
        sub = _subsample(xy, self.max_points, self.seed + zlib.crc32(key.encode()))
        v = true_signal(self.scope, self.scalarizer, sub, **self.window) if len(sub) else np.zeros(0)
        self.evaluated[key] = len(sub)
        self.non_finite[key] = int(np.sum(~np.isfinite(v)))
        return sub, v

    def mean(self, key: str, xy: np.ndarray) -> float:
        """Mean finite true signal; a band intensity below the resolvable floor (``RESOLVABLE_SPECTRA``) is 0."""
        sub, v = self.values(key, xy)
        ok = np.isfinite(v)
        if not ok.any():
            return math.nan
        mu = float(v[ok].mean())
        if self.floor:
            recs = _truth_records(self.scope, sub[ok][:3], **self.window)
            sd = float(np.nanmedian([self.scalarizer.uncertainty(r) for r in recs]))
            if abs(mu) < sd / math.sqrt(RESOLVABLE_SPECTRA):
                self.zeroed[key] = mu
                return 0.0
        return mu


def _particle_covariate(p: dict[str, Any], covariate: str) -> float:
    size, width = p["size_nm"], p["width_nm"]
    if p["kind"] != "rod":  # regular polygons: projected short axis; equal axes
        width = size * math.sqrt(3) / 2 if p["kind"] == "triangle" else size
        return {"aspect_ratio": 1.0, "length_nm": size, "size_nm": size, "width_nm": width}[covariate]
    return {"aspect_ratio": size / width, "length_nm": size, "size_nm": size, "width_nm": width}[covariate]


def _trend(ev: _Evaluator, p: Trend) -> tuple[float, dict[str, float], str]:
    """Spearman ρ over the features of ``p.over``, per-feature means, and a rule sentence."""
    if p.covariate == "distance_to_interface_nm":
        if "interface_profile" not in ev.truth:
            raise ValueError("distance_to_interface_nm needs a sample with an interface")
        sub, v = ev.values(p.over, ev.population(p.over))
        cov = interface_signed_distance(ev.truth["interface_profile"], sub)
        ok = np.isfinite(v)
        rho = float(spearmanr(cov[ok], v[ok])[0]) if ok.sum() >= 3 else math.nan
        means = {p.over: float(v[ok].mean()) if ok.any() else math.nan}
        return (
            rho,
            means,
            f"Spearman rho of the true signal vs signed distance to the interface over {p.over}",
        )
    if p.covariate not in PARTICLE_COVARIATES:
        raise ValueError(f"unknown covariate {p.covariate!r}")
    over = members(p.over)
    shapes = {SHAPE_OF[c] for c in over if c in SHAPE_OF}
    if len(shapes) != 1:
        raise ValueError(f"a per-particle trend needs one particle shape, {p.over!r} names {sorted(shapes)}")
    shape = shapes.pop()
    labels, owner = _particle_labels(ev.truth.get("particles", []), ev.grid)
    feats, covs, means = [], [], {}
    for i, part in enumerate(ev.truth.get("particles", [])):
        if part["kind"] != shape:
            continue
        if set(over) <= KEY_CLASSES:
            xy = particle_key_points(part)
        else:
            xy = ev.grid[(owner == i) & np.isin(labels, over)]
        v = ev.values(f"{p.over}#{i}", xy)[1]
        v = v[np.isfinite(v)]
        if v.size:
            feats.append(float(v.mean()))
            covs.append(_particle_covariate(part, p.covariate))
            means[f"{p.over}#{i}"] = feats[-1]
    rho = float(spearmanr(covs, feats)[0]) if len(feats) >= 3 else math.nan
    where = "key points" if set(over) <= KEY_CLASSES else "zone points"
    return (
        rho,
        means,
        f"Spearman rho over {len(feats)} true {shape}s of their mean at {p.over} {where} vs {p.covariate}",
    )


def hypothesis_truth(
    h: Hypothesis,
    scenario: str,
    seed: int,
    survey: ImageRecord,
    *,
    spectrum_dwell_s: float,
    energy_min_eV: float,
    energy_max_eV: float,
    max_points: int = 400,
    sample: dict[str, Any] | None = None,
) -> HypothesisTruth:
    """The hypothesis's effect θ on the noise-free signal of a fresh twin (of the ``sample``
    variant), over the true classes."""
    ev = _Evaluator.on_fresh_twin(
        scenario, seed, survey, h.signal, spectrum_dwell_s=spectrum_dwell_s, energy_min_eV=energy_min_eV,
        energy_max_eV=energy_max_eV, max_points=max_points, sample=sample,
    )  # fmt: skip
    p = h.prediction
    rho = None
    if isinstance(p, Identity):
        n_all = len(ev.population(p.at))
        n_model = len(
            true_sites(ev.truth, p.at, ev.sample, field=ev.field, defect_type=f"{p.species}_{p.host}")
        )
        ev.members[p.at] = ev.evaluated[p.at] = n_all
        means = {p.at: n_model / n_all if n_all else math.nan}
        rule = (
            f"θ from the share of the true {p.at} sites that hold {p.species}_{p.host} ({n_model} of {n_all})"
        )
    elif isinstance(p, Trend):
        rho, means, rule = _trend(ev, p)
    else:
        means = {c: ev.mean(c, ev.population(c)) for c in p.classes()}
        if isinstance(p, LocalizedAt) and p.versus == "elsewhere":
            means["elsewhere"] = ev.mean("elsewhere", ev.population(p.at, exclude=p.at))
        rule = (
            f"θ from the true mean signal over the true members of {', '.join(means)} (≤ {max_points} each)"
        )
    finite_rho = rho is None or math.isfinite(rho)
    theta = float(effect(p, means, energy=h.energy_signal, trend_rho=rho)) if finite_rho else math.nan
    holds = bool(math.isfinite(theta) and theta > 0)
    log.info("truth %s: %s (effect %.4g, means %s)", h.id, holds, theta, means)
    return HypothesisTruth(
        hypothesis_id=h.id,
        holds=holds,
        effect=theta,
        means=means,
        members=ev.members,
        evaluated=ev.evaluated,
        trend_rho=rho,
        non_finite=ev.non_finite,
        zeroed=ev.zeroed,
        rule=f"claim: {p.claim(h.signal.describe())}; {rule}, noise-free, on a fresh {scenario} twin "
        f"(seed {seed}); holds when θ > 0",
    )


def goal_truth_plasmonic(
    truth: dict[str, Any],
    scope: Any,
    survey: ImageRecord,
    scalarizer: Any,
    *,
    spectrum_dwell_s: float,
    energy_min_eV: float,
    energy_max_eV: float,
    min_ratio: float = HOST_MIN_RATIO,
    max_points: int = 400,
    seed: int = 0,
) -> tuple[dict[str, bool], dict[str, float]]:
    """Which particle shapes host the band: true mean at each shape's key class ≥ ``min_ratio`` × substrate.

    ``scope``: a fresh twin of the scenario (its noise-free signal is used). Returns
    ({shape: hosts}, {class: true mean}) for the shapes present in ``truth``.
    """
    window = {"dwell_s": spectrum_dwell_s, "energy_min_eV": energy_min_eV, "energy_max_eV": energy_max_eV}
    ev = _Evaluator(scope, survey, scalarizer, max_points, seed, truth=truth, **window)
    shapes = sorted({p["kind"] for p in truth.get("particles", [])})
    means = {"substrate": ev.mean("substrate", ev.population("substrate"))}
    hosts = {}
    for shape in shapes:
        key = KEY_CLASS_OF_SHAPE[shape]
        means[key] = ev.mean(key, ev.population(key))
        hosts[shape] = bool(means[key] >= min_ratio * means["substrate"])
    log.info("plasmonic goal truth: %s (means %s)", hosts, means)
    return hosts, means
