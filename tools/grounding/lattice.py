"""Atomic-lattice grounding: the columns of a two-sublattice crystal and their intensity classes.

``find_lattice(image)`` works from the image alone; None unless it shows resolved columns:

1. gate: a sharp power-spectrum peak, period ≥ ``MIN_PERIOD_PX`` px, ≥ ``MIN_PERIODS`` periods;
2. columns: local maxima of a lightly smoothed image (footprint ~half the nn distance),
   sub-pixel by a log-parabola; intensity = background-subtracted counts in a disc of
   ``DISC_FRACTION`` × nn;
3. sublattices: two clusters of log intensity when bimodal (else one, "bright"); the
   Bravais lattice is fitted to the bright columns (basis: the shortest neighbour vectors
   that translate most columns onto columns, then least squares), the dim sublattice is the
   dominant offset(s) of the other columns in the unit cell;
4. sites: every predicted site more than one nn inside the field, at the detected column
   (within ``SITE_RADIUS_FRACTION`` × nn) or, where none was found (an empty column, e.g. a
   double vacancy), at the predicted position with the intensity measured there; a column
   takes its site's sublattice, so a heavy substituent on the dim sublattice stays dim;
5. classes (``classes.py``): robust z within each sublattice offset, ``|z| > OUTLIER_Z``
   gives ``bright_site_brighter``, ``dim_site_dimmer`` or ``dim_site_brighter`` (a dimmer
   bright site has no class of its own and stays ``sublattice_bright``).

Positions are nm in the sample frame; intensities are background-subtracted counts.
"""

from __future__ import annotations

import logging
import math

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from autoscope.instruments.records import ImageRecord
from autoscope.tools.grounding.classes import OUTLIER_Z, SITE_RADIUS_FRACTION
from autoscope.tools.grounding.model import LatticeMap, LatticeSite

log = logging.getLogger(__name__)

MIN_PERIOD_PX = 4.0  # finest lattice period (FFT) treated as resolved columns
MIN_PERIODS = 8.0  # at least this many periods across the field
FFT_PEAK_RATIO = 200.0  # a Bragg peak over the median power at its spatial frequency
MIN_COLUMNS = 30
MIN_QUALITY = 0.6
MIN_SUPPORT = 0.7  # a lattice vector translates at least this fraction of columns onto columns
PEAK_FLOOR = 0.12  # a column's peak above background, as a fraction of the brightest columns'
DISC_FRACTION = 0.4
BIMODAL_SEPARATION = 4.0  # cluster medians apart by this many robust σ (log intensity)
MIN_GROUP_FRACTION = 0.1


def find_lattice(image: ImageRecord) -> LatticeMap | None:
    """The lattice map of ``image``, or None when it shows no lattice of resolved columns."""
    data = np.asarray(image.data, dtype=np.float64)
    period = _fft_period_px(data)
    if period is None:
        log.debug("no lattice: no sharp periodicity")
        return None
    smooth = ndimage.gaussian_filter(data, max(0.5, 0.1 * period), mode="nearest")
    bg = float(np.percentile(smooth, 5))
    rc = _local_maxima(smooth, bg, 0.33 * period)
    if len(rc) < MIN_COLUMNS:
        log.debug("no lattice: %d columns", len(rc))
        return None
    nn_px = float(np.median(cKDTree(rc).query(rc, k=2)[0][:, 1]))
    if nn_px < 0.7 * MIN_PERIOD_PX:
        log.debug("no lattice: columns %.1f px apart", nn_px)
        return None
    rc = _refine(smooth - bg, rc)
    inten = _disc_sums(data - bg, rc, DISC_FRACTION * nn_px)
    bright, bimodal = _split(inten)
    fit = _fit_lattice(rc[bright], rc, nn_px)
    if fit is None:
        log.debug("no lattice: no basis translates the columns onto each other")
        return None
    p0, basis, offsets = fit
    sites, groups, on = _sites(data.shape, rc, p0, basis, offsets, nn_px)
    quality = float(np.mean(on)) if len(on) else 0.0
    if len(sites) < MIN_COLUMNS or quality < MIN_QUALITY:
        log.debug("no lattice: %d sites, quality %.2f", len(sites), quality)
        return None
    site_int = _disc_sums(data - bg, sites, DISC_FRACTION * nn_px)
    med = {g: float(np.median(site_int[groups == g])) for g in np.unique(groups)}
    bright_group = max(med, key=med.get) if bimodal else None
    out: list[LatticeSite] = []
    for g in med:
        sel = np.flatnonzero(groups == g)
        vals = site_int[sel]
        sigma = max(1.4826 * float(np.median(np.abs(vals - med[g]))), 1e-3 * abs(med[g]), 1e-9)
        z = (vals - med[g]) / sigma
        sub = "bright" if (not bimodal or g == bright_group) else "dim"
        for i, zi, vi in zip(sel, z, vals, strict=True):
            x, y = image.pixel_to_nm(sites[i, 0], sites[i, 1])
            site = dict(x_nm=x, y_nm=y, sublattice=sub, intensity=float(vi), z=float(zi))
            out.append(LatticeSite(**site, cls=_cls(sub, zi)))
    out.sort(key=lambda s: (s.y_nm, s.x_nm))
    nn_nm = _model_nn_px(basis, offsets) * image.pixel_size_nm
    counts = {c: sum(s.cls == c for s in out) for c in sorted({s.cls for s in out})}
    log.info("lattice: nn %.4f nm, %d sites, quality %.2f, %s", nn_nm, len(out), quality, counts)
    return LatticeMap(nn_distance_nm=nn_nm, sites=out, quality=quality)


