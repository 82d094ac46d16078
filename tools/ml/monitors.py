"""Monitors of an active-learning campaign: drift, out-of-distribution data, a stuck trajectory.

Each monitor's ``check``/``update`` returns a ``MonitorEvent`` when it finds something the
campaign (or an agent) should act on, else ``None``.

- Drift: phase correlation of a repeat survey image against the reference gives the
  content displacement (dx_nm, dy_nm); ``CandidateGrid.shifted(dx, dy)`` re-aims the
  candidates at the same features.
- Out-of-distribution: k-nearest-neighbour distance of new descriptors to the training
  descriptors, in units of the training set's own leave-one-out k-NN distance quantile.
- Stuck: no gain of the best-so-far beyond the noise, while the model (or the spread of
  the measurements) says the signal is indistinguishable from noise.
"""

from __future__ import annotations

import logging
import math

import numpy as np
from scipy.ndimage import zoom
from scipy.spatial import cKDTree

from autoscope.instruments.records import ImageRecord
from autoscope.tools.ml.base import FitReport, MonitorEvent

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- drift


def _upsampled_dft(spec: np.ndarray, region: int, factor: int, offset: np.ndarray) -> np.ndarray:
    """Inverse DFT of ``spec`` on a ``region``² grid of step 1/``factor`` px starting at ``offset`` (rows, cols).

    Matrix-multiply DFT (Guizar-Sicairos et al., Opt. Lett. 33, 156 (2008)): exact values of
    the correlation surface between pixels, without a zero-padded FFT.
    """
    n_r, n_c = spec.shape
    f_r = np.fft.fftfreq(n_r)
    f_c = np.fft.fftfreq(n_c)
    pos = np.arange(region) / factor
    k_r = np.exp(2j * np.pi * np.outer(pos + offset[0], f_r))  # (region, n_r)
    k_c = np.exp(2j * np.pi * np.outer(f_c, pos + offset[1]))  # (n_c, region)
    return k_r @ spec @ k_c / (n_r * n_c)


def _image_pair(reference: ImageRecord, repeat: ImageRecord) -> tuple[np.ndarray, np.ndarray]:
    if not math.isclose(reference.fov_nm, repeat.fov_nm, rel_tol=1e-9):
        raise ValueError(
            f"repeat: field of view {repeat.fov_nm:g} nm differs from the reference's {reference.fov_nm:g} nm"
        )
    a = np.asarray(reference.data, dtype=np.float64)
    b = np.asarray(repeat.data, dtype=np.float64)
    if b.shape != a.shape:
        # same field, other sampling: resample the repeat onto the reference's pixel grid (pixel edges aligned)
        b = zoom(
            b, (a.shape[0] / b.shape[0], a.shape[1] / b.shape[1]), order=1, grid_mode=True, mode="nearest"
        )
    return a, b


