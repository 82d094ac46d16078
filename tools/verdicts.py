"""Verdicts with uncertainty: the effect a prediction names, estimated without the active learner's bias.

The data are spectra taken where the plan's design put them, not where a model expected
signal: an audit draws each stratum's positions uniformly at random from the class's
population in the survey map, and a sites step measures the sites of a class (all of
them, or a seeded random subset). The sample mean of a stratum is therefore an unbiased
estimate of the class mean, and the effect θ of ``tools/predictions.py`` (a linear
combination of class means, or Spearman's ρ over features) gets a confidence interval:

- linear effects (localized_at, contrast, shift): θ̂ = Σ c_k m̄_k, SE² = Σ c_k² s_k² / n_k,
  Welch–Satterthwaite degrees of freedom, a t interval; energies (peak positions, edge
  onsets) use 20 % trimmed means with winsorized variances (Yuen), since a noisy spectrum
  now and then puts an onset far from the rest;
- uniform: every pair's log ratio (energies: difference) by the delta method, Bonferroni
  over pairs; supported when every pair lies inside the allowed band, refuted when one
  pair lies outside it;
- trend: Spearman's ρ over features with the Fisher z interval (SE 1.06/√(n − 3)).

The outcome is ``supported`` when the interval lies above 0 (in θ's units), ``refuted``
when it lies below, and ``inconclusive`` when it straddles 0 or a stratum has fewer
than two finite values: never a bare threshold crossing. The active learner's spectra are
not used here: they map the signal, they do not estimate class means.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field
from scipy import stats

from autoscope.tools.predictions import Contrast, Identity, LocalizedAt, Shift, Trend, Uniform

Outcome = Literal["supported", "refuted", "inconclusive"]
LEVEL = 0.95
#: interval level an adaptive (discriminating) audit must reach before it stops early:
#: stricter than LEVEL, so repeated looks keep the error rate near that of one look
SEQUENTIAL_LEVEL = 0.99
#: energies (peak positions, edge onsets) are located by 20 % trimmed means (Yuen 1974)
ENERGY_TRIM = 0.2


class ClassEstimate(BaseModel):
    """A stratum's location (mean, or trimmed mean for energies) with its spread and interval.

    ``sd`` is the spread that gives the location's standard error as sd/√n (for a trimmed mean,
    from the winsorized variance); ``df`` the degrees of freedom of its t interval.
    """

    cls: str
    n: int
    mean: float | None
    sd: float | None
    df: float | None = None
    population: int | None = Field(None, description="members of the class (None: unknown, treated as many)")
    ci_low: float | None = None
    ci_high: float | None = None


class Verdict(BaseModel):
    """A computed verdict: the effect's estimate, its interval, the outcome and the evidence."""

    hypothesis_id: str
    outcome: Outcome
    prediction: str = Field(description="the prediction kind")
    claim: str = ""
    null: str = ""
    statistic: str = Field(description="what θ is, in words")
    estimate: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    level: float = LEVEL
    readable: str = Field("", description="the estimate in the prediction's own terms (a ratio, a shift)")
    measurements: int = 0
    by_class: list[ClassEstimate] = []
    evidence: list[str] = []
    theory: dict | None = None
    figure: str | None = None
    author: str = "analysis (computed)"


class Effect(BaseModel):
    """θ̂ with its interval and what it means."""

    outcome: Outcome
    statistic: str
    estimate: float | None
    ci_low: float | None
    ci_high: float | None
    readable: str
    reason: str = ""


