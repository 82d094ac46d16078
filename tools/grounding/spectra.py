"""Peaks and edges of one EELS survey spectrum, for the hypothesis agent.

``find_peaks`` (low loss, windows starting below ``CORE_LOSS_MIN_EV``): the zero-loss peak is
skipped below max(0.6 eV, 3 × its FWHM); a SNIP baseline of the log of the lightly smoothed
counts follows its tail and the broad valence loss, and the local maxima standing ≥
``MIN_SNR`` shot-noise σ above it are the plasmons.

``find_edges`` (core loss): a power law A·E^−r fitted (weighted log-log least squares) on a
window below each candidate onset is extrapolated; an edge is where the counts stand ≥
``MIN_SNR`` σ above it (σ: Poisson, excess channel noise, and the fit's extrapolation error),
found from low to high energy, named from ``EDGE_TABLE`` when an entry lies close enough.

Energies in eV, heights per incident electron (counts / ``dose_e``). Deterministic; reads the
record only.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage, signal

from autoscope.instruments.records import SpectrumRecord
from autoscope.theory.compare import EDGE_TABLE
from autoscope.tools.grounding.model import SpectralEdge, SpectralPeak

log = logging.getLogger(__name__)

CORE_LOSS_MIN_EV = 50.0  # a window starting here is core loss; edges are sought above it only
MIN_SNR = 5.0  # features reported stand this many σ above their baseline
MAX_FEATURES = 6  # per spectrum, strongest first
# low loss
PEAK_SMOOTH_EV = 0.04  # Gaussian σ of the light smoothing
BASELINE_WINDOW_EV = 0.8  # SNIP half-window: features much wider than this are baseline
MAX_PEAK_WIDTH_EV = 1.5  # broader maxima are left to the baseline
# core loss
EDGE_SMOOTH_EV = 1.0  # Gaussian σ of the spectrum scanned for onsets
ONSET_SMOOTH_EV = 0.2  # Gaussian σ of the residual a sharp onset is read from (at least...
ONSET_SMOOTH_CHANNELS = 1.6  # ... this many channels)
PRE_WINDOW_EV = 50.0  # power-law fit window below a candidate onset (at most)
PRE_MIN_EV = 10.0  # ... and at least
PRE_GAP_EV = 2.0  # gap between the fit window and the candidate onset
POST_WINDOW_EV = 20.0  # window above the onset of the jump ratio
#: windows above a candidate onset compared with the background: the short one sees a sharp
#: edge best (least extrapolation), the long one a delayed edge
SNR_WINDOWS_EV = (10.0, 20.0, 50.0)
LOOK_EV = 30.0  # how far above a candidate its maximum excess is looked for
SLOW_RISE_EV = 3.0  # a rise from 20 to 50 % faster than this is read from the finer residual
TOP_FRACTION = 0.85  # a sharp rise ends at the first maximum this close to the largest
HOLD_EV = 1.0  # a level is reached where the excess holds above it this long
SKIP_EV = 10.0  # beyond an edge's maximum excess, the next fit window starts
EXPONENT_RANGE = (0.5, 7.0)  # plausible background exponents r; steeper: a peak's tail
MATCH_EV = 8.0  # a table entry within this of an onset names the edge
DELAYED_MATCH_EV = 25.0  # extra room above the table value for delayed edges
DELAYED_OFFSET_EV = 4.0  # a delayed edge's tangent onset lies this far above its table value


# ---------------------------------------------------------------------- low loss
def find_peaks(record: SpectrumRecord) -> list[SpectralPeak]:
    """Peaks of a low-loss spectrum, strongest first (at most ``MAX_FEATURES``).

    ``energy_eV`` is refined below a channel by a parabola, ``height`` is above the local
    baseline per incident electron, ``width_eV`` the FWHM above the baseline, ``snr`` the
    height over the shot-noise σ of the counts there. Core-loss windows give ``[]``.
    """
    e, c = record.energy_eV, _finite(record.counts)
    disp, n_e = float(record.dispersion_eV), float(record.dose_e)
    if e.size < 16 or n_e <= 0 or e[0] >= CORE_LOSS_MIN_EV:
        return []
    lo = float(e[0])
    if e[0] <= 0.0 <= e[-1]:
        lo = max(0.6, 3.0 * _zlp_fwhm(e, c))
    first = int(np.searchsorted(e, 2.0 * lo / 3.0)) if lo > e[0] else 0
    s = ndimage.gaussian_filter1d(np.clip(c[first:], 0.0, None), max(PEAK_SMOOTH_EV / disp, 0.5))
    if s.size < 16:
        return []
    base = np.expm1(_snip(np.log1p(s), max(int(round(BASELINE_WINDOW_EV / disp)), 2)))
    r = s - base
    ee = e[first:]
    idx, _ = signal.find_peaks(r, distance=max(int(round(0.1 / disp)), 1))
    out = []
    for i in idx:
        if ee[i] < lo or i < 1 or i >= r.size - 1:
            continue
        a, b, cc = r[i - 1 : i + 2]  # parabola through three channels: vertex offset and height
        de = 0.5 * (a - cc) / (a - 2 * b + cc) if a - 2 * b + cc < 0 else 0.0
        h = float(b - 0.25 * (a - cc) * de)
        snr = h / np.sqrt(max(s[i], 1.0))
        width = _fwhm(r, i, h)
        if snr < MIN_SNR or width is None or width * disp > MAX_PEAK_WIDTH_EV:
            continue  # weak, broad, or cut by the window's end (its baseline is not known there)
        out.append(
            SpectralPeak(energy_eV=float(ee[i] + de * disp), height=h / n_e, width_eV=width * disp, snr=snr)
        )
    out.sort(key=lambda p: -p.snr)
    log.debug("%d peaks above %.2f eV", len(out), lo)
    return out[:MAX_FEATURES]


def _finite(counts: np.ndarray) -> np.ndarray:
    """Counts as float, non-finite channels (a garbled readout) interpolated from their neighbours."""
    c = np.asarray(counts, dtype=np.float64).ravel()
    bad = ~np.isfinite(c)
    if bad.any():
        log.warning("%d non-finite spectrum channels interpolated", int(bad.sum()))
        c = c.copy()
        c[bad] = np.interp(np.flatnonzero(bad), np.flatnonzero(~bad), c[~bad]) if (~bad).any() else 0.0
    return c


def _zlp_fwhm(e: np.ndarray, c: np.ndarray) -> float:
    """FWHM (eV) of the zero-loss peak: the maximum within ±1 eV of 0 and its half-height points."""
    near = np.flatnonzero(np.abs(e) <= 1.0)
    if near.size < 3:
        return 0.0
    i = int(near[np.argmax(c[near])])
    return (_fwhm(c, i, c[i]) or 0.0) * float(e[1] - e[0])


def _snip(y: np.ndarray, m_max: int) -> np.ndarray:
    """SNIP baseline: y_i ← min(y_i, (y_{i−m} + y_{i+m})/2) for m = 1…m_max, with linear ends."""
    n = y.size
    pad = min(m_max, n - 1)
    left = 2 * y[0] - y[pad:0:-1]
    right = 2 * y[-1] - y[-2 : -pad - 2 : -1]
    z = np.concatenate([left, y, right])
    for m in range(1, m_max + 1):
        mid = 0.5 * (z[: -2 * m] + z[2 * m :])
        z[m:-m] = np.minimum(z[m:-m], mid)
    return z[pad : pad + n]


def _fwhm(y: np.ndarray, i: int, h: float) -> float | None:
    """Full width (channels) at h/2 around index i, linearly interpolated; None if not bracketed."""
    half = 0.5 * h
    if not y[i] > half:
        return None
    above = y > half
    left = np.flatnonzero(~above[:i])
    right = np.flatnonzero(~above[i + 1 :])
    if not left.size or not right.size:
        return None
    lo, hi = int(left[-1]), i + 1 + int(right[0])
    fl = lo + (half - y[lo]) / (y[lo + 1] - y[lo])
    fr = hi - (half - y[hi]) / (y[hi - 1] - y[hi])
    return float(fr - fl)


# --------------------------------------------------------------------- core loss
def find_edges(record: SpectrumRecord) -> list[SpectralEdge]:
    """Ionisation edges of a core-loss spectrum, strongest first (at most ``MAX_FEATURES``).

    ``onset_eV``: where the tangent to the rise of the excess over the extrapolated power law
    (between 20 % and 50 % of its maximum) meets zero; ``jump_ratio``: counts over background
    in ``POST_WINDOW_EV`` above the onset; ``snr``: the excess in the best of ``SNR_WINDOWS_EV``
    above the onset over its σ (Poisson variance of the counts, the spectrum's excess channel
    noise, and the fit's extrapolation error).
    Only channels above ``CORE_LOSS_MIN_EV`` are searched: low-loss windows give ``[]``.
    """
    core = record.energy_eV >= CORE_LOSS_MIN_EV
    e, c = record.energy_eV[core], _finite(record.counts)[core]
    if e.size < 40 or record.dose_e <= 0:
        return []
    sp = _Scan(e, c, float(record.dispersion_eV))
    edges: list[SpectralEdge] = []
    start, kmin = 0, 0
    for _ in range(e.size):  # each pass moves kmin up
        if len(edges) >= MAX_FEATURES:
            break
        k = sp.first_excess(start, kmin)
        if k is None:
            break
        edge, resume = sp.edge_at(start, k)
        if edge is None:
            kmin = k + 1
            continue
        edges.append(edge)
        start = kmin = resume
    edges.sort(key=lambda ed: -ed.snr)
    log.debug("%d edges: %s", len(edges), [(round(ed.onset_eV, 1), ed.element) for ed in edges])
    return edges


class _Scan:
    """Power-law fits on sliding windows of one core-loss spectrum (channel arithmetic)."""

    def __init__(self, e: np.ndarray, c: np.ndarray, disp: float) -> None:
        self.e, self.c, self.disp, self.x = e, c, disp, np.log(e)
        self.smooth = ndimage.gaussian_filter1d(c, EDGE_SMOOTH_EV / disp)
        s = np.clip(self.smooth, 0.1, None)
        self.fine = ndimage.gaussian_filter1d(c, max(ONSET_SMOOTH_EV / disp, ONSET_SMOOTH_CHANNELS))
        # channel noise beyond Poisson (read noise), from second differences: var(d2) = 1.5 σ²
        d2 = c[1:-1] - 0.5 * (c[:-2] + c[2:])
        self.extra = max(float(np.mean(d2**2) / 1.5 - np.mean(s[1:-1])), 0.0)
        w, y, x = s**2 / (s + self.extra), np.log(s), self.x  # var(log c) ≈ (c + extra) / c²
        self.cums = [np.concatenate([[0.0], np.cumsum(v)]) for v in (w, w * x, w * y, w * x * x, w * x * y)]
        self.n_pre, self.n_min, self.n_gap = self.ch(PRE_WINDOW_EV), self.ch(PRE_MIN_EV), self.ch(PRE_GAP_EV)
        self.n_post, self.n_look = self.ch(POST_WINDOW_EV), self.ch(LOOK_EV)
        self.n_windows = [self.ch(w) for w in SNR_WINDOWS_EV]
        self._hits: tuple[int, np.ndarray] | None = None

    def ch(self, ev: float) -> int:
        return max(int(round(ev / self.disp)), 1)

    def fit(self, lo: np.ndarray, hi: np.ndarray):
        """Weighted least squares log c = a + b log E on channels [lo, hi): a, b and their covariance."""
        sw, sx, sy, sxx, sxy = (cs[hi] - cs[lo] for cs in self.cums)
        det = np.maximum(sw * sxx - sx * sx, 1e-300)
        b = (sw * sxy - sx * sy) / det
        a = (sy - b * sx) / np.maximum(sw, 1e-300)
        return a, b, (sxx / det, -sx / det, sw / det)  # var a, cov ab, var b

    def excess(self, lo, hi, post):
        """(counts − background, σ) summed over the channels ``post`` (n, m) for fits on [lo, hi)."""
        a, b, (vaa, vab, vbb) = self.fit(lo, hi)
        bg = np.exp(a[:, None] + b[:, None] * self.x[post])
        sb, sbx = bg.sum(axis=1), (bg * self.x[post]).sum(axis=1)
        var = sb + self.extra * post.shape[1] + sb**2 * vaa + 2 * sb * sbx * vab + sbx**2 * vbb
        return self.c[post].sum(axis=1) - sb, np.sqrt(np.maximum(var, 1.0)), sb

    def first_excess(self, start: int, kmin: int) -> int | None:
        """First channel ≥ kmin whose post-window stands ≥ MIN_SNR σ above the fit below it."""
        if self._hits is None or self._hits[0] != start:
            i = np.arange(start + self.n_min + self.n_gap, self.e.size - self.n_post)
            lo, hi = np.maximum(start, i - self.n_gap - self.n_pre), i - self.n_gap
            b = self.fit(lo, hi)[1]
            ok = (-b >= EXPONENT_RANGE[0]) & (-b <= EXPONENT_RANGE[1])
            hit = np.zeros(i.size, dtype=bool)
            for n in self.n_windows:  # (windows that run past the spectrum's end do not count)
                post = np.minimum(i[:, None] + np.arange(n)[None, :], self.e.size - 1)
                ex, sig, _ = self.excess(lo, hi, post)
                hit |= (ex >= MIN_SNR * sig) & (i + n <= self.e.size)
            self._hits = (start, i[hit & ok])
        later = self._hits[1][self._hits[1] >= kmin]
        return int(later[0]) if later.size else None

    def edge_at(self, start: int, k: int) -> tuple[SpectralEdge | None, int]:
        """The edge whose excess was first seen at channel k: (edge or None, channel to resume at)."""
        e, onset_i = self.e, k
        for it in range(4):  # refit with the window just below the current onset
            hi = max(onset_i - self.n_gap, start + self.n_min)
            a, b, _ = self.fit(np.array([max(start, hi - self.n_pre)]), np.array([hi]))
            bg = np.exp(a[0] + b[0] * self.x)
            stop = min(e.size, k + self.n_post + self.n_look)
            onset, width = _rise(e, self.smooth - bg, hi, stop, it == 0)
            if width < SLOW_RISE_EV:  # a sharp rise: read it from the finer residual
                onset, _ = _rise(e, self.fine - bg, hi, stop, it == 0, TOP_FRACTION)
            new, onset_i = onset_i, int(np.searchsorted(e, onset))
            if it > 0 and abs(new - onset_i) <= 1:
                break
        j = hi + int(np.argmax((self.smooth - bg)[hi:stop]))
        resume = max(j + self.ch(SKIP_EV), k + 1)
        hi = np.array([onset_i - self.n_gap])
        if onset_i + 2 > e.size or hi[0] - start < self.n_min:
            return None, resume
        lo = np.maximum(start, hi - self.n_pre)
        best = -np.inf
        for n in self.n_windows:  # snr: the best of the windows
            post = np.arange(onset_i, min(onset_i + n, e.size))[None, :]
            ex, sig, _ = self.excess(lo, hi, post)
            best = max(best, float(ex[0] / sig[0]))
        post = np.arange(onset_i, min(onset_i + self.n_post, e.size))[None, :]
        ratio = float(self.c[post].sum() / max(self.excess(lo, hi, post)[2][0], 1e-12))
        if best < MIN_SNR:
            return None, resume
        r = -float(self.fit(lo, hi)[1][0])
        log.debug("edge %.1f eV: fit exponent %.2f on %.0f eV", onset, r, (hi[0] - lo[0]) * self.disp)
        if not EXPONENT_RANGE[0] <= r <= EXPONENT_RANGE[1]:
            return None, resume  # the fit window sits on a peak's tail, not on a background
        element, name = _match(onset)
        return SpectralEdge(onset_eV=onset, jump_ratio=ratio, snr=best, element=element, edge=name), resume


def _rise(
    e: np.ndarray, resid: np.ndarray, hi: int, stop: int, robust: bool, top_fraction: float = 1.0
) -> tuple[float, float]:
    """(onset_eV, 20-50 % rise width in eV) of the first rise of ``resid`` in channels [hi, stop).

    The rise ends at the first maximum reaching ``top_fraction`` of the largest excess (the
    first white line of several); it is crossed at 20 % and 50 % of that maximum and the
    line through the crossings meets zero at the onset. A crossing is the last channel below
    the level (biased late by noise); unless ``robust``, it is averaged with the first channel
    from which the level holds for ``HOLD_EV`` (biased early), so the biases cancel.
    """
    r, de = resid[hi:stop], float(e[1] - e[0])
    j0 = int(np.argmax(r >= top_fraction * r.max()))
    j = j0 + int(np.argmax(r[j0 : j0 + max(int(round(2.0 / de)), 1)]))
    r, top = r[: j + 1], r[j]
    hold = max(int(round(HOLD_EV / de)), 1)
    cross = []
    for f in (0.2, 0.5):
        below = np.flatnonzero(r < f * top)
        last = int(below[-1]) + 1 if below.size else 0
        first = last
        if not robust:
            held = ndimage.minimum_filter1d(r, hold, origin=-(hold // 2), mode="nearest") >= f * top
            first = min(int(np.argmax(held)), last) if held.any() else last
        cross.append(float(e[hi]) + 0.5 * (first + last) * de)
    e20, e50 = cross
    return max(e20 - (e50 - e20) * 0.2 / 0.3, float(e[hi])), e50 - e20


def _match(onset_eV: float) -> tuple[str | None, str | None]:
    """(element, edge) of the nearest table entry within ``MATCH_EV`` (delayed edges: more above)."""
    best, best_d = None, np.inf
    for ref in EDGE_TABLE:
        delayed = "delayed" in ref.source
        d = onset_eV - ref.onset_eV
        if -MATCH_EV <= d <= MATCH_EV + (DELAYED_MATCH_EV if delayed else 0.0):
            dist = abs(d - (DELAYED_OFFSET_EV if delayed else 0.0))
            if dist < best_d:
                best, best_d = ref, dist
    return (best.element, best.edge) if best is not None else (None, None)