def estimate_shift(
    reference: ImageRecord, repeat: ImageRecord, upsample: int = 20, lowpass: float = 0.35
) -> tuple[float, float, float]:
    """(dx_nm, dy_nm, confidence): displacement of the content of ``repeat`` relative to ``reference``.

    A feature at pixel p of ``reference`` appears at p + shift in ``repeat`` (plus the change
    of scan centre, if the stage moved between the two). Phase correlation: mean removed,
    Hann window, normalised cross-power spectrum with a Gaussian low-pass (σ = ``lowpass`` ×
    Nyquist, which keeps shot noise from flattening the peak), integer peak, then sub-pixel
    refinement on an ``upsample``-times finer grid by matrix DFT (~0.05 px on clean data).
    ``confidence`` in [0, 1]: the correlation peak over its ideal value for a pure
    translation; above ~0.2 the match is solid, below ~0.05 it is noise.
    Both images must cover the same field of view (ValueError otherwise); different pixel
    counts are resampled bilinearly onto the reference grid.
    """
    a, b = _image_pair(reference, repeat)
    n_r, n_c = a.shape
    win = np.outer(np.hanning(n_r), np.hanning(n_c))
    fa = np.fft.fft2((a - a.mean()) * win)
    fb = np.fft.fft2((b - b.mean()) * win)
    cross = np.conj(fa) * fb
    mag = np.abs(cross)
    cross = np.where(mag > 0, cross / np.where(mag > 0, mag, 1.0), 0.0)
    fr = np.fft.fftfreq(n_r)[:, None] / 0.5
    fc = np.fft.fftfreq(n_c)[None, :] / 0.5
    weight = np.exp(-0.5 * (fr**2 + fc**2) / lowpass**2)
    spec = cross * weight
    corr = np.fft.ifft2(spec).real
    peak = np.unravel_index(int(np.argmax(corr)), corr.shape)
    shift = np.array(peak, dtype=np.float64)
    shift[0] -= n_r if shift[0] > n_r / 2 else 0
    shift[1] -= n_c if shift[1] > n_c / 2 else 0
    # refine on a 3 px box around the integer peak
    region = 3 * upsample + 1
    offset = shift - 1.5
    fine = _upsampled_dft(spec, region, upsample, offset).real
    i, j = np.unravel_index(int(np.argmax(fine)), fine.shape)
    shift = offset + np.array([i, j]) / upsample
    confidence = float(np.clip(fine[i, j] / weight.mean(), 0.0, 1.0))
    p = reference.pixel_size_nm
    dx = shift[1] * p + (repeat.center_x_nm - reference.center_x_nm)
    dy = shift[0] * p + (repeat.center_y_nm - reference.center_y_nm)
    return float(dx), float(dy), confidence


class DriftMonitor:
    """Fires when the content moved more than ``threshold_nm`` between reference and repeat image.

    Rule: event when |shift| > ``threshold_nm`` and confidence ≥ ``min_confidence``; the shift
    is then added to ``total_shift_nm`` (the correction the campaign should have applied to
    its candidates so far, if it re-aims them with ``grid.shifted`` and takes the repeat as
    the next reference). A confidence below ``min_confidence`` also gives an event (with
    ``reliable: False``) and corrects nothing: the field no longer matches the reference.
    """

    def __init__(self, threshold_nm: float, min_confidence: float = 0.1) -> None:
        if threshold_nm < 0:
            raise ValueError(f"threshold_nm must be >= 0, got {threshold_nm}")
        self.threshold_nm = float(threshold_nm)
        self.min_confidence = float(min_confidence)
        self.total_shift_nm: tuple[float, float] = (0.0, 0.0)
        self.last: tuple[float, float, float] | None = None

    def check(self, step: int, reference: ImageRecord, repeat: ImageRecord) -> MonitorEvent | None:
        dx, dy, conf = estimate_shift(reference, repeat)
        self.last = (dx, dy, conf)
        size = math.hypot(dx, dy)
        details = {
            "shift_nm": [dx, dy],
            "shift_magnitude_nm": size,
            "confidence": conf,
            "elapsed_s": repeat.t_start_s - reference.t_start_s,
        }
        if conf < self.min_confidence:
            log.warning("drift estimate unreliable (confidence %.3f) at step %d", conf, step)
            return MonitorEvent(
                kind="drift",
                step=step,
                message=f"repeat image does not match the reference (confidence {conf:.3f}); no correction",
                details={**details, "reliable": False, "total_shift_nm": list(self.total_shift_nm)},
            )
        if size <= self.threshold_nm:
            return None
        tx, ty = self.total_shift_nm
        self.total_shift_nm = (tx + dx, ty + dy)
        return MonitorEvent(
            kind="drift",
            step=step,
            message=f"sample drifted ({dx:+.2f}, {dy:+.2f}) nm; candidates need re-aiming",
            details={**details, "reliable": True, "total_shift_nm": list(self.total_shift_nm)},
        )


# ----------------------------------------------------------------------------- out of distribution


