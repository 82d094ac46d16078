"""Acquisition functions and the batch chooser."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError
from scipy import stats

from autoscope.tools.ml.acquisition import (
    AcquisitionSpec,
    choose,
    choose_detailed,
    expected_improvement,
    max_variance,
    upper_confidence_bound,
)
from autoscope.tools.ml.base import FitReport, Surrogate
from autoscope.tools.ml.gp import ExactGP


class FixedPosterior:
    """A surrogate with a given mean and variance per candidate (rows of X are indices)."""

    def __init__(self, mean: np.ndarray, var: np.ndarray) -> None:
        self.mean, self.var = np.asarray(mean, float), np.asarray(var, float)

    def fit(self, X: np.ndarray, y: np.ndarray) -> FitReport:
        return FitReport(
            n_observations=len(y),
            iterations=0,
            fit_s=0.0,
            neg_log_marginal_likelihood=0.0,
            outputscale=1.0,
            noise=0.0,
        )

    def predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        i = X[:, 0].astype(int)
        return self.mean[i], self.var[i]

    def sample(self, X: np.ndarray, n_samples: int, rng: np.random.Generator) -> np.ndarray:
        mean, var = self.predict(X)
        return mean + np.sqrt(var) * rng.standard_normal((n_samples, len(mean)))

    def embed(self, X: np.ndarray) -> np.ndarray:
        return X


def grid(m_side: int) -> tuple[np.ndarray, np.ndarray]:
    X = np.arange(m_side * m_side, dtype=float)[:, None]
    gx, gy = np.meshgrid(np.arange(m_side), np.arange(m_side))
    return X, np.c_[gx.ravel(), gy.ravel()].astype(float)  # 1 nm spacing


def test_fake_is_a_surrogate() -> None:
    assert isinstance(FixedPosterior([0.0], [1.0]), Surrogate)


def test_expected_improvement_matches_the_closed_form() -> None:
    rng = np.random.default_rng(0)
    mean, var = rng.normal(size=50), rng.uniform(0.01, 2.0, 50)
    best, xi = 0.3, 0.05
    sd = np.sqrt(var)
    z = (mean - best - xi) / sd
    expected = (mean - best - xi) * stats.norm.cdf(z) + sd * stats.norm.pdf(z)
    np.testing.assert_allclose(expected_improvement(mean, var, best, xi), expected, rtol=1e-10, atol=1e-14)
    # zero variance: improvement is deterministic
    np.testing.assert_allclose(expected_improvement(np.array([1.0, -1.0]), np.zeros(2), 0.0, 0.0), [1.0, 0.0])


def test_ucb_ranking_moves_from_mean_to_spread_with_beta() -> None:
    mean, var = np.array([1.0, 0.0, 0.5]), np.array([0.01, 4.0, 0.25])
    assert int(np.argmax(upper_confidence_bound(mean, var, 0.0))) == 0
    assert int(np.argmax(upper_confidence_bound(mean, var, 100.0))) == 1
    np.testing.assert_allclose(upper_confidence_bound(mean, var, 4.0), mean + 2.0 * np.sqrt(var))
    assert int(np.argmax(max_variance(var))) == 1


@pytest.mark.parametrize("kind", ["ei", "ucb", "maxvar", "thompson"])
def test_never_remeasures_even_when_measured_points_score_best(kind: str) -> None:
    X, xy = grid(6)
    mean = np.linspace(0.0, 1.0, 36)
    var = np.full(36, 0.01)
    measured = np.zeros(36, bool)
    measured[-8:] = True  # the best means and (below) the largest variances
    var[-8:] = 5.0
    spec = AcquisitionSpec(kind=kind, q=4)
    idx = choose(FixedPosterior(mean, var), X, xy, measured, spec, rng=np.random.default_rng(1), best_y=0.5)
    assert len(idx) == 4 and len(set(idx)) == 4
    assert not measured[idx].any()


def test_maxvar_picks_the_largest_variance_and_ties_break_low() -> None:
    X, xy = grid(4)
    var = np.ones(16)
    var[[5, 9]] = 3.0
    choice = choose_detailed(
        FixedPosterior(np.zeros(16), var),
        X,
        xy,
        np.zeros(16, bool),
        AcquisitionSpec(kind="maxvar"),
        rng=np.random.default_rng(0),
        best_y=0.0,
    )
    assert choice.indices == [5]
    np.testing.assert_array_equal(choice.var, var)
    assert choice.mean.shape == (16,) and choice.scores.shape == (16,)


def test_batch_with_penalty_spreads_beyond_the_radius() -> None:
    X, xy = grid(20)
    # one smooth bump: without a penalty the batch clusters around its peak
    d2 = ((xy - [10.0, 10.0]) ** 2).sum(1)
    mean, var = np.exp(-d2 / 50.0), np.full(400, 0.05)
    measured = np.zeros(400, bool)
    measured[210] = True
    model = FixedPosterior(mean, var)
    rng = np.random.default_rng(0)
    clustered = choose(model, X, xy, measured, AcquisitionSpec(kind="ucb", q=5), rng=rng, best_y=1.0)
    spread = choose(
        model, X, xy, measured, AcquisitionSpec(kind="ucb", q=5, penalty_radius_nm=4.0), rng=rng, best_y=1.0
    )
    pairwise = lambda idx: [np.hypot(*(xy[a] - xy[b])) for a in idx for b in idx if a < b]  # noqa: E731
    assert min(pairwise(clustered)) < 4.0
    assert len(set(spread)) == 5 and not measured[spread].any()
    assert min(pairwise(spread)) >= 4.0


def test_thompson_is_reproducible_and_varies_with_the_seed() -> None:
    rng = np.random.default_rng(0)
    X = rng.uniform(-1.0, 1.0, (400, 2))
    y_all = np.sin(3 * X[:, 0]) * np.cos(2 * X[:, 1])
    measured = np.zeros(400, bool)
    measured[:15] = True
    gp = ExactGP()
    gp.fit(X[measured], y_all[measured])
    spec = AcquisitionSpec(kind="thompson", q=3)
    picks = [
        tuple(choose(gp, X, 10.0 * X, measured, spec, rng=np.random.default_rng(s), best_y=1.0))
        for s in (4, 4, *range(5, 10))
    ]
    assert picks[0] == picks[1]
    assert len(set(picks)) > 2
    assert all(len(set(p)) == 3 and not measured[list(p)].any() for p in picks)


def test_spec_is_validated_and_everything_measured_is_an_error() -> None:
    with pytest.raises(ValidationError):
        AcquisitionSpec(kind="ei", q=0)
    with pytest.raises(ValidationError):
        AcquisitionSpec(kind="pi")
    X, xy = grid(2)
    with pytest.raises(ValueError, match="measured"):
        choose(
            FixedPosterior(np.zeros(4), np.ones(4)),
            X,
            xy,
            np.ones(4, bool),
            AcquisitionSpec(kind="ei"),
            rng=np.random.default_rng(0),
            best_y=0.0,
        )