def class_estimates(
    data: Mapping[str, Sequence[float]],
    level: float = LEVEL,
    *,
    trim: float = 0.0,
    noise: Mapping[str, Sequence[float]] | None = None,
    population: Mapping[str, int] | None = None,
) -> dict[str, ClassEstimate]:
    """Location, spread and t interval of each stratum's finite values.

    ``noise`` (the measurement sd of each value, e.g. its shot noise) and ``population`` (the
    class's size N) make the interval design-based for a finite class: SE² = (1 − n/N)·S²/n +
    σ̄²/n, with S² the spread of the true values (observed spread less the measurement noise).
    When every member was measured (a census of a class's sites) only the measurement noise
    remains; without N the class counts as infinite and SE² = s²/n, as usual.
    ``trim`` > 0: Yuen's trimmed mean (that fraction cut from each end) with the winsorized
    variance, robust to the occasional spectrum whose value noise threw far off (an edge
    onset found on a noise excursion).
    """
    out = {}
    for cls, values in data.items():
        raw = np.asarray(values, dtype=np.float64)
        keep = np.isfinite(raw)
        y = np.sort(raw[keep])
        n = int(y.size)
        if n == 0:
            out[cls] = ClassEstimate(cls=cls, n=0, mean=None, sd=None)
            continue
        g = int(math.floor(trim * n)) if n >= 5 else 0
        h = n - 2 * g
        mean = float(y[g : n - g].mean())
        sd = df = lo = hi = None
        big_n = (population or {}).get(cls)
        sig = np.asarray((noise or {}).get(cls, []), dtype=np.float64)
        if g == 0 and big_n and sig.size == raw.size and np.all(np.isfinite(sig[keep])) and n > 1:
            meas2 = float(np.mean(sig[keep] ** 2))
            spread2 = max(float(y.var(ddof=1)) - meas2, 0.0)
            sampling = (1.0 - min(n / big_n, 1.0)) * spread2 / n
            se = math.sqrt(sampling + meas2 / n)
            df = 1e6 if sampling <= 0 else max(float(n - 1), (n - 1) * (se**2 / sampling) ** 2)
            sd = se * math.sqrt(n)
        elif h > 1:
            w = np.clip(y, y[g], y[n - 1 - g])
            se = math.sqrt(float(w.var(ddof=1)) * (n - 1) / (h * (h - 1)))
            sd, df = se * math.sqrt(n), float(h - 1)
        if sd is not None:
            half = stats.t.ppf(0.5 + level / 2, df) * sd / math.sqrt(n)
            lo, hi = mean - half, mean + half
        out[cls] = ClassEstimate(
            cls=cls, n=n, mean=mean, sd=sd, df=df, ci_low=lo, ci_high=hi, population=big_n
        )
    return out


def linear_coefficients(p, ests: Mapping[str, ClassEstimate]) -> dict[str, float]:
    """θ = Σ c_k μ_k (+ a constant): the coefficient of each class mean for the linear predictions."""
    if isinstance(p, LocalizedAt):
        return {p.at: 1.0, p.versus: -p.min_ratio}
    if isinstance(p, Contrast):
        hi, lo = (p.a, p.b) if p.direction == "higher" else (p.b, p.a)
        return {hi: 1.0, lo: -p.min_ratio}
    if isinstance(p, Shift):
        s = 1.0 if p.direction == "up" else -1.0
        return {p.b: s, p.a: -s}
    if isinstance(p, Uniform):  # the worst pair, by the delta method on log means (or plain differences)
        i, j = _worst_pair(p, ests)
        mi, mj = ests[i].mean or 1.0, ests[j].mean or 1.0
        return {i: 1.0 / mi, j: -1.0 / mj}
    raise TypeError(f"{type(p).__name__} is not a linear prediction")


def _worst_pair(p: Uniform, ests: Mapping[str, ClassEstimate]) -> tuple[str, str]:
    means = {c: ests[c].mean for c in p.over if ests[c].mean is not None}
    if len(means) < 2:
        return p.over[0], p.over[1]
    hi = max(means, key=means.get)
    lo = min(means, key=means.get)
    return hi, lo


def welch_t(coef: Mapping[str, float], ests: Mapping[str, ClassEstimate]):
    """(estimate, standard error, Welch–Satterthwaite degrees of freedom) of Σ c_k m̄_k; None when a
    stratum lacks data (fewer than 2 values or no spread); df is inf when the error is 0."""
    if any(c not in ests or ests[c].n < 2 or ests[c].sd is None for c in coef):
        return None
    var = {c: (k * k) * ests[c].sd ** 2 / ests[c].n for c, k in coef.items()}
    se2 = sum(var.values())
    est = sum(k * ests[c].mean for c, k in coef.items())
    if se2 <= 0:
        return est, 0.0, math.inf
    df = se2**2 / sum(v * v / (ests[c].df or ests[c].n - 1) for c, v in var.items() if v > 0)
    return est, math.sqrt(se2), df


