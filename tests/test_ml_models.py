"""Surrogate models: exact GP and deep kernel learning (accuracy, calibration, warm starts)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from autoscope.tools.ml import kernels
from autoscope.tools.ml.base import Surrogate
from autoscope.tools.ml.dkl import DKL
from autoscope.tools.ml.gp import ExactGP


def smooth_problem(seed: int, n: int, n_test: int = 400, noise_sd: float = 0.05, d: int = 3):
    """A smooth function of d inputs on [-2, 2]^d with Gaussian noise."""
    rng = np.random.default_rng(seed)
    X = rng.uniform(-2.0, 2.0, (n + n_test, d))
    f = np.sin(1.5 * X[:, 0]) + 0.5 * np.cos(X[:, 1]) * X[:, 1] + 0.3 * X[:, 2]
    y = f + noise_sd * rng.normal(size=n + n_test)
    return X[:n], y[:n], X[n:], f[n:], y[n:]


def projection_problem(seed: int, n: int = 200, n_test: int = 1000, d: int = 64, nuisance: int = 6):
    """64-D descriptors, rotated: the target depends on a 2-D projection only, while
    ``nuisance`` irrelevant directions carry more variance than the relevant ones."""
    rng = np.random.default_rng(seed)
    R = np.linalg.qr(rng.normal(size=(d, d)))[0]
    m = n + n_test
    z = rng.uniform(-2.0, 2.0, (m, 2))
    latent = np.c_[z, 1.5 * rng.normal(size=(m, nuisance)), 0.05 * rng.normal(size=(m, d - 2 - nuisance))]
    X = latent @ R.T
    f = np.sin(1.5 * z[:, 0]) + 0.5 * np.cos(z[:, 1]) * z[:, 1]
    y = f + 0.05 * rng.normal(size=m)
    return X[:n], y[:n], X[n:], f[n:]


def rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a - b) ** 2)))


@pytest.fixture(scope="module")
def fitted_gp() -> tuple[ExactGP, tuple]:
    data = smooth_problem(0, 120, noise_sd=0.1)
    gp = ExactGP()
    gp.fit(data[0], data[1])
    return gp, data


def test_models_satisfy_the_surrogate_protocol() -> None:
    assert isinstance(ExactGP(), Surrogate)
    assert isinstance(DKL(), Surrogate)


def test_gp_fits_a_smooth_function(fitted_gp) -> None:
    gp, (_, _, X_te, f_te, _) = fitted_gp
    mean, _ = gp.predict(X_te)
    assert rmse(mean, f_te) < 0.1 * f_te.std()


def test_gp_is_calibrated_on_held_out_points(fitted_gp) -> None:
    gp, (_, _, X_te, _, y_te) = fitted_gp
    mean, var = gp.predict(X_te)
    z = (y_te - mean) / np.sqrt(var + gp.noise_variance)
    assert 0.7 < z.std() < 1.4
    assert abs(z.mean()) < 0.3


def test_gp_recovers_the_noise_level(fitted_gp) -> None:
    gp, _ = fitted_gp
    assert 0.1**2 / 2 < gp.noise_variance < 0.1**2 * 2


@pytest.mark.parametrize("kernel", ["matern52", "rbf"])
def test_gp_warm_refit_needs_fewer_iterations(kernel: str) -> None:
    warm_iters, fresh_iters = 0, 0
    for seed in range(4):
        X, y, *_ = smooth_problem(seed, 101, d=16)
        gp = ExactGP(kernel=kernel)
        cold = gp.fit(X[:-1], y[:-1])
        warm = gp.fit(X, y)
        fresh = ExactGP(kernel=kernel).fit(X, y)
        assert not cold.extra["warm"] and warm.extra["warm"]
        assert warm.iterations <= gp.warm_iter
        nll = fresh.neg_log_marginal_likelihood
        assert warm.neg_log_marginal_likelihood < nll + 0.01 * abs(nll) + 0.5
        warm_iters += warm.iterations
        fresh_iters += fresh.iterations
    assert warm_iters < 0.8 * fresh_iters


def test_gp_warm_start_keeps_the_model_in_the_units_of_the_data(fitted_gp) -> None:
    """Refitting on a subset moves the standardisation; without optimisation steps the
    hyperparameters in data units must not move."""
    gp, (X, y, *_) = fitted_gp
    before = gp.fit(X, y)
    frozen = copy.deepcopy(gp)
    frozen.warm_iter = 0
    subset = np.argsort(y)[:60]  # lower half: different mean and spread of X and y
    after = frozen.fit(X[subset], y[subset])
    assert after.iterations == 0 and after.extra["warm"]
    assert frozen.noise_variance == pytest.approx(gp.noise_variance, rel=1e-9)
    assert after.extra["outputscale_y"] == pytest.approx(before.extra["outputscale_y"], rel=1e-9)
    assert after.extra["mean"] == pytest.approx(before.extra["mean"], rel=1e-9)
    assert after.extra["lengthscale_min"] != pytest.approx(before.extra["lengthscale_min"], rel=1e-3)


def test_gp_batched_prediction_equals_unbatched(fitted_gp, monkeypatch: pytest.MonkeyPatch) -> None:
    gp, (*_, X_te, _, _) = fitted_gp
    mean, var = gp.predict(X_te)
    monkeypatch.setattr(kernels, "PREDICT_CHUNK", 7)
    mean_b, var_b = gp.predict(X_te)
    np.testing.assert_allclose(mean_b, mean, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(var_b, var, rtol=1e-9, atol=1e-12)


def test_gp_float32_agrees_with_float64() -> None:
    X, y, X_te, f_te, _ = smooth_problem(2, 60)
    g64, g32 = ExactGP(dtype=torch.float64), ExactGP(dtype=torch.float32)
    g64.fit(X, y)
    g32.fit(X, y)
    m64, v64 = g64.predict(X_te)
    m32, v32 = g32.predict(X_te)
    assert np.max(np.abs(m32 - m64)) < 0.02 * f_te.std()
    assert np.max(np.abs(np.sqrt(v32) - np.sqrt(v64))) < 0.02 * f_te.std()


@pytest.mark.parametrize("m", [300, 1500])  # exact joint samples / pathwise (random-feature) samples
def test_gp_samples_match_the_posterior(fitted_gp, m: int) -> None:
    gp, (*_, X_te, _, _) = fitted_gp
    Xs = np.random.default_rng(5).uniform(-2.0, 2.0, (m, 3))
    mean, var = gp.predict(Xs)
    S = gp.sample(Xs, 400, np.random.default_rng(0))
    assert S.shape == (400, m)
    sd = np.sqrt(var)
    assert np.median(np.abs(S.mean(0) - mean) / sd) < 0.15
    assert 0.8 < np.median(S.std(0) / sd) < 1.2
    np.testing.assert_array_equal(S, gp.sample(Xs, 400, np.random.default_rng(0)))


def test_gp_rejects_bad_input() -> None:
    gp = ExactGP()
    with pytest.raises(RuntimeError):
        gp.predict(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="y has"):
        gp.fit(np.zeros((4, 3)), np.zeros(3))
    gp.fit(np.random.default_rng(0).normal(size=(5, 3)), np.arange(5.0))
    with pytest.raises(ValueError, match="features"):
        gp.predict(np.zeros((2, 4)))


def test_dkl_beats_isotropic_gp_on_a_projected_target() -> None:
    dkl_err, ard_err = [], []
    for seed in range(3):
        X, y, X_te, f_te = projection_problem(seed)
        errs = {}
        for name, model in (("iso", ExactGP(ard=False)), ("ard", ExactGP()), ("dkl", DKL(seed=seed))):
            model.fit(X, y)
            errs[name] = rmse(model.predict(X_te)[0], f_te)
        assert errs["dkl"] < 0.85 * errs["iso"], errs
        dkl_err.append(errs["dkl"])
        ard_err.append(errs["ard"])
    assert np.mean(dkl_err) < 1.1 * np.mean(ard_err)


def test_dkl_is_deterministic_given_the_seed() -> None:
    X, y, X_te, _, _ = smooth_problem(3, 40)
    runs = []
    for seed in (7, 7, 8):
        model = DKL(seed=seed, max_iter=60)
        model.fit(X, y)
        runs.append(model.predict(X_te)[0])
    np.testing.assert_array_equal(runs[0], runs[1])
    assert np.max(np.abs(runs[0] - runs[2])) > 1e-4


def test_dkl_embed_warm_refit_and_float64() -> None:
    X, y, X_te, f_te, _ = smooth_problem(4, 60)
    model = DKL(latent_dim=3, dtype=torch.float64, max_iter=150)
    model.fit(X[:-1], y[:-1])
    report = model.fit(X, y)
    assert report.extra["warm"] and report.iterations <= model.warm_iter
    assert model.embed(X_te).shape == (len(X_te), 3)
    mean, var = model.predict(X_te)
    assert np.all(np.isfinite(mean)) and np.all(var > 0)
    assert rmse(mean, f_te) < 0.5 * f_te.std()
    assert model.sample(X_te, 3, np.random.default_rng(0)).shape == (3, len(X_te))