def _cls(sub: str, z: float) -> str:
    if sub == "bright":
        return "bright_site_brighter" if z > OUTLIER_Z else "sublattice_bright"
    if z < -OUTLIER_Z:
        return "dim_site_dimmer"
    return "dim_site_brighter" if z > OUTLIER_Z else "sublattice_dim"


def _fft_period_px(data: np.ndarray) -> float | None:
    """Period (px) of the strongest sharp peak of the power spectrum, or None."""
    n0, n1 = data.shape
    win = np.outer(np.hanning(n0), np.hanning(n1))
    power = np.abs(np.fft.rfft2((data - data.mean()) * win)) ** 2
    k0 = np.fft.fftfreq(n0) * n0
    k1 = np.fft.rfftfreq(n1) * n1
    kr = np.hypot(k0[:, None] * (n1 / n0), k1[None, :])  # cycles per field (along columns)
    valid = (kr >= max(MIN_PERIODS, 4.0)) & (kr <= n1 / MIN_PERIOD_PX)
    if not valid.any():
        return None
    shells = np.round(kr).astype(int)
    med = ndimage.median(power, labels=np.where(valid, shells, 0), index=np.arange(shells.max() + 1))
    med = np.asarray(med, dtype=np.float64)
    ratio = np.where(valid, power / np.maximum(med[shells], 1e-300), 0.0)
    i = np.unravel_index(int(np.argmax(ratio)), ratio.shape)
    log.debug("strongest spectral peak: %.1f cycles/field, %.0f × the median", kr[i], ratio[i])
    if ratio[i] < FFT_PEAK_RATIO:
        return None
    return float(n1 / kr[i])


def _local_maxima(smooth: np.ndarray, bg: float, radius_px: float) -> np.ndarray:
    """(n, 2) row, col of local maxima within ``radius_px`` standing clearly above background."""
    r = max(1, int(round(radius_px)))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    peak = smooth == ndimage.maximum_filter(smooth, footprint=(yy**2 + xx**2) <= r * r, mode="nearest")
    vals = smooth[peak] - bg
    if vals.size == 0:
        return np.zeros((0, 2))
    top = float(np.percentile(vals, 95))
    peak &= smooth - bg > PEAK_FLOOR * top
    return np.argwhere(peak).astype(np.float64)


def _refine(img: np.ndarray, rc: np.ndarray) -> np.ndarray:
    """Sub-pixel column positions: a parabola through the log of the 3 pixels about each maximum.

    Exact for a Gaussian column profile; the shift is limited to one pixel.
    """
    r = rc.astype(int)
    n0, n1 = img.shape
    out = rc.astype(np.float64).copy()
    lg = np.log(np.clip(img, 1e-6 * max(float(img.max()), 1e-12), None))
    for axis, size in ((0, n0), (1, n1)):
        ok = (r[:, axis] > 0) & (r[:, axis] < size - 1)
        lo, hi = r[ok].copy(), r[ok].copy()
        lo[:, axis] -= 1
        hi[:, axis] += 1
        fm, f0, fp = lg[lo[:, 0], lo[:, 1]], lg[r[ok, 0], r[ok, 1]], lg[hi[:, 0], hi[:, 1]]
        curv = fm - 2 * f0 + fp
        shift = np.where(curv < 0, 0.5 * (fm - fp) / np.where(curv < 0, curv, -1.0), 0.0)
        out[ok, axis] += np.clip(shift, -1.0, 1.0)
    return out