def _welch(coef: Mapping[str, float], ests: Mapping[str, ClassEstimate], level: float):
    """(estimate, standard error, interval half-width) of Σ c_k m̄_k; None when a stratum lacks data."""
    w = welch_t(coef, ests)
    if w is None:
        return None
    est, se, df = w
    if se <= 0:
        return est, 0.0, 0.0
    return est, se, float(stats.t.ppf(0.5 + level / 2, df)) * se


def linear_effect(
    coef: Mapping[str, float], ests: Mapping[str, ClassEstimate], level: float = LEVEL
) -> Effect:
    """θ = Σ c_k μ_k from per-class estimates with its Welch interval (a question's contrast that no
    prediction kind states, e.g. a plain difference with no margin); inconclusive without data."""
    missing = [c for c in coef if c not in ests or ests[c].n < 2 or ests[c].sd is None]
    if missing:
        return _undecided("linear", f"fewer than 2 usable spectra in {', '.join(missing)}")
    est, _, half = _welch(coef, ests, level)
    lo, hi = est - half, est + half
    return Effect(
        outcome=_outcome(lo, hi), statistic="linear", estimate=est, ci_low=lo, ci_high=hi, readable=""
    )


def _outcome(lo: float, hi: float) -> Outcome:
    return "supported" if lo > 0 else ("refuted" if hi < 0 else "inconclusive")


def judge(
    p,
    data: Mapping[str, Sequence[float]],
    *,
    energy: bool = False,
    features: Sequence[tuple[float, float]] = (),
    level: float = LEVEL,
    noise: Mapping[str, Sequence[float]] | None = None,
    population: Mapping[str, int] | None = None,
) -> tuple[Effect, dict[str, ClassEstimate]]:
    """The effect of prediction ``p`` from strata ``data`` (class → values) or trend ``features``
    ((covariate, value) per feature), with its interval and outcome; ``noise`` and ``population``
    as in ``class_estimates``."""
    if isinstance(p, Identity):
        return _identity(p, data.get(p.at, []), level), class_estimates(data, level)
    ests = class_estimates(
        data, level, trim=ENERGY_TRIM if energy else 0.0, noise=noise, population=population
    )
    if isinstance(p, Trend):
        return _trend(p, features, level), ests
    return judge_estimates(p, ests, energy=energy, level=level), ests


def judge_estimates(
    p, ests: Mapping[str, ClassEstimate], *, energy: bool = False, level: float = LEVEL
) -> Effect:
    """The effect of a class-mean prediction from per-class estimates (n, mean, sd)."""
    missing = [c for c in _needed(p) if c not in ests or ests[c].n < 2]
    if missing:
        return _undecided(_statistic(p, energy), f"fewer than 2 usable spectra in {', '.join(missing)}")
    if isinstance(p, Uniform):
        return _uniform(p, ests, energy, level)
    coef = linear_coefficients(p, ests)
    est, _, half = _welch(coef, ests, level)
    if isinstance(p, Shift):
        est -= p.min_shift_eV
    lo, hi = est - half, est + half
    return Effect(
        outcome=_outcome(lo, hi),
        statistic=_statistic(p, energy),
        estimate=est,
        ci_low=lo,
        ci_high=hi,
        readable=_readable(p, ests, level),
    )


def _undecided(statistic: str, reason: str) -> Effect:
    """An effect that cannot be estimated: inconclusive, with the reason."""
    return Effect(
        outcome="inconclusive",
        statistic=statistic,
        estimate=None,
        ci_low=None,
        ci_high=None,
        readable="",
        reason=reason,
    )


def _needed(p) -> list[str]:
    if isinstance(p, LocalizedAt):
        return [p.at, p.versus]
    return p.classes()


