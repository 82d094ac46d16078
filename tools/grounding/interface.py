"""Interface grounding: a line across the field separating a brighter from a dimmer region.

``find_interface(image)`` works from the image alone:

1. smooth strongly (σ = ``SMOOTH_FRACTION`` of the field, several lattice periods) so only
   the mean intensity of each region remains;
2. split the smoothed image in two by Otsu's threshold; the step must be large and
   field-spanning: contrast (bright − dim)/dim ≥ ``MIN_CONTRAST``, each side at least
   ``MIN_SIDE_FRACTION`` of the field;
3. the step direction is from the dim side's centroid to the bright side's (the normal);
   in ``BANDS`` bands along the interface, the 50 % crossing of the band's mean profile
   along the normal (nearest the global boundary, linearly interpolated) gives one point
   of the polyline, so a stepped interface is followed;
4. checks: crossings found in most bands, and away from the polyline the pixels lie on the
   side the polyline says (``MIN_AGREEMENT``), so a lattice, particles or a gradient are
   not taken for an interface.

Positions are nm in the sample frame; ``bright_side_normal`` points into the bright side.
"""

from __future__ import annotations

import logging
import math

import numpy as np
from scipy import ndimage

from autoscope.instruments.records import ImageRecord
from autoscope.tools.grounding.model import InterfaceMap

log = logging.getLogger(__name__)

SMOOTH_FRACTION = 0.025
MIN_CONTRAST = 0.15
MIN_SIDE_FRACTION = 0.2
BANDS = 24
MIN_BAND_FRACTION = 0.7  # bands in which the profile crosses the 50 % level
MIN_AGREEMENT = 0.95  # pixels on the side of the polyline the threshold puts them
MAX_STEP_SPREAD = 0.35  # within-side standard deviation over the step, at most
MAX_STEP_WIDTH = 0.12  # 25–75 % rise of the step across the interface, as a fraction of the field


def find_interface(image: ImageRecord) -> InterfaceMap | None:
    """The interface of ``image`` as a polyline, or None when it shows no field-spanning step."""
    data = np.asarray(image.data, dtype=np.float64)
    n0, n1 = data.shape
    sigma = max(1.0, SMOOTH_FRACTION * max(n0, n1))
    # normalised convolution: near the edges, average only what is inside the field (padding
    # by the edge rows would repeat one phase of a lattice and bias the level there)
    weight = ndimage.gaussian_filter(np.ones_like(data), sigma, mode="constant")
    smooth = ndimage.gaussian_filter(data, sigma, mode="constant") / weight
    thr = _otsu(smooth)
    bright = smooth > thr
    frac = float(bright.mean())
    if not MIN_SIDE_FRACTION <= frac <= 1 - MIN_SIDE_FRACTION:
        log.debug("no interface: bright fraction %.2f", frac)
        return None
    lvl_b, lvl_d = float(np.median(smooth[bright])), float(np.median(smooth[~bright]))
    contrast = (lvl_b - lvl_d) / max(abs(lvl_d), 1e-12)
    if contrast < MIN_CONTRAST:
        log.debug("no interface: contrast %.3f", contrast)
        return None
    rows, cols = np.mgrid[0:n0, 0:n1].astype(np.float64)
    pos = np.stack([cols, rows], axis=-1)  # (x, y) in pixels
    normal = pos[bright].mean(axis=0) - pos[~bright].mean(axis=0)
    normal /= max(math.hypot(*normal), 1e-12)
    tangent = np.array([-normal[1], normal[0]])
    centre = np.array([(n1 - 1) / 2, (n0 - 1) / 2])
    s = (pos - centre) @ normal  # along the normal (toward bright), px
    u = (pos - centre) @ tangent
    mid = 0.5 * (lvl_b + lvl_d)
    s0 = _boundary(s, bright)
    points = []
    edges = np.linspace(u.min(), u.max(), BANDS + 1)
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        band = (u >= lo) & (u < hi)
        sc = _crossing(s[band], smooth[band], mid, s0)
        if sc is not None:
            points.append((sc, 0.5 * (lo + hi)))
    if len(points) < MIN_BAND_FRACTION * BANDS:
        log.debug("no interface: crossings in %d of %d bands", len(points), BANDS)
        return None
    pts_s = np.array([p[0] for p in points])
    pts_u = np.array([p[1] for p in points])
    # each pixel's side by the polyline (interpolated along the tangent) against the threshold's
    s_line = np.interp(u, pts_u, pts_s)
    away = np.abs(s - s_line) > 2 * sigma
    agree = float(np.mean((s[away] > s_line[away]) == bright[away])) if away.any() else 0.0
    spread = max(float(np.std(smooth[away & bright])), float(np.std(smooth[away & ~bright])))
    spread /= max(lvl_b - lvl_d, 1e-12)
    width = _step_width(s - s_line, smooth, lvl_d, lvl_b) / max(n0, n1)
    if agree < MIN_AGREEMENT or spread > MAX_STEP_SPREAD or width > MAX_STEP_WIDTH:
        log.debug(
            "no interface: side agreement %.3f, within-side spread %.2f of the step, 25-75 %% width %.2f of the field",
            agree, spread, width,
        )  # fmt: skip
        return None
    xy_px = centre + pts_s[:, None] * normal + pts_u[:, None] * tangent
    # the line's ends reach the field's edge along the tangent
    ends_u = np.array([u.min(), u.max()])
    ends = centre + np.interp(ends_u, pts_u, pts_s)[:, None] * normal + ends_u[:, None] * tangent
    xy_px = np.vstack([ends[:1], xy_px, ends[1:]])
    pts_nm = [image.pixel_to_nm(float(r), float(c)) for c, r in xy_px]
    log.info(
        "interface: %d points, bright side normal (%.2f, %.2f), contrast %.2f",
        len(pts_nm), normal[0], normal[1], contrast,
    )  # fmt: skip
    return InterfaceMap(
        points_nm=[(float(x), float(y)) for x, y in pts_nm],
        bright_side_normal=(float(normal[0]), float(normal[1])),
        contrast=float(contrast),
    )