def _disc_sums(img: np.ndarray, rc: np.ndarray, r_px: float) -> np.ndarray:
    """Sum of ``img`` in a disc of ``r_px`` around each fractional (row, col), edges anti-aliased."""
    if len(rc) == 0:
        return np.zeros(0)
    r = int(math.ceil(r_px + 1))
    dy, dx = (a.ravel() for a in np.mgrid[-r : r + 1, -r : r + 1])
    base = np.round(rc).astype(int)
    rows, cols = base[:, :1] + dy, base[:, 1:] + dx
    dist = np.hypot(rows - rc[:, :1], cols - rc[:, 1:])
    w = np.clip(r_px + 0.5 - dist, 0.0, 1.0)
    inside = (rows >= 0) & (rows < img.shape[0]) & (cols >= 0) & (cols < img.shape[1])
    vals = img[np.clip(rows, 0, img.shape[0] - 1), np.clip(cols, 0, img.shape[1] - 1)]
    return np.sum(np.where(inside, w * vals, 0.0), axis=1)


def _split(inten: np.ndarray) -> tuple[np.ndarray, bool]:
    """(mask of the bright cluster, bimodal?) from a 2-cluster split of log intensity."""
    v = np.log(np.clip(inten, max(1e-3 * float(np.max(inten)), 1e-12), None))
    order = np.sort(v)
    n = len(order)
    lo_n = max(int(MIN_GROUP_FRACTION * n), 1)
    best, cut = np.inf, float(np.median(v))
    csum, csum2 = np.cumsum(order), np.cumsum(order**2)
    for k in range(lo_n, n - lo_n):  # within-cluster sum of squares of [:k] and [k:]
        a = csum2[k - 1] - csum[k - 1] ** 2 / k
        b = (csum2[-1] - csum2[k - 1]) - (csum[-1] - csum[k - 1]) ** 2 / (n - k)
        if a + b < best:
            best, cut = a + b, 0.5 * (order[k - 1] + order[k])
    hi, lo = v[v > cut], v[v <= cut]
    if len(hi) < lo_n or len(lo) < lo_n:
        return np.ones(len(v), dtype=bool), False
    # the tighter cluster sets the scale: a sublattice may itself hold two species (La/Sr)
    spread = min(
        1.4826 * np.median(np.abs(hi - np.median(hi))), 1.4826 * np.median(np.abs(lo - np.median(lo)))
    )
    sep = (np.median(hi) - np.median(lo)) / max(spread, 1e-9)
    log.debug("intensity clusters: %d bright, %d dim, separation %.1f σ", len(hi), len(lo), sep)
    if sep < BIMODAL_SEPARATION:
        return np.ones(len(v), dtype=bool), False
    return v > cut, True


def _support(tree: cKDTree, pts: np.ndarray, vec: np.ndarray, tol: float, lo, hi) -> float:
    """Fraction of the points whose translate by ``vec`` (inside the field) lands on a point."""
    moved = pts + vec
    ok = np.all((moved >= lo) & (moved <= hi), axis=1)
    if ok.sum() < 5:
        return 0.0
    return float(np.mean(tree.query(moved[ok])[0] <= tol))


def _precise(tree: cKDTree, pts: np.ndarray, vec: np.ndarray, tol: float) -> np.ndarray:
    """A translation vector refined as the median displacement of the point pairs it matches."""
    d, i = tree.query(pts + vec)
    ok = d <= tol
    return np.median(tree.data[i[ok]] - pts[ok], axis=0) if ok.sum() >= 5 else vec