def _statistic(p, energy: bool) -> str:
    if isinstance(p, LocalizedAt):
        return f"θ = mean({p.at}) − {p.min_ratio:g} × mean({p.versus})"
    if isinstance(p, Contrast):
        hi, lo = (p.a, p.b) if p.direction == "higher" else (p.b, p.a)
        return f"θ = mean({hi}) − {p.min_ratio:g} × mean({lo})"
    if isinstance(p, Shift):
        sign = "" if p.direction == "up" else "−"
        return f"θ = {sign}(E({p.b}) − E({p.a})) − {p.min_shift_eV:g} eV"
    if isinstance(p, Uniform):
        if energy:
            return f"θ = {p.max_shift_eV:g} eV − max |E_i − E_j| over {', '.join(p.over)}"
        return f"θ = log {p.max_ratio:g} − max |log(mean_i / mean_j)| over {', '.join(p.over)}"
    return f"θ = {'' if p.sign == 'increasing' else '−'}Spearman ρ(signal, {p.covariate}) over {p.over}"


def ratio_ci(a: ClassEstimate, b: ClassEstimate, level: float) -> tuple[float, float | None, float | None]:
    """a/b with Fieller's interval (None bounds when the denominator's interval reaches 0)."""
    r = a.mean / b.mean if b.mean else math.inf
    if a.n < 2 or b.n < 2 or a.sd is None or b.sd is None:
        return r, None, None
    va, vb = a.sd**2 / a.n, b.sd**2 / b.n
    t = stats.t.ppf(0.5 + level / 2, min(a.n, b.n) - 1)
    g = t * t * vb / b.mean**2 if b.mean else math.inf
    if g >= 1:
        return r, None, None
    root = (t / b.mean) * math.sqrt(va * (1 - g) + r * r * vb)
    lo, hi = (r - root) / (1 - g), (r + root) / (1 - g)
    return r, min(lo, hi), max(lo, hi)


def _readable(p, ests: Mapping[str, ClassEstimate], level: float) -> str:
    if isinstance(p, LocalizedAt | Contrast):
        if isinstance(p, LocalizedAt):
            hi, lo = p.at, p.versus
        else:
            hi, lo = (p.a, p.b) if p.direction == "higher" else (p.b, p.a)
        r, rl, rh = ratio_ci(ests[hi], ests[lo], level)
        ci = f"[{rl:.3g}, {rh:.3g}]" if rl is not None else "[interval unbounded: the reference is near 0]"
        return f"mean({hi}) / mean({lo}) = {r:.3g} {ci} against {p.min_ratio:g}"
    if isinstance(p, Shift):
        est, _, half = _welch({p.b: 1.0, p.a: -1.0}, ests, level)
        exp = f"; theory {p.expected_eV:+.2f} eV" if p.expected_eV is not None else ""
        return f"E({p.b}) − E({p.a}) = {est:+.3f} ± {half:.3f} eV against {'+' if p.direction == 'up' else '−'}{p.min_shift_eV:g} eV{exp}"
    return ""


def _uniform(p: Uniform, ests: Mapping[str, ClassEstimate], energy: bool, level: float) -> Effect:
    pairs = list(itertools.combinations(p.over, 2))
    lvl = 1 - (1 - level) / len(pairs)  # Bonferroni
    bound = p.max_shift_eV if energy else math.log(p.max_ratio)
    inside = outside = 0
    worst = (-math.inf, None, None)
    for i, j in pairs:
        a, b = ests[i], ests[j]
        if energy:
            res = _welch({i: 1.0, j: -1.0}, ests, lvl)
        else:
            if a.mean <= 0 or b.mean <= 0:
                return _undecided(
                    _statistic(p, energy),
                    f"a class mean is not positive ({i}: {a.mean:.3g}, {j}: {b.mean:.3g}): ratios undefined",
                )
            res = _welch({i: 1.0 / a.mean, j: -1.0 / b.mean}, ests, lvl)
            res = (math.log(a.mean / b.mean), res[1], res[2])
        d, _, half = res
        lo, hi = d - half, d + half
        if -bound < lo and hi < bound:
            inside += 1
        elif lo > bound or hi < -bound:
            outside += 1
        theta, tlo, thi = bound - abs(d), bound - max(abs(lo), abs(hi)), bound - max(0.0, abs(d) - half)
        if -theta > worst[0]:
            worst = (-theta, (theta, tlo, thi), (i, j, d, half))
    theta, tlo, thi = worst[1]
    i, j, d, half = worst[2]
    outcome: Outcome = "refuted" if outside else ("supported" if inside == len(pairs) else "inconclusive")
    unit = "eV" if energy else "(log ratio)"
    return Effect(
        outcome=outcome,
        statistic=_statistic(p, energy),
        estimate=theta,
        ci_low=tlo,
        ci_high=thi,
        readable=f"largest difference {i} vs {j}: {d:+.3g} ± {half:.3g} {unit} against ±{bound:.3g}",
    )


