"""Particle segmentation of a survey image: bright, discrete particles on a darker support.

``find_particles(image)`` works from the image alone (simulated or recorded):

1. background level and noise from the median and MAD of a lightly smoothed image
   (σ ≈ 1 px); particles cover a small part of the field, so these are the support's;
2. detection: connected regions (``scipy.ndimage.label``) above background + ``DETECT_K``
   noise standard deviations, at least ``MIN_PIXELS`` pixels;
3. refinement, per region: its plateau level (a high percentile of the region), then the
   pixels above ``EDGE_FRACTION`` of the way from background to plateau, connected to
   the detection. A flat prism or a cube then keeps the pixels whose centres lie inside
   it, and a thin triangle is cut as well as a thick cube;
4. descriptors in the sample frame (nm): area, centroid, second-moment axes; length and
   width are the pixel-centre extents along the long and short axes plus one pixel;
   the convex outline is the hull of the pixels' corners (counter-clockwise, so
   ``model.polygon_sdf`` is negative inside);
5. shape: a rod when the aspect ratio is at least ``ROD_MIN_ASPECT``; else a triangle or a
   cube (square in projection) by whether the hull has a 4th corner as far out as the
   first three, checked against the area ratio to the moment ellipse (≈ 0.83 for a
   triangle, ≈ 0.955 for a square) and by how much the polygon spanned by its 3 or 4
   corners overlaps the region; ``other`` when these disagree. Corners: the hull vertices
   farthest from the centroid, well apart in angle.

Intensities are detector counts; lengths nm, areas nm², angles degrees.
"""

from __future__ import annotations

import logging
import math

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from autoscope.instruments.records import ImageRecord
from autoscope.tools.grounding.classes import ROD_MIN_ASPECT
from autoscope.tools.grounding.model import ParticleFeature, polygon_sdf

log = logging.getLogger(__name__)

SMOOTH_SIGMA_PX = 1.0
DETECT_K = 6.0  # detection threshold: background + k robust noise standard deviations
MIN_PIXELS = 6
EDGE_FRACTION = 0.3  # outline threshold, from background (0) to the region's plateau (1)
PLATEAU_PERCENTILE = 90.0
MIN_CONTRAST_K = 8.0  # a region's plateau must stand this many noise σ above background
#: area / (π a b) of the second-moment ellipse: triangle 0.827, square 0.955 (a disc: 1)
ELLIPSE_RATIO_RANGE = {"triangle": (0.74, 0.93), "cube": (0.86, 0.99)}
FOURTH_CORNER_SPLIT = 0.85  # 4th corner distance over the mean of the other three: square ≈ 1
MIN_POLYGON_COVER = 0.68  # overlap (IoU) of the region and the polygon of its corners


def find_particles(image: ImageRecord) -> list[ParticleFeature]:
    """Segment the bright particles of ``image``; returns them ordered by id (row-major scan)."""
    data = np.asarray(image.data, dtype=np.float64)
    smooth = ndimage.gaussian_filter(data, SMOOTH_SIGMA_PX, mode="nearest")
    bg = float(np.median(smooth))
    noise = max(1.4826 * float(np.median(np.abs(smooth - bg))), 1e-9)
    labels, n = ndimage.label(smooth > bg + DETECT_K * noise)
    log.debug("background %.3g counts, noise %.3g, %d candidate regions", bg, noise, n)
    particles: list[ParticleFeature] = []
    for lab, sl in enumerate(ndimage.find_objects(labels), start=1):
        region = _refine(smooth, labels, lab, sl, bg, noise)
        if region is None:
            continue
        feature = _describe(image, data, region, len(particles))
        if feature is not None:
            particles.append(feature)
    log.info(
        "found %d particles (%s)",
        len(particles),
        ", ".join(
            f"{s}: {sum(p.shape == s for p in particles)}" for s in ("rod", "triangle", "cube", "other")
        ),
    )
    return particles


