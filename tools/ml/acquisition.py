"""Acquisition functions: which candidate positions to measure next.

Scores are maximised. ``choose`` predicts once over all candidates, scores them,
never returns a measured index or a duplicate, and for a batch (``q > 1``) picks
greedily with local penalisation in the sample plane so the batch spreads out.
Ties go to the lowest index.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy.spatial import cKDTree
from scipy.special import ndtr

from autoscope.tools.ml.base import Surrogate

log = logging.getLogger(__name__)

AcquisitionKind = Literal["ei", "ucb", "maxvar", "thompson"]


class AcquisitionSpec(BaseModel):
    """How to pick the next candidates.

    ``xi`` (EI margin) is in standardised target units: it is multiplied by the
    model's ``target_scale`` when the model has one, else used in units of y.
    UCB is ``mean + sqrt(beta) · std``. ``min_separation_nm`` keeps new picks at least
    that far from every measured position while such candidates remain: on a hot spot
    found already, a neighbouring spectrum adds dose but little information.
    """

    model_config = ConfigDict(frozen=True)

    kind: AcquisitionKind
    beta: float = Field(2.0, ge=0.0)
    xi: float = Field(0.01, ge=0.0)
    q: int = Field(1, ge=1)
    penalty_radius_nm: float = Field(0.0, ge=0.0)
    min_separation_nm: float = Field(0.0, ge=0.0)


@dataclass(frozen=True)
class Choice:
    """The chosen candidates plus what the caller logs: prediction and scores over all
    candidates (``scores``: the unpenalised acquisition values; for Thompson, the first
    sample; measured candidates score ``-inf``)."""

    indices: list[int]
    mean: np.ndarray
    var: np.ndarray
    scores: np.ndarray


def expected_improvement(mean: np.ndarray, var: np.ndarray, best: float, xi: float) -> np.ndarray:
    """EI for maximisation: E[max(f − best − xi, 0)] under N(mean, var)."""
    mean = np.asarray(mean, dtype=np.float64)
    std = np.sqrt(np.clip(np.asarray(var, dtype=np.float64), 0.0, None))
    gain = mean - best - xi
    safe = np.where(std > 0, std, 1.0)
    z = gain / safe
    pdf = np.exp(-0.5 * z * z) / np.sqrt(2.0 * np.pi)
    ei = gain * ndtr(z) + std * pdf
    return np.where(std > 0, np.maximum(ei, 0.0), np.maximum(gain, 0.0))


def upper_confidence_bound(mean: np.ndarray, var: np.ndarray, beta: float) -> np.ndarray:
    """UCB = mean + sqrt(beta) · std."""
    return np.asarray(mean, dtype=np.float64) + np.sqrt(beta) * np.sqrt(np.clip(var, 0.0, None))


def max_variance(var: np.ndarray) -> np.ndarray:
    """Pure exploration: the posterior variance itself."""
    return np.asarray(var, dtype=np.float64).copy()


def _positive(score: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Shift scores so the valid ones are strictly positive (for multiplicative penalties)."""
    out = np.zeros(score.shape)
    lo = float(score[valid].min())
    span = float(score[valid].max()) - lo
    out[valid] = score[valid] - lo + max(span, 1.0) * 1e-6
    return out


def _pick_batch(
    score_rows: list[np.ndarray], valid: np.ndarray, xy_nm: np.ndarray, q: int, radius_nm: float
) -> list[int]:
    """Greedy batch: member j maximises ``score_rows[j]`` (or the only row) over unchosen
    valid candidates. With a radius, candidates closer than it to a chosen point are
    excluded while others remain, and the rest are damped by 1 − exp(−d²/2r²)."""
    valid = valid.copy()
    penalty = np.ones(valid.shape[0])
    near = np.zeros(valid.shape[0], dtype=bool)
    chosen: list[int] = []
    for j in range(min(q, int(valid.sum()))):
        row = score_rows[j if len(score_rows) > 1 else 0]
        if radius_nm > 0:
            s = np.where(valid, _positive(row, valid) * penalty, -np.inf)
            far = valid & ~near
            if far.any():
                s = np.where(far, s, -np.inf)
        else:
            s = np.where(valid, row, -np.inf)
        i = int(np.argmax(s))  # first maximum: deterministic tie-break
        chosen.append(i)
        valid[i] = False
        if radius_nm > 0:
            d2 = ((xy_nm - xy_nm[i]) ** 2).sum(axis=1)
            penalty *= 1.0 - np.exp(-d2 / (2.0 * radius_nm**2))
            near |= d2 < radius_nm**2
    return chosen


def choose_detailed(
    model: Surrogate,
    X: np.ndarray,
    xy_nm: np.ndarray,
    measured: np.ndarray,
    spec: AcquisitionSpec,
    *,
    rng: np.random.Generator,
    best_y: float,
) -> Choice:
    """Score all candidates X (m, d) at positions xy_nm (m, 2) and pick ``spec.q`` unmeasured ones."""
    X = np.asarray(X)
    xy_nm = np.asarray(xy_nm, dtype=np.float64)
    measured = np.asarray(measured, dtype=bool)
    m = X.shape[0]
    if xy_nm.shape != (m, 2) or measured.shape != (m,):
        raise ValueError(f"xy_nm must be ({m}, 2) and measured ({m},); got {xy_nm.shape}, {measured.shape}")
    valid = ~measured
    if not valid.any():
        raise ValueError("every candidate has been measured: nothing left to choose")
    if spec.min_separation_nm > 0 and measured.any():
        dist, _ = cKDTree(xy_nm[measured]).query(xy_nm, k=1)
        far = valid & (dist >= spec.min_separation_nm)
        if far.any():
            valid = far
    mean, var = model.predict(X)
    if spec.kind == "ei":
        xi = spec.xi * float(getattr(model, "target_scale", 1.0))
        rows = [expected_improvement(mean, var, best_y, xi)]
    elif spec.kind == "ucb":
        rows = [upper_confidence_bound(mean, var, spec.beta)]
    elif spec.kind == "maxvar":
        rows = [max_variance(var)]
    else:
        rows = list(model.sample(X, spec.q, rng))
    indices = _pick_batch(rows, valid, xy_nm, spec.q, spec.penalty_radius_nm)
    scores = np.where(valid, rows[0], -np.inf)
    log.debug("acquisition %s chose %s", spec.kind, indices)
    return Choice(indices=indices, mean=mean, var=var, scores=scores)


def choose(
    model: Surrogate,
    X: np.ndarray,
    xy_nm: np.ndarray,
    measured: np.ndarray,
    spec: AcquisitionSpec,
    *,
    rng: np.random.Generator,
    best_y: float,
) -> list[int]:
    """Indices of the next ``spec.q`` candidates (never measured, never repeated)."""
    return choose_detailed(model, X, xy_nm, measured, spec, rng=rng, best_y=best_y).indices