def _trend(p: Trend, features: Sequence[tuple[float, float]], level: float) -> Effect:
    f = [(c, v) for c, v in features if math.isfinite(c) and math.isfinite(v)]
    stat = _statistic(p, False)
    if len(f) < 4:
        return _undecided(stat, f"{len(f)} features with a value: a trend needs at least 4")
    x, y = np.array(f).T
    rho = float(stats.spearmanr(x, y).statistic) if np.ptp(x) > 0 and np.ptp(y) > 0 else 0.0
    z, se = math.atanh(max(min(rho, 0.999999), -0.999999)), 1.06 / math.sqrt(len(f) - 3)
    q = stats.norm.ppf(0.5 + level / 2)
    lo, hi = math.tanh(z - q * se), math.tanh(z + q * se)
    s = 1.0 if p.sign == "increasing" else -1.0
    theta, tlo, thi = s * rho, min(s * lo, s * hi), max(s * lo, s * hi)
    return Effect(
        outcome=_outcome(tlo, thi),
        statistic=stat,
        estimate=theta,
        ci_low=tlo,
        ci_high=thi,
        readable=f"Spearman ρ = {rho:+.2f} [{lo:+.2f}, {hi:+.2f}] over {len(f)} features",
    )


def _identity(p: Identity, wins: Sequence[float], level: float) -> Effect:
    """The share of sites the defect model won, with its Wilson score interval, against ``min_fraction``."""
    w = [v for v in wins if v == v]
    stat = f"θ = share of {p.at} sites best matched by {p.species}_{p.host} − {p.min_fraction:g}"
    if len(w) < 2:
        return _undecided(stat, f"{len(w)} {p.at} sites ranked: a share needs at least 2")
    n, k = len(w), float(sum(w))
    z = stats.norm.ppf(0.5 + level / 2)
    centre = (k + z * z / 2) / (n + z * z)
    half = z * math.sqrt(k * (n - k) / n + z * z / 4) / (n + z * z)
    lo, hi = centre - half - p.min_fraction, centre + half - p.min_fraction
    return Effect(
        outcome=_outcome(lo, hi),
        statistic=stat,
        estimate=k / n - p.min_fraction,
        ci_low=lo,
        ci_high=hi,
        readable=f"{int(k)} of {n} sites best matched by {p.species}_{p.host} (≥ 2σ over every alternative)",
    )


def next_stratum(
    p, data: Mapping[str, Sequence[float]], caps: Mapping[str, int], *, trim: float = 0.0
) -> str | None:
    """The stratum whose next spectrum narrows θ's interval most (Neyman-style), among those
    below their cap; None when every stratum is full. Used by the discriminating audit."""
    ests = class_estimates(data, trim=trim)
    open_ = [c for c in caps if ests.get(c) is None or ests[c].n < caps[c]]
    if not open_:
        return None
    if any(ests.get(c) is None or ests[c].n < 2 or ests[c].sd is None for c in open_):
        return min(open_, key=lambda c: 0 if ests.get(c) is None else ests[c].n)
    try:
        coef = linear_coefficients(p, ests)
    except TypeError:
        coef = {c: 1.0 for c in caps}
    gain = {c: coef.get(c, 0.0) ** 2 * ests[c].sd ** 2 * (1 / ests[c].n - 1 / (ests[c].n + 1)) for c in open_}
    return max(open_, key=lambda c: gain[c])


__all__ = [
    "LEVEL",
    "ENERGY_TRIM",
    "SEQUENTIAL_LEVEL",
    "ClassEstimate",
    "Effect",
    "Outcome",
    "Verdict",
    "class_estimates",
    "judge",
    "judge_estimates",
    "linear_effect",
    "welch_t",
    "ratio_ci",
    "next_stratum",
]