def _fit_lattice(bright: np.ndarray, all_rc: np.ndarray, nn_px: float):
    """(origin, basis rows (2, 2), dim offsets (k, 2)) in pixels, or None when nothing fits."""
    if len(bright) < MIN_COLUMNS // 2:
        return None
    tol = SITE_RADIUS_FRACTION * nn_px
    tree = cKDTree(bright)
    lo, hi = all_rc.min(axis=0), all_rc.max(axis=0)
    centre = (lo + hi) / 2
    seeds = bright[np.argsort(np.hypot(*(bright - centre).T))[:25]]
    cand: list[np.ndarray] = []
    for s in seeds:
        _, idx = tree.query(s, k=min(9, len(bright)))
        for v in bright[idx[1:]] - s:
            v = -v if (v[0] < 0 or (v[0] == 0 and v[1] < 0)) else v
            if not any(np.hypot(*(v - c)) < tol for c in cand):
                cand.append(v)
    cand.sort(key=lambda v: float(np.hypot(*v)))
    good = [
        _precise(tree, bright, v, tol) for v in cand if _support(tree, bright, v, tol, lo, hi) >= MIN_SUPPORT
    ]
    if not good:
        return None
    a1 = good[0]
    rest = [v for v in good[1:] if abs(a1[0] * v[1] - a1[1] * v[0]) > 0.5 * np.hypot(*a1) * np.hypot(*v)]
    if not rest:
        return None
    basis = np.array([a1, rest[0]])
    p0 = seeds[0]
    for _ in range(3):  # least squares: r = p0 + n1 a1 + n2 a2 on the columns near lattice points
        frac = np.linalg.solve(basis.T, (bright - p0).T).T
        n = np.round(frac)
        on = np.hypot(*((frac - n) @ basis).T) <= tol
        if on.sum() < MIN_COLUMNS // 2:
            return None
        design = np.column_stack([np.ones(on.sum()), n[on]])
        coef, *_ = np.linalg.lstsq(design, bright[on], rcond=None)
        p0, basis = coef[0], coef[1:]
    # offsets of the other columns within the unit cell: greedy clusters, wrap-around aware
    frac = np.linalg.solve(basis.T, (all_rc - p0).T).T
    off = frac - np.floor(frac)
    resid = np.hypot(*((frac - np.round(frac)) @ basis).T)
    clusters: list[list[np.ndarray]] = []
    for f in off[resid > tol]:
        for c in clusters:
            d = f - c[0]
            if np.hypot(*((d - np.round(d)) @ basis)) <= tol:
                c.append(c[0] + (d - np.round(d)))
                break
        else:
            clusters.append([f])
    n_cells = max(int(np.sum(resid <= tol)), 1)
    offsets = [np.mean(c, axis=0) % 1.0 for c in clusters if len(c) >= 0.3 * n_cells]
    log.debug("lattice basis %s px, %d offset(s) from %d clusters", np.round(basis, 2).tolist(), len(offsets),
              len(clusters))  # fmt: skip
    return p0, basis, np.array(offsets).reshape(-1, 2)


def _sites(shape, rc: np.ndarray, p0, basis, offsets, nn_px: float):
    """(sites (m, 2) px, group of each (0: the fitted lattice, k: offset k), on-lattice mask of ``rc``)."""
    margin = nn_px
    lo, hi = np.array([margin, margin]), np.array(shape, dtype=np.float64) - 1 - margin
    corners = np.array([[lo[0], lo[1]], [lo[0], hi[1]], [hi[0], lo[1]], [hi[0], hi[1]]])
    fc = np.linalg.solve(basis.T, (corners - p0).T).T
    n1 = np.arange(math.floor(fc[:, 0].min()) - 1, math.ceil(fc[:, 0].max()) + 2)
    n2 = np.arange(math.floor(fc[:, 1].min()) - 1, math.ceil(fc[:, 1].max()) + 2)
    grid = np.stack(np.meshgrid(n1, n2, indexing="ij"), axis=-1).reshape(-1, 2).astype(np.float64)
    shifts = np.vstack([np.zeros((1, 2)), offsets])
    pts = np.concatenate([p0 + (grid + s) @ basis for s in shifts])
    groups = np.repeat(np.arange(len(shifts)), len(grid))
    keep = np.all((pts >= lo) & (pts <= hi), axis=1)
    pts, groups = pts[keep], groups[keep]
    tol = SITE_RADIUS_FRACTION * nn_px
    inner = np.all((rc >= lo) & (rc <= hi), axis=1)
    d_col, i_col = cKDTree(rc).query(pts)
    found = d_col <= tol
    pts[found] = rc[i_col[found]]  # the detected column's own position
    on = cKDTree(pts).query(rc[inner])[0] <= tol
    log.debug("%d sites, %d without a detected column", len(pts), int(np.sum(~found)))
    return pts, groups, on


def _model_nn_px(basis: np.ndarray, offsets: np.ndarray) -> float:
    """Nearest-neighbour distance (px) of the fitted lattice: the shortest site-to-site vector.

    (The median nearest distance of the detected columns is biased low: it is the smallest
    of several noisy distances.)
    """
    shifts = np.vstack([np.zeros((1, 2)), offsets])
    n = np.stack(np.meshgrid([-1, 0, 1], [-1, 0, 1], indexing="ij"), axis=-1).reshape(-1, 2)
    vecs = np.concatenate([(n + (a - b)) @ basis for a in shifts for b in shifts])
    lengths = np.hypot(vecs[:, 0], vecs[:, 1])
    return float(np.min(lengths[lengths > 1e-6]))