def _otsu(img: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of the values of ``img``."""
    hist, edges = np.histogram(img, bins=bins)
    centres = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(centres[int(np.argmax(between[:-1]))])


def _step_width(ds: np.ndarray, v: np.ndarray, lvl_d: float, lvl_b: float) -> float:
    """25–75 % rise distance (px) of the mean profile across the polyline (``ds``: px, + bright)."""
    k = np.floor(ds - ds.min()).astype(int)
    counts = np.bincount(k.ravel())
    prof = np.bincount(k.ravel(), v.ravel()) / np.maximum(counts, 1)
    grid = ds.min() + np.arange(len(prof)) + 0.5
    ok = counts > 0
    prof, grid = prof[ok], grid[ok]
    out = []
    for level in (lvl_d + 0.25 * (lvl_b - lvl_d), lvl_d + 0.75 * (lvl_b - lvl_d)):
        up = np.flatnonzero((prof[:-1] <= level) & (prof[1:] > level))
        if up.size == 0:
            return float("inf")
        out.append(grid[up][int(np.argmin(np.abs(grid[up])))])
    return abs(out[1] - out[0])


def _boundary(s: np.ndarray, bright: np.ndarray) -> float:
    """Position along the normal that best separates dim (below) from bright (above) pixels."""
    order = np.argsort(s.ravel(), kind="stable")
    b = bright.ravel()[order].astype(np.float64)
    # misclassified pixels for a cut after index k: bright below + dim above
    errors = np.cumsum(b) + (np.sum(1 - b) - np.cumsum(1 - b))
    return float(s.ravel()[order][int(np.argmin(errors))])


def _crossing(s: np.ndarray, v: np.ndarray, mid: float, s0: float) -> float | None:
    """Where the mean profile v(s) of one band crosses ``mid`` upward, nearest ``s0`` (px)."""
    if s.size < 10:
        return None
    k = np.floor(s - s.min()).astype(int)
    counts = np.bincount(k)
    prof = np.bincount(k, v) / np.maximum(counts, 1)
    grid = s.min() + np.arange(len(prof)) + 0.5
    ok = counts > 0
    prof, grid = prof[ok], grid[ok]
    up = np.flatnonzero((prof[:-1] <= mid) & (prof[1:] > mid))
    if up.size == 0:
        return None
    cands = grid[up] + (mid - prof[up]) / (prof[up + 1] - prof[up]) * (grid[up + 1] - grid[up])
    return float(cands[int(np.argmin(np.abs(cands - s0)))])