def _refine(
    smooth: np.ndarray, labels: np.ndarray, lab: int, sl: tuple[slice, slice], bg: float, noise: float
) -> np.ndarray | None:
    """Pixel indices (m, 2: row, col) of one refined region, or None when it is too small or faint."""
    r0, r1, c0, c1 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
    det = labels[sl] == lab
    if det.sum() < MIN_PIXELS:
        return None
    plateau = float(np.percentile(smooth[sl][det], PLATEAU_PERCENTILE))
    if plateau - bg < MIN_CONTRAST_K * noise:
        return None
    pad = 3
    R0, R1 = max(r0 - pad, 0), min(r1 + pad, smooth.shape[0])
    C0, C1 = max(c0 - pad, 0), min(c1 + pad, smooth.shape[1])
    box = smooth[R0:R1, C0:C1]
    det_box = np.zeros(box.shape, dtype=bool)
    det_box[r0 - R0 : r1 - R0, c0 - C0 : c1 - C0] = det
    mask = box > bg + EDGE_FRACTION * (plateau - bg)
    # keep the refined pixels connected to this detection (never a neighbour's)
    other = (labels[R0:R1, C0:C1] > 0) & ~det_box
    mask &= ~other
    sub, m = ndimage.label(mask)
    if m == 0:
        return None
    hits = np.bincount(sub[det_box & mask], minlength=m + 1)
    hits[0] = 0
    if hits.max() == 0:
        return None
    keep = ndimage.binary_fill_holes(sub == int(np.argmax(hits)))
    if keep.sum() < MIN_PIXELS:
        return None
    rows, cols = np.nonzero(keep)
    return np.column_stack([rows + R0, cols + C0])


def _describe(image: ImageRecord, data: np.ndarray, rc: np.ndarray, pid: int) -> ParticleFeature | None:
    """Descriptors of one region (pixel indices ``rc``) in the sample frame."""
    p = image.pixel_size_nm
    x0, y0 = image.origin_nm
    xy = np.column_stack([x0 + (rc[:, 1] + 0.5) * p, y0 + (rc[:, 0] + 0.5) * p])
    area = len(xy) * p * p
    c = xy.mean(axis=0)
    cov = np.cov((xy - c).T, bias=True) + np.eye(2) * p * p / 12.0  # a pixel's own spread
    evals, evecs = np.linalg.eigh(cov)
    long_axis, short_axis = evecs[:, 1], evecs[:, 0]
    along, across = (xy - c) @ long_axis, (xy - c) @ short_axis
    length = float(along.max() - along.min() + p)
    width = float(across.max() - across.min() + p)
    if width > length:
        length, width = width, length
        long_axis, short_axis = short_axis, long_axis
        along, across = across, along
    aspect = length / max(width, 1e-9)
    orientation = math.degrees(math.atan2(long_axis[1], long_axis[0])) % 180.0
    outline = _outline(xy, p)
    if outline is None:
        return None
    ellipse_ratio = area / (4.0 * math.pi * math.sqrt(max(evals[0] * evals[1], 1e-18)))
    key: list[tuple[float, float]]
    if aspect >= ROD_MIN_ASPECT:
        shape = "rod"
        lo, hi = along.min() - p / 2, along.max() + p / 2
        mid = (lo + hi) / 2
        centre = c + mid * long_axis
        key = [tuple(map(float, centre + s * (hi - lo) / 2 * long_axis)) for s in (-1.0, 1.0)]
        size = length
        width = _capsule_width(length, area, width)
        aspect = length / max(width, 1e-9)
    else:
        shape, key, size = _polygon_shape(xy, p, outline, c, area, ellipse_ratio)
    log.debug(
        "particle %d: %s at (%.1f, %.1f) nm, %.0f nm², %.1f × %.1f nm, ellipse ratio %.3f",
        pid, shape, c[0], c[1], area, length, width, ellipse_ratio,
    )  # fmt: skip
    return ParticleFeature(
        id=pid,
        shape=shape,
        center_nm=(float(c[0]), float(c[1])),
        area_nm2=float(area),
        length_nm=length,
        width_nm=width,
        aspect_ratio=float(aspect),
        orientation_deg=float(orientation),
        size_nm=float(size),
        mean_intensity=float(np.mean(data[rc[:, 0], rc[:, 1]])),
        key_points_nm=key,
        outline_nm=[(float(x), float(y)) for x, y in outline],
    )


def _outline(xy: np.ndarray, p: float) -> np.ndarray | None:
    """Counter-clockwise convex hull (k, 2) nm of the corners of the pixels centred at ``xy``."""
    h = p / 2
    corners = np.concatenate([xy + [dx, dy] for dx in (-h, h) for dy in (-h, h)])
    try:
        hull = ConvexHull(corners)
    except QhullError:
        return None
    poly = corners[hull.vertices]  # counter-clockwise in (x, y) for 2-D hulls
    e0, e1 = poly[1] - poly[0], poly[2] - poly[1]
    if e0[0] * e1[1] - e0[1] * e1[0] < 0:
        poly = poly[::-1]
    return poly


