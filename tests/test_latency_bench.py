"""The step-latency benchmark returns its documented shape (timings are not asserted), and
its gpytorch/BoTorch references do what they claim: fit, warm-start, predict, pick."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from autoscope.evals.latency import bench_latency, format_latency, synthetic_candidates
from autoscope.evals.latency_refs import (
    BotorchSingleTaskGP,
    GpytorchDKL,
    GpytorchExactGP,
    make_references,
    reference_step,
)
from autoscope.tools.ml.gp import ExactGP

OURS = {"dkl", "gp"}
REFS = {"gpytorch_exact_gp", "gpytorch_dkl", "botorch_stgp_logei"}


def test_tiny_latency_bench_has_the_exact_shape() -> None:
    result = bench_latency(candidates=256, dim=8, observations=20, device="cpu", steps=2, seed=0)
    assert set(result) == {
        "candidates",
        "dim",
        "observations",
        "device",
        "step_ms",
        "iterations",
        "optimizer",
        "speedup_vs_sklearn",
        "speedup_vs_gpytorch",
        "speedup_vs_botorch",
        "speedup_vs_fastest_ref",
    }
    assert (result["candidates"], result["dim"], result["observations"], result["device"]) == (
        256,
        8,
        20,
        "cpu",
    )
    methods = OURS | REFS | {"sklearn_ard_gp"}
    assert set(result["step_ms"]) == set(result["iterations"]) == set(result["optimizer"]) == methods
    assert set(result["speedup_vs_sklearn"]) == set(result["speedup_vs_gpytorch"]) == OURS
    assert set(result["speedup_vs_botorch"]) == {"gp"}
    assert set(result["speedup_vs_fastest_ref"]) == OURS
    assert all(v > 0 for v in result["step_ms"].values())
    ms = result["step_ms"]
    assert result["speedup_vs_gpytorch"]["gp"] == pytest.approx(ms["gpytorch_exact_gp"] / ms["gp"])
    assert result["speedup_vs_gpytorch"]["dkl"] == pytest.approx(ms["gpytorch_dkl"] / ms["dkl"])
    assert result["speedup_vs_botorch"]["gp"] == pytest.approx(ms["botorch_stgp_logei"] / ms["gp"])
    assert result["speedup_vs_fastest_ref"]["gp"] == pytest.approx(
        min(ms["gpytorch_exact_gp"], ms["botorch_stgp_logei"]) / ms["gp"]
    )
    # warm refits: bounded budgets where there is one, and every optimizer ran
    it = result["iterations"]
    assert all(v >= 1 for v in it.values())
    assert it["dkl"] <= 10 and it["gpytorch_dkl"] == 10 and it["gp"] <= 30 and it["gpytorch_exact_gp"] <= 30
    json.dumps(result)
    table = format_latency(result)
    assert all(name in table for name in methods)
    assert "fastest library reference" in table


def test_latency_bench_without_references() -> None:
    result = bench_latency(candidates=128, dim=4, observations=12, steps=1, refs=False)
    assert set(result["step_ms"]) == OURS | {"sklearn_ard_gp"}
    assert result["speedup_vs_gpytorch"] == result["speedup_vs_fastest_ref"] == {}
    assert "sklearn_ard_gp" in format_latency(result)


def _smooth(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1.0, 1.0, (n, d))
    y = np.sin(2.0 * X[:, 0]) + X[:, 1] ** 2 - 0.5 * X[:, 2] + 0.02 * rng.normal(size=n)
    return X, y


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def test_references_fit_warm_start_predict_and_pick_like_ours() -> None:
    X, y = _smooth(260, 4, seed=0)
    train, held_out = np.arange(60), np.arange(60, 260)
    ours = ExactGP(device="cpu", seed=0)
    ours.fit(X[train[:-1]], y[train[:-1]])
    ours.fit(X[train], y[train])
    means = {"ours": ours.predict(X[held_out])[0]}
    for name, ref in (("gpytorch", GpytorchExactGP()), ("botorch", BotorchSingleTaskGP())):
        cold = ref.fit(X[train[:-1]], y[train[:-1]])
        warm_ref = copy.deepcopy(ref)
        warm = reference_step(warm_ref, X, y, train)  # warm refit with one more point
        assert 1 <= warm < cold, f"{name}: warm refit took {warm} iterations, cold {cold}"
        mean, var = warm_ref.predict(X[held_out])
        assert mean.shape == var.shape == (200,) and (var > 0).all()
        assert _corr(mean, y[held_out]) > 0.9, name
        means[name] = mean
        pick = warm_ref.pick(X, float(y[train].max()))
        assert 0 <= pick < len(X) and pick not in set(train.tolist()), f"{name} picked a measured point"
    for a in means:
        for b in means:
            assert _corr(means[a], means[b]) > 0.9, (a, b)


def test_gpytorch_dkl_reference_learns_and_keeps_its_optimiser() -> None:
    X, y = _smooth(200, 4, seed=1)
    ref = GpytorchDKL(max_iter=150)
    ref.fit(X[:59], y[:59])
    warm = copy.deepcopy(ref)
    assert warm.fit(X[:60], y[:60]) == 10
    assert warm._opt is not None and warm._opt.param_groups[0]["params"][0] is next(warm._model.parameters())
    assert warm._opt.state, "the Adam state survives the warm start"
    mean, var = warm.predict(X[60:])
    assert (var > 0).all() and _corr(mean, y[60:]) > 0.7
    assert warm.pick(X, float(y[:60].max())) >= 60


def test_references_pin_the_numerics_botorch_sets_whatever_was_imported() -> None:
    import gpytorch
    import linear_operator

    from autoscope.evals.latency_refs import exact_numerics

    with exact_numerics():
        assert linear_operator.settings.fast_computations.log_prob.off()
        assert linear_operator.settings.fast_computations.solves.off()
        assert linear_operator.settings.max_cholesky_size.value() == 4096
        assert gpytorch.settings.max_eager_kernel_size.value() == 4096


def test_make_references_names_each_library() -> None:
    refs = make_references("cpu", seed=0)
    assert set(refs) == REFS and all(r.optimizer for r in refs.values())


def test_synthetic_candidates_are_seeded() -> None:
    X1, y1 = synthetic_candidates(100, 16, seed=3)
    X2, y2 = synthetic_candidates(100, 16, seed=3)
    assert X1.shape == (100, 16) and y1.shape == (100,)
    assert (X1 == X2).all() and (y1 == y2).all()
    assert not (synthetic_candidates(100, 16, seed=4)[1] == y1).all()
