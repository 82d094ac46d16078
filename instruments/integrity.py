"""Sanity checks on acquired data: reject frames a faulty readout garbled.

A corrupted readout shows up as non-finite values or as a band stuck at one value at
the top of the range (a row band of an image, a run of channels of a spectrum).
Genuine data never has a whole scan line, or a long run of channels, at exactly the
frame maximum: shot and read noise make neighbouring values differ.
"""

from __future__ import annotations

import numpy as np

_MIN_STUCK_CHANNELS = 8


def _runs_of_true(mask: np.ndarray) -> int:
    """Length of the longest run of True in a 1-D boolean array."""
    if not mask.any():
        return 0
    padded = np.concatenate([[0], mask.astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(padded))
    return int((edges[1::2] - edges[::2]).max())


def frame_is_corrupt(data: np.ndarray, saturation_counts: float | None = None) -> bool:
    """True when ``data`` (an image or a spectrum) looks like a garbled readout.

    Flags: any NaN/inf; for images, a full row stuck at the frame maximum (or at
    ``saturation_counts``); for spectra, a run of at least 8 channels stuck there.
    """
    a = np.asarray(data)
    if a.size == 0:
        return True
    if not np.all(np.isfinite(a)):
        return True
    top = float(a.max())
    if top <= 0:
        return False
    if saturation_counts is not None and top >= saturation_counts:
        top = float(saturation_counts)
    stuck = a >= top
    if a.ndim >= 2:
        rows = stuck.reshape(a.shape[0], -1).all(axis=1)
        return bool(rows.any())
    return _runs_of_true(stuck.ravel()) >= max(_MIN_STUCK_CHANNELS, a.size // 32)
