"""Stacked-flake segmentation: a support film under flat flakes that add one HAADF step each.

A sample of thin flakes of one thickness (Nion's simulator sample, exfoliated 2D flakes,
a film with terraces) shows a few flat intensity levels, equally spaced: the bare film and
one, two, … flakes stacked. ``find_flakes(image)`` reads that from the image alone:

1. a 3 × 3 median filter keeps the steps and drops most of the pixel noise;
2. the noise σ from neighbour differences (robust: step edges are few), and the levels as
   the peaks of the filtered values' density (a histogram smoothed by one σ) standing out
   by ``MIN_PROMINENCE`` of the highest; the lowest is the bare film, the next the first flake;
3. it is a flake sample only when the levels are a ladder: each level stands at a whole
   number of steps above the film (within ``LADDER_TOLERANCE`` of a step), the step is at
   least ``MIN_STEP_K`` noise σ of the film level, and the film and the first flake each
   cover at least ``MIN_FRACTION`` of the field;
4. layers per pixel = the nearest whole number of steps above the film; a pixel is *stable*
   when its 3 × 3 neighbourhood has the same count (an edge pixel of a flake is neither);
5. and flakes are stacked somewhere: at least ``MIN_STACKED_PIXELS`` stable pixels two steps
   or more above the film (particles of one height on a support make no stack).

Classes (``classes.py``): ``bare_film`` (0 layers), ``single_flake`` (1), ``stacked_flakes``
(2 or more), for stable pixels; the rest is unassigned.
"""

from __future__ import annotations

import logging
import math

import numpy as np
from scipy import ndimage
from scipy.signal import find_peaks

from autoscope.instruments.records import ImageRecord
from autoscope.tools.grounding.model import FlakeMap

log = logging.getLogger(__name__)

MIN_PROMINENCE = 0.03
#: stable pixels two steps or more above the film: a stack, not particles of one height on a support
MIN_STACKED_PIXELS = 4
LADDER_TOLERANCE = 0.25  # of a step: how far a level may sit from a whole number of steps
MIN_STEP_K = 3.0
MIN_FRACTION = 0.05


def find_flakes(image: ImageRecord) -> FlakeMap | None:
    """The flake map of ``image``, or None when its levels are no ladder of equal steps."""
    data = np.asarray(image.data, dtype=np.float64)
    if data.ndim != 2 or min(data.shape) < 8:
        return None
    smooth = ndimage.median_filter(data, size=3, mode="nearest")
    # pixel noise after the filter, from neighbour differences (steps are a small share of them)
    diffs = np.concatenate([np.diff(smooth, axis=1).ravel(), np.diff(smooth, axis=0).ravel()])
    noise = max(1.4826 * float(np.median(np.abs(diffs))) / math.sqrt(2), 1e-12)
    values = smooth.ravel()
    lo, hi = np.percentile(values, [0.5, 99.5])
    if hi - lo < MIN_STEP_K * noise:
        return None
    centres = np.arange(lo - 3 * noise, hi + 3 * noise, noise / 4)
    hist, _ = np.histogram(values, bins=len(centres), range=(centres[0] - noise / 8, centres[-1] + noise / 8))
    density = ndimage.gaussian_filter1d(hist.astype(float), 4.0)  # a kernel of one noise σ
    peaks, _ = find_peaks(density, prominence=MIN_PROMINENCE * density.max())
    levels = centres[peaks]
    if len(levels) < 2:
        log.debug("no flake ladder: %d level(s)", len(levels))
        return None
    bare, step = float(levels[0]), float(levels[1] - levels[0])
    rungs = (levels - bare) / step
    share = [float(np.mean(np.abs(values - lv) < step / 2)) for lv in levels[:2]]
    if step < MIN_STEP_K * noise or min(share) < MIN_FRACTION:
        log.debug("no flake ladder: step %.3g vs noise %.3g, shares %s", step, noise, np.round(share, 3))
        return None
    if np.any(np.abs(rungs - np.round(rungs)) > LADDER_TOLERANCE):
        log.debug("no flake ladder: levels at %s steps", np.round(rungs, 2))
        return None
    layers = np.clip(np.rint((smooth - bare) / step), 0, None).astype(int)
    stable = (ndimage.maximum_filter(layers, 3, mode="nearest") == layers) & (
        ndimage.minimum_filter(layers, 3, mode="nearest") == layers
    )
    stacked = int(np.sum(stable & (layers >= 2)))
    if stacked < MIN_STACKED_PIXELS:
        log.debug("no flake ladder: %d stable pixels two steps or more above the film", stacked)
        return None
    log.info(
        "flake sample: film %.3g, step %.3g counts (%.1f σ); layers 0..%d; %.0f %% of pixels stable",
        bare,
        step,
        step / noise,
        int(layers.max()),
        100 * stable.mean(),
    )
    return FlakeMap(
        film_level=bare,
        step=step,
        noise=noise,
        layers=np.where(stable, layers, -1).tolist(),
    )