class OODMonitor:
    """Flags descriptors unlike those the model was trained on (local k-NN distance).

    For a point x with k nearest training descriptors N(x): r(x) = mean distance to N(x),
    ρ(x) = mean of the training points' own leave-one-out r over N(x) (how densely the
    training set fills that neighbourhood), and the raw score r(x)/ρ(x). The scale is the
    ``quantile`` of the raw leave-one-out scores of the training set, so
    score = raw / scale exceeds 1 for about (1 − quantile) of in-distribution points.
    The local density ρ matters: a survey is mostly bare support with rare, far-spread
    particle patches, and a global distance scale set by those would hide a whole cluster
    of new-looking patches near the dense part. ``check`` fires when more than
    ``min_fraction`` of the given points score above 1.
    """

    def __init__(self, quantile: float = 0.99, k: int = 5, min_fraction: float = 0.3) -> None:
        if not 0 < quantile < 1:
            raise ValueError(f"quantile must be in (0, 1), got {quantile}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.quantile, self.k, self.min_fraction = float(quantile), int(k), float(min_fraction)
        self._tree: cKDTree | None = None
        self._r_train: np.ndarray | None = None
        self.scale_: float | None = None

    def fit(self, train_features: np.ndarray) -> OODMonitor:
        x = np.asarray(train_features, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] <= self.k + 1:
            raise ValueError(f"fit needs a (n, d) array with n > k + 1 = {self.k + 1}, got {x.shape}")
        self._tree = cKDTree(x)
        d, idx = self._tree.query(x, k=self.k + 1)
        d, idx = d[:, 1:], idx[:, 1:]  # leave the point itself out
        r = d.mean(axis=1)
        self._r_train = np.maximum(r, 1e-12)
        raw = r / self._r_train[idx].mean(axis=1)
        self.scale_ = float(max(np.quantile(raw, self.quantile), 1e-12))
        return self

    def score(self, features: np.ndarray) -> np.ndarray:
        """(m,) scores; > 1 means farther from the training set than its own (quantile) spread."""
        if self._tree is None:
            raise RuntimeError("OODMonitor is not fitted")
        x = np.atleast_2d(np.asarray(features, dtype=np.float64))
        d, idx = self._tree.query(x, k=self.k)
        d, idx = d.reshape(x.shape[0], self.k), idx.reshape(x.shape[0], self.k)
        return d.mean(axis=1) / self._r_train[idx].mean(axis=1) / self.scale_

    def check(self, step: int, features: np.ndarray) -> MonitorEvent | None:
        s = self.score(features)
        frac = float(np.mean(s > 1.0))
        if frac <= self.min_fraction:
            return None
        return MonitorEvent(
            kind="ood",
            step=step,
            message=f"{100 * frac:.0f}% of {s.size} descriptors lie outside what the model has seen",
            details={"ood_fraction": frac, "median_score": float(np.median(s)), "n": int(s.size)},
        )


# ----------------------------------------------------------------------------- stuck trajectory


class StuckMonitor:
    """Detects a campaign that has stopped learning (the failure mode of hypothesis-free AE).

    Each ``update`` gives one measurement y, the model fit after it (or ``None`` when the
    campaign did not refit) and, preferably, the measurement's own noise ``y_sd`` (e.g.
    ``scalarizer.uncertainty(record)``). With at least ``window`` + 1 measurements in the
    episode, the trajectory is stuck when both hold:

    1. no gain: best-so-far now − best-so-far ``window`` measurements ago ≤ ``min_gain`` · σ;
    2. no information: the signal-to-noise ratio is below ``min_snr``, where SNR is, in
       order of preference,
       a. with ``y_sd`` given: var(y) / mean(y_sd²) − 1 over the whole episode (the spread
          of everything measured is at the measurement-noise floor: the scalarizer sees
          nothing; model-independent — a healthy campaign exploring a quiet area for a
          while, after it found signal elsewhere, is not stuck);
       b. with fit reports: the median outputscale / noise of the reports received during
          the window (the model explains nothing; note that an ARD GP on noise-only data
          can report 0.2–3, so a model-only rule is weaker);
       c. otherwise var(y) / ``noise_sd``² − 1 (needs ``noise_sd``).

    σ is the rms ``y_sd`` of the window (a), else √(noise) of the latest report × std of all
    y of the episode (reports are in standardised units) (b), else ``noise_sd`` (c).
    It fires once per episode: after an event it stays quiet until the SNR reaches
    2 · ``min_snr`` (hysteresis: the signal is clearly back) or ``reset()`` starts a new
    episode. A new best alone does not re-arm it: on noise the best-so-far keeps creeping
    up by chance. ``maximize=False`` minimises y.
    """

    def __init__(
        self,
        window: int = 15,
        min_gain: float = 1.0,
        min_snr: float = 1.0,
        noise_sd: float | None = None,
        maximize: bool = True,
    ) -> None:
        if window < 2:
            raise ValueError(f"window must be >= 2, got {window}")
        self.window, self.min_gain, self.min_snr = int(window), float(min_gain), float(min_snr)
        self.noise_sd, self.maximize = noise_sd, bool(maximize)
        self.reset()

    def reset(self) -> None:
        """Start a new episode (e.g. after the campaign changed scalarizer, region or plan)."""
        self._y: list[float] = []
        self._y_sd: list[float] = []  # NaN where not given
        self._best: list[float] = []
        self._snr: list[tuple[int, float]] = []  # (measurement index, outputscale / noise)
        self._noise_var: float | None = None  # of the latest report, standardised units
        self._fired = False

    def _noise(self) -> tuple[float | None, float | None]:
        """(σ, SNR) over the current window by the first rule that applies."""
        n, w = len(self._y), self.window
        recent = np.asarray(self._y[-w:])
        sds = np.asarray(self._y_sd[-w:])
        all_sds = np.asarray(self._y_sd)
        if np.isfinite(all_sds).all() and (all_sds > 0).all():
            every = np.asarray(self._y)
            return math.sqrt(float(np.mean(sds**2))), float(every.var(ddof=1) / np.mean(all_sds**2) - 1.0)
        snrs = [r for i, r in self._snr if i > n - w]
        if snrs and self._noise_var is not None:
            sigma = math.sqrt(max(self._noise_var, 0.0)) * float(np.std(self._y))
            return sigma, float(np.median(snrs))
        if self.noise_sd is not None:
            return self.noise_sd, float(recent.var(ddof=1) / max(self.noise_sd**2, 1e-300) - 1.0)
        return None, None

    def update(
        self, step: int, y: float, report: FitReport | None, y_sd: float | None = None
    ) -> MonitorEvent | None:
        if not math.isfinite(y):
            return None
        v = y if self.maximize else -y
        self._y.append(v)
        self._y_sd.append(math.nan if y_sd is None else float(y_sd))
        self._best.append(max(v, self._best[-1]) if self._best else v)
        n = len(self._y)
        if report is not None:
            self._noise_var = report.noise
            self._snr.append((n, report.outputscale / max(report.noise, 1e-12)))
        if n <= self.window:
            return None
        sigma, snr = self._noise()
        if sigma is None or snr is None:
            return None
        gain = self._best[-1] - self._best[-1 - self.window]
        no_gain = gain <= self.min_gain * sigma
        no_info = snr < self.min_snr
        if self._fired:
            if snr >= 2.0 * self.min_snr:
                self._fired = False  # clear signal again: a later stall is a new episode
            return None
        if not (no_gain and no_info):
            return None
        self._fired = True
        best = self._best[-1] if self.maximize else -self._best[-1]
        return MonitorEvent(
            kind="stuck",
            step=step,
            message=(
                f"no gain over the last {self.window} measurements and the signal is at the noise "
                f"floor (SNR {snr:.2f} < {self.min_snr:g}); change the scalarizer, region or plan"
            ),
            details={
                "best_so_far": best,
                "gain": gain,
                "noise_sd": sigma,
                "snr": snr,
                "window": self.window,
                "n_measurements": n,
            },
        )
