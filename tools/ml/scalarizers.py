"""Scalarizers: one number per measured spectrum, the target the surrogate model learns.

Each scalarizer is a small, typed, serialisable pydantic model with a ``kind`` tag, so an
agent can choose and parameterise one as data (``parse_scalarizer(dict)``) and a plan can
store it. Calling one on a ``SpectrumRecord`` returns a float; energy windows outside the
record's axis raise ``ValueError`` naming the field.

Conventions: energies in eV (energy loss); ``normalize="dose"`` divides counts by the
electrons delivered (``record.dose_e``), so a change of dwell or current does not pass for
signal; smoothing is Gaussian with standard deviation ``smooth_eV``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Annotated, Any, Literal, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator
from scipy.ndimage import gaussian_filter1d

from autoscope.instruments.records import ENERGY_MAX_EV, ENERGY_MIN_EV, SpectrumRecord

log = logging.getLogger(__name__)

#: bounds every energy field must respect (the request range of ``SpectrumRequest``)
_E_MIN, _E_MAX = ENERGY_MIN_EV, ENERGY_MAX_EV
EnergyEV = Annotated[float, Field(ge=_E_MIN, le=_E_MAX, allow_inf_nan=False)]


def _window(record: SpectrumRecord, lo: float, hi: float, field: str) -> np.ndarray:
    """Indices of channels in [lo, hi]; ValueError naming ``field`` when the window leaves the axis."""
    e = record.energy_eV
    half = record.dispersion_eV / 2
    if lo < e[0] - half or hi > e[-1] + half:
        raise ValueError(
            f"{field}: window {lo:g}–{hi:g} eV lies outside the spectrum's axis {e[0]:g}–{e[-1]:g} eV"
        )
    idx = np.flatnonzero((e >= lo) & (e <= hi))
    if idx.size < 2:
        raise ValueError(f"{field}: window {lo:g}–{hi:g} eV holds fewer than 2 channels")
    return idx


def _smooth(counts: np.ndarray, smooth_eV: float, dispersion_eV: float) -> np.ndarray:
    sigma = smooth_eV / dispersion_eV
    return gaussian_filter1d(counts, sigma, axis=-1, mode="nearest") if sigma > 0.3 else counts


def _norm_factor(record: SpectrumRecord, normalize: str) -> float:
    """What the counts are multiplied by: 1/electrons (``dose``), 1/their sum (``total``), or 1."""
    if normalize == "dose":
        return 1.0 / record.dose_e
    if normalize == "total":
        return 1.0 / max(float(np.sum(record.counts)), 1e-300)
    return 1.0


#: a pre-edge fit rising by more than this many standard errors of its slope is refused
RISING_SE = 3.0


def _power_law_fits(e: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, float, list[str | None]]:
    """Poisson power-law fits of each row of ``c`` (n, k) at energies ``e`` (k,): (β (n, 2) of
    log μ = β₀ + β₁·(log E − mean log E), mean log E, the reason each row's fit is refused or None)."""
    c = np.asarray(c, dtype=np.float64)
    n = c.shape[0]
    problems: list[str | None] = [None] * n
    if np.any(e <= 0):
        return np.full((n, 2), np.nan), math.nan, [_FEW] * n
    x = np.log(e)
    d = x - x.mean()  # centred design: the intercept is at the window's mean log E
    ok = c > 0
    few = ok.sum(axis=1) < 3
    # start: the log-log least-squares line, weighted by the counts (their Poisson variances)
    w = np.where(ok, c, 0.0)
    lc = np.log(np.where(ok, c, 1.0))
    with np.errstate(invalid="ignore", divide="ignore"):
        sw = w.sum(axis=1)
        dw, yw = (w * d).sum(axis=1) / sw, (w * lc).sum(axis=1) / sw
        slope = (w * (d - dw[:, None]) * (lc - yw[:, None])).sum(axis=1) / (
            w * (d - dw[:, None]) ** 2
        ).sum(axis=1)
    beta = np.column_stack([yw - slope * dw, slope])
    # Newton (= Fisher scoring for the log link) on each row's 2×2 Poisson information, in closed form
    active = ~few
    converged = np.zeros(n, dtype=bool)
    for _ in range(25):
        if not active.any():
            break
        b = beta[active]
        mu = np.exp(np.clip(b[:, :1] + b[:, 1:] * d, -700, 700))
        r = c[active] - mu
        s0, s1, s2 = mu.sum(axis=1), (mu * d).sum(axis=1), (mu * d * d).sum(axis=1)
        g0, g1 = r.sum(axis=1), (r * d).sum(axis=1)
        det = s0 * s2 - s1 * s1
        good = det > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            step = np.column_stack([s2 * g0 - s1 * g1, s0 * g1 - s1 * g0]) / det[:, None]
        step[~good] = 0.0
        beta[active] = b + step
        rows = np.flatnonzero(active)
        done = good & (np.max(np.abs(step), axis=1) < 1e-10)
        converged[rows[done]] = True
        active[rows[~good | done]] = False
    mu = np.exp(np.clip(beta[:, :1] + beta[:, 1:] * d, -700, 700))
    s0, s1, s2 = mu.sum(axis=1), (mu * d).sum(axis=1), (mu * d * d).sum(axis=1)
    det = s0 * s2 - s1 * s1
    with np.errstate(invalid="ignore", divide="ignore"):
        # Var(slope) from the Poisson information of (log A, -r); NaN where it is singular
        slope_se = np.sqrt(np.where(det > 0, s0 / np.where(det > 0, det, 1.0), np.nan))
    for i in range(n):
        if few[i]:
            problems[i] = _FEW
        elif not (converged[i] and np.all(np.isfinite(beta[i])) and np.isfinite(slope_se[i])):
            problems[i] = (
                "power-law background: the fit over the pre-edge window does not converge in 25 steps "
                "(its counts follow no power law: read noise about zero?)"
            )
        elif beta[i, 1] > RISING_SE * slope_se[i]:
            problems[i] = (
                f"power-law background: the counts rise over the pre-edge window (r = {-beta[i, 1]:.3g} ± "
                f"{slope_se[i]:.2g}; a background falls): it holds signal or is not counts (dark-subtracted?)"
            )
    return beta, float(x.mean()), problems


_FEW = "power-law background: fewer than 3 positive channels in the pre-edge window"


def power_law_backgrounds(
    energy_eV: np.ndarray, counts: np.ndarray, pre: np.ndarray
) -> tuple[np.ndarray, list[str | None]]:
    """``power_law_background`` of each row of ``counts`` (n, channels) at once: (the backgrounds
    (n, channels), NaN in a row whose fit is refused; the reason for each refusal or None)."""
    counts = np.asarray(counts, dtype=np.float64)
    beta, xm, problems = _power_law_fits(energy_eV[pre], counts[:, pre])
    out = np.zeros(counts.shape, dtype=np.float64)
    pos = energy_eV > 0
    out[:, pos] = np.exp(beta[:, :1] + beta[:, 1:] * (np.log(energy_eV[pos]) - xm))
    out[[p is not None for p in problems]] = np.nan
    return out, problems


def power_law_background(energy_eV: np.ndarray, counts: np.ndarray, pre: np.ndarray) -> np.ndarray:
    """A·E^-r fitted to ``counts[pre]`` by Poisson maximum likelihood, evaluated on the whole axis.

    The fit is a log-link Poisson regression of the counts on log E (Newton's method on the 2×2
    Poisson information, started from the count-weighted log-log least-squares line), so channels
    with zero counts take part: a log-log fit has to drop them, which biases the background
    upward — and the signal above it downward — when a channel holds a few counts. The estimating
    equations are unchanged by a constant scale, so dose-normalised counts fit the same way; pass
    raw counts for the check below to read them as Poisson.
    ValueError when fewer than 3 channels of the window are positive or E ≤ 0, when Newton's method
    does not converge in 25 steps (read noise about zero, where an unconverged fit extrapolates to
    anything), and when the fitted counts *rise* with energy by more than ``RISING_SE`` standard errors of the slope:
    a background falls (A·E^-r, r > 0), so a significantly rising pre-edge window holds
    signal, an artefact or dark-subtracted data, and extrapolating it under the band gives
    numbers that mean nothing (on a real dark-subtracted EELS map, −0.7 to −3.6·10¹⁹ against
    band signals of 10⁻⁴).
    """
    out, problems = power_law_backgrounds(energy_eV, np.asarray(counts, dtype=np.float64)[None], pre)
    if problems[0] is not None:
        raise ValueError(problems[0])
    return out[0]


def _linear_background(e: np.ndarray, y: np.ndarray, idx: np.ndarray, edge_channels: int = 3) -> np.ndarray:
    """Straight line through the means of the first and last ``edge_channels`` of the window
    (``y``: one spectrum, or spectra along the last axis)."""
    k = max(1, min(edge_channels, idx.size // 3))
    a, b = idx[:k], idx[-k:]
    e0, e1 = e[a].mean(), e[b].mean()
    y0, y1 = y[..., a].mean(axis=-1, keepdims=True), y[..., b].mean(axis=-1, keepdims=True)
    return y0 + (y1 - y0) * (e[idx] - e0) / (e1 - e0)


def require_kind(schema: dict) -> None:
    """JSON schema: ``kind`` is required (it tags a union), though the model has it as a default;
    grammar-constrained decoders otherwise may leave it out."""
    required = schema.setdefault("required", [])
    if "kind" in schema.get("properties", {}) and "kind" not in required:
        required.insert(0, "kind")


class _Scalarizer(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", json_schema_extra=require_kind)

    def __call__(self, record: SpectrumRecord) -> float:  # pragma: no cover - overridden
        raise NotImplementedError

    def uncertainty(self, record: SpectrumRecord, n_draws: int = 32, seed: int = 0) -> float:
        """Shot-noise standard deviation of the value (parametric bootstrap).

        The value is recomputed on ``n_draws`` Poisson redraws of the measured counts
        (read noise neglected); deterministic for a given ``seed``. NaN draws, and draws the
        value cannot be computed for (a background fit a redraw makes rise), are ignored.
        """
        rng = np.random.default_rng(seed)
        lam = np.clip(np.asarray(record.counts, np.float64), 0.0, None)
        vals = self.values_of_draws(record, rng.poisson(lam, size=(n_draws, lam.size)).astype(np.float64))
        vals = vals[np.isfinite(vals)]
        return float(vals.std(ddof=1)) if vals.size > 1 else math.nan

    def _one(self, record: SpectrumRecord) -> float:
        """The value of one spectrum through a scalarizer's rows path (``_rows(record, counts)`` →
        (values, the reason each has none or None)); ValueError with the reason."""
        values, problems = self._rows(record, np.asarray(record.counts, dtype=np.float64)[None])
        if problems[0] is not None:
            raise ValueError(problems[0])
        return float(values[0])

    def values_of_draws(self, record: SpectrumRecord, draws: np.ndarray) -> np.ndarray:
        """The value of ``record`` with its counts replaced by each row of ``draws`` (n, channels);
        NaN where it cannot be computed. A scalarizer may do the rows at once; the same as one by one."""

        def one(counts: np.ndarray) -> float:
            try:
                return self(dataclasses.replace(record, counts=counts))
            except ValueError:
                return math.nan

        return np.array([one(row) for row in draws], dtype=np.float64)

    def describe(self) -> str:  # pragma: no cover - overridden
        raise NotImplementedError


def _ordered(lo: float, hi: float, lo_name: str, hi_name: str) -> None:
    if not lo < hi:
        raise ValueError(f"{hi_name} ({hi:g} eV) must be greater than {lo_name} ({lo:g} eV)")


class BandIntensity(_Scalarizer):
    """Signal in an energy band: integral (counts·eV) or maximum, optionally background-subtracted.

    Backgrounds: ``linear`` — a straight line through the first and last 3 channels of the
    band; ``power_law`` — A·E^-r fitted on the pre-window [pre_lo_eV, pre_hi_eV] (default:
    the half-band-wide window just below ``lo_eV``). ``max`` takes the maximum of the
    spectrum smoothed with ``smooth_eV``.
    """

    kind: Literal["band_intensity"] = "band_intensity"
    lo_eV: EnergyEV
    hi_eV: EnergyEV
    reduce: Literal["max", "integral"] = "integral"
    background: Literal["none", "linear", "power_law"] = "none"
    normalize: Literal["none", "total", "dose"] = "dose"
    pre_lo_eV: EnergyEV | None = None
    pre_hi_eV: EnergyEV | None = None
    smooth_eV: float = Field(0.0, ge=0, le=100)

    @model_validator(mode="after")
    def _check(self) -> BandIntensity:
        _ordered(self.lo_eV, self.hi_eV, "lo_eV", "hi_eV")
        if self.background == "power_law":
            lo, hi = self.pre_window()
            _ordered(lo, hi, "pre_lo_eV", "pre_hi_eV")
            if lo <= 0:
                raise ValueError(f"pre_lo_eV: a power-law background needs positive energies, got {lo:g} eV")
            if hi > self.lo_eV:
                raise ValueError("pre_hi_eV must not exceed lo_eV: the pre-window lies below the band")
        return self

    def pre_window(self) -> tuple[float, float]:
        width = 0.5 * (self.hi_eV - self.lo_eV)
        lo = self.pre_lo_eV if self.pre_lo_eV is not None else self.lo_eV - width
        hi = self.pre_hi_eV if self.pre_hi_eV is not None else self.lo_eV
        return lo, hi

    def __call__(self, record: SpectrumRecord) -> float:
        return self._one(record)

    def values_of_draws(self, record: SpectrumRecord, draws: np.ndarray) -> np.ndarray:
        return self._rows(record, draws)[0]

    def _rows(self, record: SpectrumRecord, counts: np.ndarray) -> tuple[np.ndarray, list[str | None]]:
        """The value of each row of ``counts`` (n, channels) as the counts of ``record``, and why
        a row has none (a refused background fit) or None."""
        idx = _window(record, self.lo_eV, self.hi_eV, "lo_eV/hi_eV")
        e = record.energy_eV
        if self.normalize == "total":
            factor = 1.0 / np.maximum(counts.sum(axis=1), 1e-300)
        else:
            factor = np.full(len(counts), _norm_factor(record, self.normalize))
        y = counts * factor[:, None]
        problems: list[str | None] = [None] * len(counts)
        if self.background == "power_law":
            pre = _window(record, *self.pre_window(), "pre_lo_eV/pre_hi_eV")
            # fitted on the counts as detected (their Poisson errors), then normalised like y
            bg, problems = power_law_backgrounds(e, counts, pre)
            sig = y[:, idx] - factor[:, None] * bg[:, idx]
        elif self.background == "linear":
            sig = y[:, idx] - _linear_background(e, y, idx)
        else:
            sig = y[:, idx]
        if self.reduce == "integral":
            return sig.sum(axis=1) * record.dispersion_eV, problems
        return _smooth(sig, self.smooth_eV, record.dispersion_eV).max(axis=1), problems

    def describe(self) -> str:
        bg = "" if self.background == "none" else f", {self.background} background"
        return f"{self.reduce} of {self.lo_eV:g}–{self.hi_eV:g} eV{bg}, normalised by {self.normalize}"


class PeakPosition(_Scalarizer):
    """Energy (eV) of the strongest peak in [lo_eV, hi_eV]: smoothed, straight-line baseline
    through the window's ends removed, parabolic refinement of the maximum (sub-channel)."""

    kind: Literal["peak_position"] = "peak_position"
    lo_eV: EnergyEV
    hi_eV: EnergyEV
    smooth_eV: float = Field(0.05, ge=0, le=100)
    baseline: Literal["none", "linear"] = "linear"

    @model_validator(mode="after")
    def _check(self) -> PeakPosition:
        _ordered(self.lo_eV, self.hi_eV, "lo_eV", "hi_eV")
        return self

    def __call__(self, record: SpectrumRecord) -> float:
        idx = _window(record, self.lo_eV, self.hi_eV, "lo_eV/hi_eV")
        if idx.size < 3:
            raise ValueError("lo_eV/hi_eV: a peak window needs at least 3 channels")
        e = record.energy_eV
        y = _smooth(np.asarray(record.counts, np.float64), self.smooth_eV, record.dispersion_eV)
        s = y[idx] - (_linear_background(e, y, idx) if self.baseline == "linear" else 0.0)
        i = int(np.argmax(s))
        if 0 < i < s.size - 1:
            a, b, c = s[i - 1], s[i], s[i + 1]
            den = a - 2 * b + c
            frac = 0.5 * (a - c) / den if den < 0 else 0.0
            return float(e[idx[i]] + np.clip(frac, -0.5, 0.5) * record.dispersion_eV)
        return float(e[idx[i]])

    def describe(self) -> str:
        return f"energy of the strongest peak in {self.lo_eV:g}–{self.hi_eV:g} eV"


class PeakRatio(_Scalarizer):
    """Integral of band A divided by integral of band B (dimensionless; NaN when B ≤ 0)."""

    kind: Literal["peak_ratio"] = "peak_ratio"
    a_lo_eV: EnergyEV
    a_hi_eV: EnergyEV
    b_lo_eV: EnergyEV
    b_hi_eV: EnergyEV
    background: Literal["none", "linear"] = "none"

    @model_validator(mode="after")
    def _check(self) -> PeakRatio:
        _ordered(self.a_lo_eV, self.a_hi_eV, "a_lo_eV", "a_hi_eV")
        _ordered(self.b_lo_eV, self.b_hi_eV, "b_lo_eV", "b_hi_eV")
        return self

    def _band(self, record: SpectrumRecord, lo: float, hi: float, name: str) -> float:
        idx = _window(record, lo, hi, name)
        y = np.asarray(record.counts, np.float64)
        sig = y[idx] - (_linear_background(record.energy_eV, y, idx) if self.background == "linear" else 0.0)
        return float(sig.sum())

    def __call__(self, record: SpectrumRecord) -> float:
        a = self._band(record, self.a_lo_eV, self.a_hi_eV, "a_lo_eV/a_hi_eV")
        b = self._band(record, self.b_lo_eV, self.b_hi_eV, "b_lo_eV/b_hi_eV")
        if b <= 0:
            log.warning(
                "peak ratio: band B integral %.3g ≤ 0 at (%.1f, %.1f) nm", b, record.x_nm, record.y_nm
            )
            return math.nan
        return a / b

    def describe(self) -> str:
        return (
            f"ratio of {self.a_lo_eV:g}–{self.a_hi_eV:g} eV to {self.b_lo_eV:g}–{self.b_hi_eV:g} eV integrals"
        )


class EdgeOnset(_Scalarizer):
    """Onset energy (eV) of a core-loss edge, or its shift from ``reference_eV``.

    Rule: subtract A·E^-r fitted on [pre_lo_eV, pre_hi_eV]; smooth with ``smooth_eV`` (so a
    noise excursion before the edge stays well below the level); take the maximum M of the
    smoothed signal in [lo_eV, hi_eV] (choose ``hi_eV`` just past the edge's first peak, so
    M is the near-edge maximum); the onset is the first energy in the window where the
    signal reaches ``fraction``·M and stays at or above it for 2 × ``smooth_eV`` (at least 3
    channels), interpolated linearly between channels — a noise excursion above the level
    before the edge, which falls back at once, does not count (for a noise-free edge that
    rises steadily this is its first crossing).
    """

    kind: Literal["edge_onset"] = "edge_onset"
    lo_eV: EnergyEV
    hi_eV: EnergyEV
    pre_lo_eV: EnergyEV
    pre_hi_eV: EnergyEV
    fraction: float = Field(0.5, gt=0, lt=1)
    smooth_eV: float = Field(0.3, ge=0, le=100)
    reference_eV: EnergyEV | None = None

    @model_validator(mode="after")
    def _check(self) -> EdgeOnset:
        _ordered(self.lo_eV, self.hi_eV, "lo_eV", "hi_eV")
        _ordered(self.pre_lo_eV, self.pre_hi_eV, "pre_lo_eV", "pre_hi_eV")
        if self.pre_lo_eV <= 0:
            raise ValueError(
                f"pre_lo_eV: a power-law background needs positive energies, got {self.pre_lo_eV:g}"
            )
        if self.pre_hi_eV > self.hi_eV:
            raise ValueError("pre_hi_eV must lie below hi_eV: the pre-edge window precedes the edge")
        return self

    def __call__(self, record: SpectrumRecord) -> float:
        return self._one(record)

    def onset_eV(self, record: SpectrumRecord) -> float:
        """The onset energy itself (``reference_eV`` added back)."""
        return self._one(record) + (self.reference_eV or 0.0)

    def values_of_draws(self, record: SpectrumRecord, draws: np.ndarray) -> np.ndarray:
        return self._rows(record, draws)[0]

    def _rows(self, record: SpectrumRecord, counts: np.ndarray) -> tuple[np.ndarray, list[str | None]]:
        """The onset (less ``reference_eV``) of each row of ``counts`` (n, channels) as the counts of
        ``record`` (NaN where the background fit is refused), and the reasons."""
        idx = _window(record, self.lo_eV, self.hi_eV, "lo_eV/hi_eV")
        pre = _window(record, self.pre_lo_eV, self.pre_hi_eV, "pre_lo_eV/pre_hi_eV")
        e = record.energy_eV
        bg, problems = power_law_backgrounds(e, counts, pre)
        sigs = _smooth(counts - bg, self.smooth_eV, record.dispersion_eV)[:, idx]
        es = e[idx]
        hold = max(3, int(round(2 * self.smooth_eV / record.dispersion_eV)))
        out = np.full(len(counts), np.nan)
        for r, s in enumerate(sigs):
            if problems[r] is not None:
                continue
            level = self.fraction * s.max()
            above = s >= level
            # the first channel from which the signal stays at or above the level for `hold` channels
            runs = np.convolve(above.astype(int), np.ones(hold, dtype=int), mode="full")[hold - 1 :]
            lasting = np.flatnonzero((runs >= min(hold, above.size)) & above)
            i = int(lasting[0]) if lasting.size else int(np.argmax(above))
            if i == 0:
                out[r] = es[0]
            else:
                out[r] = es[i - 1] + (level - s[i - 1]) * (es[i] - es[i - 1]) / (s[i] - s[i - 1])
        return (out - self.reference_eV if self.reference_eV is not None else out), problems

    def describe(self) -> str:
        ref = f" minus {self.reference_eV:g} eV" if self.reference_eV is not None else ""
        return (
            f"onset ({self.fraction:g} of max) of the edge in {self.lo_eV:g}–{self.hi_eV:g} eV{ref}, "
            f"power-law background from {self.pre_lo_eV:g}–{self.pre_hi_eV:g} eV"
        )


Scalarizer = Annotated[
    Union[BandIntensity, PeakPosition, PeakRatio, EdgeOnset],  # noqa: UP007 - a discriminated union
    Field(discriminator="kind"),
]
_ADAPTER: TypeAdapter[Scalarizer] = TypeAdapter(Scalarizer)


def parse_scalarizer(data: dict[str, Any] | str) -> Scalarizer:
    """A scalarizer from its dict (or JSON text); pydantic's ValidationError (a ValueError) names the field."""
    if isinstance(data, str):
        return _ADAPTER.validate_json(data)
    return _ADAPTER.validate_python(data)


def scalarizer_schema() -> dict[str, Any]:
    """JSON schema of the union (for tool descriptions)."""
    return _ADAPTER.json_schema()