def _corners(outline: np.ndarray, c: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` outline vertices farthest from the centroid, at least ~half of 360°/k apart."""
    rel = outline - c
    r = np.hypot(rel[:, 0], rel[:, 1])
    ang = np.arctan2(rel[:, 1], rel[:, 0])
    chosen: list[int] = []
    min_sep = 0.55 * 2 * math.pi / k
    for i in np.argsort(-r, kind="stable"):
        if all(abs(math.remainder(ang[i] - ang[j], 2 * math.pi)) >= min_sep for j in chosen):
            chosen.append(int(i))
            if len(chosen) == k:
                break
    chosen.sort(key=lambda j: ang[j])
    return outline[chosen]


def _capsule_width(length: float, area: float, fallback: float) -> float:
    """Width (nm) of a capsule (a rectangle with half-disc ends) of ``length`` and ``area``.

    The pixel count measures a rod's area without the ±half-pixel bias of its extent, so
    the width (hence the aspect ratio) of a rod a few pixels across comes out better.
    """
    k = 1.0 - math.pi / 4.0  # area = length·w − k·w²
    disc = length * length - 4.0 * k * area
    if disc < 0:
        return fallback
    return float((length - math.sqrt(disc)) / (2.0 * k))


def _polygon_area(poly: np.ndarray) -> float:
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _overlap(xy: np.ndarray, p: float, poly: np.ndarray) -> float:
    """Intersection over union of the region's pixels (centres ``xy``) and a convex polygon."""
    lo, hi = xy.min(axis=0) - 2 * p, xy.max(axis=0) + 2 * p
    lo = np.minimum(lo, poly.min(axis=0) - p)
    hi = np.maximum(hi, poly.max(axis=0) + p)
    gx, gy = np.meshgrid(np.arange(lo[0], hi[0], p), np.arange(lo[1], hi[1], p))
    # snap the grid onto the pixel centres
    off = xy[0] - lo - np.round((xy[0] - lo) / p) * p
    pts = np.column_stack([gx.ravel() + off[0], gy.ravel() + off[1]])
    inside = polygon_sdf(poly, pts) <= 0
    idx = np.round((xy - pts[0]) / p).astype(int)
    region = np.zeros(gx.shape, dtype=bool)
    region[idx[:, 1], idx[:, 0]] = True
    region = region.ravel()
    return float(np.sum(inside & region) / max(np.sum(inside | region), 1))


def _polygon_shape(
    xy: np.ndarray, p: float, outline: np.ndarray, c: np.ndarray, area: float, ellipse_ratio: float
) -> tuple[str, list[tuple[float, float]], float]:
    """(shape, corners, edge length nm) of a compact region: triangle, cube or other.

    Two cues: a square has a 4th corner as far out as the other three, a triangle has none
    (its 4th-farthest well-separated hull vertex lies mid-edge, at about half the corner
    distance); and the area ratio to the moment ellipse. Both must agree within their
    ranges, and the polygon of the corners must cover the region.
    """
    corners4 = _corners(outline, c, 4)
    r = np.sort(np.hypot(*(corners4 - c).T))
    fourth = float(r[0] / r[1:].mean()) if len(r) == 4 else 0.0
    guess = "cube" if fourth >= FOURTH_CORNER_SPLIT else "triangle"
    lo, hi = ELLIPSE_RATIO_RANGE[guess]
    corners = corners4 if guess == "cube" else _corners(outline, c, 3)
    cover = _overlap(xy, p, corners) if len(corners) == (4 if guess == "cube" else 3) else 0.0
    if lo <= ellipse_ratio <= hi and cover >= MIN_POLYGON_COVER:
        edges = np.hypot(*(np.roll(corners, -1, axis=0) - corners).T)
        return guess, [tuple(map(float, q)) for q in corners], float(edges.mean())
    # neither fits: an irregular particle; its size is the equivalent-disc diameter
    log.debug("irregular particle (%s?): ellipse ratio %.3f, 4th corner %.2f, cover %.2f",
              guess, ellipse_ratio, fourth, cover)  # fmt: skip
    return "other", [], float(2.0 * math.sqrt(area / math.pi))
