"""The sparse GP head (SGPR): exact when it may be, close when it must approximate, and the switch."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from autoscope.tools.ml import sparse
from autoscope.tools.ml.dkl import DKL
from autoscope.tools.ml.gp import ExactGP
from autoscope.tools.ml.kernels import GPHead, Posterior
from autoscope.tools.ml.sparse import SparsePosterior, collapsed_bound, select_inducing, sparse_loss


def smooth(seed: int, n: int, d: int = 3, noise_sd: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.uniform(-2.0, 2.0, (n, d))
    f = np.sin(1.5 * X[:, 0]) + 0.5 * np.cos(X[:, 1]) * X[:, 1] + 0.3 * X[:, 2]
    return X, f + noise_sd * rng.normal(size=n)


def head_on(Z: torch.Tensor, kernel: str = "matern52") -> GPHead:
    """A head with non-default hyperparameters (so nothing agrees by accident)."""
    head = GPHead(Z.shape[1], kernel=kernel, ard=True, ls_init=1.3, dtype=Z.dtype, device=Z.device)
    with torch.no_grad():
        head.log_lengthscale.copy_(torch.linspace(-0.2, 0.4, Z.shape[1], dtype=Z.dtype))
        head.log_outputscale.fill_(0.3)
        head.log_noise.fill_(np.log(0.02))
        head.mean_const.fill_(0.1)
    return head


def tensors(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    X, y = smooth(seed, n)
    return torch.as_tensor(X), torch.as_tensor((y - y.mean()) / y.std())


@pytest.mark.parametrize("kernel", ["rbf", "matern52"])
def test_with_every_input_inducing_the_sparse_gp_is_the_exact_gp(kernel: str) -> None:
    Z, y = tensors(80)
    head = head_on(Z, kernel)
    idx = select_inducing(head, Z, 200)
    assert idx.tolist() == list(range(80))
    exact = Posterior.build(head, Z, y)
    approx = SparsePosterior.build(head, Z, y, Z[idx])
    Zs = torch.as_tensor(np.random.default_rng(1).uniform(-2.5, 2.5, (300, 3)))
    (m0, v0), (m1, v1) = exact.mean_var(Zs), approx.mean_var(Zs)
    np.testing.assert_allclose(m1.numpy(), m0.numpy(), atol=1e-5)
    np.testing.assert_allclose(v1.numpy(), v0.numpy(), atol=1e-5, rtol=1e-4)
    # and the bound is the exact marginal likelihood
    with torch.no_grad():
        assert float(sparse_loss(head, Z, y, Z)) == pytest.approx(float(head.loss(Z, y)), abs=1e-6)


def test_the_collapsed_bound_never_exceeds_the_exact_marginal_likelihood() -> None:
    Z, y = tensors(300, seed=2)
    head = head_on(Z)
    with torch.no_grad():
        exact = float(-head.loss(Z, y) * Z.shape[0] - head.log_prior())  # log p(y)
        bounds = [
            float(collapsed_bound(head, Z, y, Z[select_inducing(head, Z, m, seed=3)]))
            for m in (5, 20, 60, 150, 250, 300)
        ]
    assert all(b <= exact + 1e-6 for b in bounds)
    # greedy selection nests its choices: more inducing points never loosen the bound
    assert bounds == sorted(bounds)
    assert exact - bounds[3] < 0.02 * (exact - bounds[0])
    assert bounds[-1] == pytest.approx(exact, abs=1e-3)  # every input inducing: the bound is exact


def test_inducing_selection_is_deterministic_and_stops_when_everything_is_explained() -> None:
    Z, _ = tensors(400)
    head = head_on(Z)
    a, b = select_inducing(head, Z, 50, seed=7), select_inducing(head, Z, 50, seed=7)
    assert a.tolist() == b.tolist() and len(set(a.tolist())) == 50
    assert select_inducing(head, Z, 50, seed=8).tolist() != a.tolist()
    # 400 copies of 3 distinct points: three inducing points explain them all
    Zdup = Z[torch.arange(400) % 3]
    assert len(select_inducing(head, Zdup, 50)) == 3


def test_few_inducing_points_predict_held_out_points_like_the_exact_gp() -> None:
    X, y = smooth(4, 800)
    X_tr, y_tr, X_te = X[:600], y[:600], X[600:]
    exact = ExactGP(sparse_above=None, max_iter=80)
    exact.fit(X_tr, y_tr)
    approx = ExactGP(sparse_above=0, inducing=64, max_iter=80)
    report = approx.fit(X_tr, y_tr)
    assert report.extra["sparse"] and report.extra["inducing"] == 64
    (m0, v0), (m1, v1) = exact.predict(X_te), approx.predict(X_te)
    assert np.sqrt(np.mean((m1 - m0) ** 2)) < 0.02 * y_tr.std()
    assert np.median(np.abs(np.sqrt(v1) - np.sqrt(v0))) < 0.01 * y_tr.std()


def test_a_warm_sparse_refit_needs_fewer_iterations_than_a_cold_fit() -> None:
    X, y = smooth(5, 401)
    gp = ExactGP(sparse_above=0, inducing=64)
    cold = gp.fit(X[:400], y[:400])
    warm = gp.fit(X, y)
    fresh = ExactGP(sparse_above=0, inducing=64).fit(X, y)
    assert not cold.extra["warm"] and warm.extra["warm"] and warm.extra["sparse"]
    assert warm.iterations < fresh.iterations
    assert warm.neg_log_marginal_likelihood == pytest.approx(fresh.neg_log_marginal_likelihood, rel=0.02)


def test_the_switch_triggers_above_the_threshold_and_keeps_the_warm_start() -> None:
    X, y = smooth(6, 60)
    gp = ExactGP(sparse_above=50, inducing=32)
    first = gp.fit(X[:50], y[:50])
    assert first.extra["sparse"] is False and first.extra["inducing"] == 50
    second = gp.fit(X[:51], y[:51])
    assert second.extra["sparse"] is True and second.extra["warm"] is True
    assert second.extra["inducing"] == 32 and isinstance(gp._post, SparsePosterior)
    assert second.iterations <= gp.warm_iter
    never = ExactGP(sparse_above=None)
    assert never.fit(X, y).extra["sparse"] is False
    with pytest.raises(ValueError, match="sparse_above"):
        ExactGP(sparse_above=-1)


def test_dkl_switches_to_the_sparse_head_and_keeps_its_optimiser() -> None:
    X, y = smooth(7, 90, d=6)
    dkl = DKL(sparse_above=80, inducing=24, max_iter=60, seed=1)
    assert dkl.fit(X[:80], y[:80]).extra["sparse"] is False
    opt = dkl._opt
    report = dkl.fit(X, y)
    assert report.extra["sparse"] is True and report.extra["warm"] is True and report.extra["inducing"] == 24
    assert dkl._opt is opt and isinstance(dkl._post, SparsePosterior)
    mean, var = dkl.predict(X)
    assert mean.shape == var.shape == (90,) and np.all(var > 0) and np.all(np.isfinite(mean))
    assert np.corrcoef(mean, y)[0, 1] > 0.8
    cold = DKL(sparse_above=0, inducing=24, max_iter=60, seed=1).fit(X, y)
    assert cold.extra["sparse"] and np.isfinite(cold.neg_log_marginal_likelihood)


@pytest.mark.parametrize("m", [300, 1500])  # joint samples, then pathwise (beyond JOINT_SAMPLE_MAX)
def test_sparse_samples_match_the_predictive_distribution(m: int) -> None:
    X, y = smooth(8, 120, noise_sd=0.1)
    gp = ExactGP(sparse_above=0, inducing=30)
    assert gp.fit(X, y).extra["inducing"] == 30
    Xs = np.random.default_rng(9).uniform(-2.0, 2.0, (m, 3))
    mean, var = gp.predict(Xs)
    draws = gp.sample(Xs, 400, np.random.default_rng(10))
    assert draws.shape == (400, m) and np.all(np.isfinite(draws))
    sd = np.sqrt(var)
    assert np.median(np.abs(draws.mean(0) - mean) / sd) < 0.15
    assert 0.8 < np.median(draws.std(0) / sd) < 1.2
    np.testing.assert_array_equal(draws, gp.sample(Xs, 400, np.random.default_rng(10)))


def test_batched_sparse_prediction_equals_unbatched(monkeypatch: pytest.MonkeyPatch) -> None:
    X, y = smooth(11, 200)
    gp = ExactGP(sparse_above=0, inducing=30)
    gp.fit(X, y)
    full = gp.predict(X)
    monkeypatch.setattr(sparse, "PREDICT_CHUNK", 17)
    chunked = gp.predict(X)
    np.testing.assert_allclose(chunked[0], full[0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(chunked[1], full[1], rtol=1e-10, atol=1e-12)


def test_learned_inducing_points_do_not_loosen_the_bound() -> None:
    X, y = smooth(12, 300)
    fixed = ExactGP(sparse_above=0, inducing=15).fit(X, y)
    learned_gp = ExactGP(sparse_above=0, inducing=15, learn_inducing=True)
    learned = learned_gp.fit(X, y)
    assert (
        learned.extra["sparse"]
        and learned.neg_log_marginal_likelihood <= fixed.neg_log_marginal_likelihood + 1.0
    )
    copy.deepcopy(learned_gp).fit(X, y)  # refits warm with new inducing points


@pytest.mark.parametrize("method", ["gp", "dkl"])
def test_make_model_passes_the_threshold_to_the_model(method: str) -> None:
    from autoscope.tools.campaign import make_model

    X, y = smooth(13, 30)
    model = make_model(method, 0, sparse_above=20)
    assert model is not None
    assert model.fit(X[:20], y[:20]).extra["sparse"] is False
    assert model.fit(X, y).extra["sparse"] is True
    never = make_model(method, 0, sparse_above=None)
    assert never is not None and never.fit(X, y).extra["sparse"] is False


@pytest.mark.parametrize(
    "make", [lambda: ExactGP(sparse_above=0, inducing=24), lambda: DKL(sparse_above=0, inducing=24)]
)
def test_warm_refits_keep_their_inducing_inputs_until_the_data_have_grown(make) -> None:
    X, y = smooth(14, 140)
    model = make()
    model.fit(X[:100], y[:100])
    first = model._inducing_x.copy()
    model.fit(X[:105], y[:105])  # 5 % more: the same inducing inputs
    np.testing.assert_array_equal(model._inducing_x, first)
    model.fit(X[:140], y[:140])  # 40 % more: chosen again
    assert model._inducing_x.shape == first.shape and not np.array_equal(model._inducing_x, first)
