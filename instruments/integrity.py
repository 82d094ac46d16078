"""Sanity checks on acquired data: reject frames a faulty readout garbled.

A corrupted readout shows up as non-finite values or as a band stuck at one value (a
band of image rows, a run of spectrum channels), typically the converter's full
scale. Genuine counts never hold one exact value along a whole scan line or over a
long run of well-exposed channels: shot and read noise make neighbours differ.
"""

from __future__ import annotations

import numpy as np

_MIN_STUCK_CHANNELS = 8
#: below this many counts, equal neighbouring channels are ordinary Poisson ties
_TIE_COUNTS = 50.0


def _longest_stuck_run(values: np.ndarray) -> int:
    """Length of the longest run of equal consecutive values at or above ``_TIE_COUNTS``."""
    same = (values[1:] == values[:-1]) & (values[1:] >= _TIE_COUNTS)
    if not same.any():
        return 1
    padded = np.concatenate([[0], same.astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(padded))
    return int((edges[1::2] - edges[::2]).max()) + 1


def frame_is_corrupt(data: np.ndarray, saturation_counts: float | None = None) -> bool:
    """True when ``data`` (an image or a spectrum) looks like a garbled readout.

    Flags: any NaN/inf; for images, a whole row stuck at one non-zero value; for
    spectra, a run of at least 8 (or 1/32 of the channels) equal, well-exposed
    channels. With ``saturation_counts``, anything at or above it counts as stuck too.
    """
    a = np.asarray(data, dtype=np.float64)
    if a.size == 0 or not np.all(np.isfinite(a)):
        return True
    if a.ndim >= 2:
        rows = a.reshape(a.shape[0], -1)
        stuck = (rows == rows[:, :1]).all(axis=1) & (rows[:, 0] > 0)
        if saturation_counts is not None:
            stuck |= (rows >= saturation_counts).all(axis=1)
        return bool(stuck.any())
    v = a.ravel()
    if saturation_counts is not None and (v >= saturation_counts).sum() >= _MIN_STUCK_CHANNELS:
        return True
    return _longest_stuck_run(v) >= max(_MIN_STUCK_CHANNELS, v.size // 32)
