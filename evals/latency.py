"""Latency of one active-learning step: ours (DKL, exact GP) against gpytorch, BoTorch and scikit-learn.

A step = fit on ``observations`` points + predict mean and spread over all
``candidates`` + expected-improvement argmax. Ours refit warm from the previous
step's fit on one fewer point, as in a running campaign, and so do the gpytorch and
BoTorch references (``latency_refs``: gpytorch ExactGP and DKL, BoTorch SingleTaskGP
with LogEI); scikit-learn's ``GaussianProcessRegressor`` (ARD RBF + white noise,
default L-BFGS-B) fits from scratch, as it is normally used. The data are synthetic
and seeded: candidates on a 3-D manifold embedded nonlinearly in ``dim`` dimensions,
a smooth target plus noise.
"""

from __future__ import annotations

import copy
import logging
import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autoscope.evals.latency_refs import make_references, reference_step
from autoscope.instruments.replay import load_spectrum_image
from autoscope.tools.ml.acquisition import expected_improvement
from autoscope.tools.ml.base import Surrogate
from autoscope.tools.ml.descriptors import PatchFeaturizer, PatchSpec, extract_patches
from autoscope.tools.ml.dkl import DKL
from autoscope.tools.ml.gp import ExactGP

log = logging.getLogger(__name__)


def synthetic_candidates(
    candidates: int, dim: int, seed: int, manifold_dim: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """(X (m, dim), y (m,)): a smooth target on a low-dimensional manifold, plus noise."""
    rng = np.random.default_rng(seed)
    u = rng.uniform(-1.0, 1.0, (candidates, manifold_dim))
    proj = rng.normal(0.0, 1.5, (manifold_dim, dim))
    phase = rng.uniform(0.0, 2.0 * np.pi, dim)
    X = np.sin(u @ proj + phase) + 0.05 * rng.normal(size=(candidates, dim))
    y = np.sin(3.0 * u[:, 0]) + u[:, 1] ** 2 - 0.5 * u[:, -1] + 0.05 * rng.normal(size=candidates)
    return X, y


def replay_candidates(path: Path, candidates: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Descriptors and targets from a recorded spectrum image.

    ``candidates`` pixel positions (all pixels in a random order, repeated when the
    recording has fewer), ``dim`` PCA components of the HAADF patches around them, and
    as the target the fraction of each recorded spectrum's counts in the upper half of
    its energy window.
    """
    data = load_spectrum_image(path)
    h, w = data.image.shape
    window = max(8, math.ceil(math.sqrt(dim)))
    if window * window < dim or h * w < 2:
        raise ValueError(f"a {h}×{w} recording cannot give {dim}-dimensional patch descriptors")
    rng = np.random.default_rng(seed)
    flat = np.concatenate([rng.permutation(h * w) for _ in range(math.ceil(candidates / (h * w)))])[
        :candidates
    ]
    rows, cols = np.divmod(flat, w)
    patches = extract_patches(data.image.astype(np.float64), rows, cols, window)
    X = PatchFeaturizer(PatchSpec(window_px=window, pca_components=dim)).fit_transform(patches)
    spectra = data.spectra[rows, cols].astype(np.float64)
    half = spectra.shape[1] // 2
    y = spectra[:, half:].sum(axis=1) / np.maximum(spectra.sum(axis=1), 1.0)
    return X, y


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _ours_step(model: Surrogate, X: np.ndarray, y: np.ndarray, obs: np.ndarray) -> int:
    iterations = model.fit(X[obs], y[obs]).iterations
    mean, var = model.predict(X)
    int(np.argmax(expected_improvement(mean, var, float(y[obs].max()), 0.01)))
    return iterations


def _sklearn_step(X: np.ndarray, y: np.ndarray, obs: np.ndarray) -> int:
    from scipy.optimize import minimize
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

    iterations = 0

    def lbfgsb(obj_func: Callable, initial_theta: np.ndarray, bounds: np.ndarray) -> tuple:
        """scikit-learn's default optimizer ("fmin_l_bfgs_b"), counting its iterations."""
        nonlocal iterations
        res = minimize(obj_func, initial_theta, method="L-BFGS-B", jac=True, bounds=bounds)
        iterations += int(res.nit)
        return res.x, res.fun

    kernel = ConstantKernel() * RBF(length_scale=np.ones(X.shape[1])) + WhiteKernel()
    gp = GaussianProcessRegressor(kernel=kernel, normalize_y=True, optimizer=lbfgsb)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lengthscale-at-bound convergence warnings
        gp.fit(X[obs], y[obs])
        mean, std = gp.predict(X, return_std=True)
    int(np.argmax(expected_improvement(mean, std**2, float(y[obs].max()), 0.01)))
    return iterations


def _median_ms(run: Callable[[int], int], steps: int, device: str) -> tuple[float, float]:
    """(median ms per step, median optimizer iterations per step) over ``steps`` calls."""
    times, iterations = [], []
    for k in range(steps):
        _sync(device)
        t0 = time.perf_counter()
        iterations.append(run(k))
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times)), float(np.median(iterations))


#: library → (ours → that library's reference of the same model type)
LIBRARY_REFS = {
    "gpytorch": {"gp": "gpytorch_exact_gp", "dkl": "gpytorch_dkl"},
    "botorch": {"gp": "botorch_stgp_logei"},
}
#: ours → all library references of the same model type
SAME_TYPE = {ours: tuple(lib[ours] for lib in LIBRARY_REFS.values() if ours in lib) for ours in ("dkl", "gp")}
OPTIMIZERS = {
    "dkl": "AdamW lr 0.01, ≤10 warm steps",
    "gp": "torch L-BFGS (strong Wolfe), ≤30 warm iterations",
    "sklearn_ard_gp": "scipy L-BFGS-B from scratch (default)",
}


def bench_latency(
    candidates: int = 4096,
    dim: int = 64,
    observations: int = 200,
    device: str = "cpu",
    steps: int = 5,
    seed: int = 0,
    replay: Path | None = None,
    refs: bool = True,
) -> dict[str, Any]:
    """Median milliseconds and optimizer iterations per step for DKL and the exact GP,
    the gpytorch/BoTorch references (unless ``refs=False``) and scikit-learn's ARD GP.

    Descriptors are synthetic, or with ``replay`` the PCA-compressed HAADF patches of a
    recorded spectrum image with its band-fraction signal as the target.
    """
    if observations + steps > candidates:
        raise ValueError("need candidates ≥ observations + steps")
    if replay is None:
        X, y = synthetic_candidates(candidates, dim, seed)
    else:
        X, y = replay_candidates(replay, candidates, dim, seed)
    order = np.random.default_rng(seed + 1).permutation(candidates)
    base, fresh = order[: observations - 1], order[observations - 1 : observations - 1 + steps]

    def obs(k: int) -> np.ndarray:
        return np.concatenate([base, fresh[k : k + 1]])

    step_ms: dict[str, float] = {}
    iterations: dict[str, float] = {}
    models: dict[str, Any] = {
        "dkl": DKL(device=device, seed=seed),
        "gp": ExactGP(device=device, seed=seed),
    }
    optimizers = dict(OPTIMIZERS)
    if refs:
        references = make_references(device, seed)
        models.update(references)
        optimizers.update({name: ref.optimizer for name, ref in references.items()})
    for name, model in models.items():
        step = _ours_step if name in SAME_TYPE else reference_step
        model.fit(X[base], y[base])  # the previous step's fit (cold, not timed)
        step(copy.deepcopy(model), X, y, obs(0))  # warm-up: first-call overheads

        copies = [copy.deepcopy(model) for _ in range(steps)]  # each step refits from the same state

        def run(k: int, copies: list[Any] = copies, step: Callable = step) -> int:
            return step(copies[k], X, y, obs(k))

        step_ms[name], iterations[name] = _median_ms(run, steps, device)
        log.info("latency %s: %.1f ms/step, %g iterations", name, step_ms[name], iterations[name])
    sk_ms, iterations["sklearn_ard_gp"] = _median_ms(lambda k: _sklearn_step(X, y, obs(k)), steps, "cpu")
    step_ms["sklearn_ard_gp"] = sk_ms
    log.info("latency sklearn_ard_gp: %.1f ms/step", sk_ms)
    order_keys = ["dkl", "gp", *(k for k in models if k not in SAME_TYPE), "sklearn_ard_gp"]
    speedup: dict[str, dict[str, float]] = {lib: {} for lib in (*LIBRARY_REFS, "fastest_ref")}
    if refs:  # > 1: ours is faster
        for lib, pairs in LIBRARY_REFS.items():
            speedup[lib] = {ours: step_ms[ref] / step_ms[ours] for ours, ref in pairs.items()}
        for ours, names in SAME_TYPE.items():
            speedup["fastest_ref"][ours] = min(step_ms[r] for r in names) / step_ms[ours]
    return {
        "candidates": candidates,
        "dim": dim,
        "observations": observations,
        "device": device,
        "step_ms": {k: step_ms[k] for k in order_keys},
        "iterations": {k: iterations[k] for k in order_keys},
        "optimizer": {k: optimizers[k] for k in order_keys},
        "speedup_vs_sklearn": {k: sk_ms / step_ms[k] for k in ("dkl", "gp")},
        "speedup_vs_gpytorch": speedup["gpytorch"],
        "speedup_vs_botorch": speedup["botorch"],
        "speedup_vs_fastest_ref": speedup["fastest_ref"],
    }


def format_latency(result: dict[str, Any]) -> str:
    """A table (method, ms per step, median optimizer iterations, speedup over
    scikit-learn, optimizer) and how ours compare with the library references."""
    lines = [
        f"step latency: {result['candidates']} candidates × {result['dim']} dims × "
        f"{result['observations']} observations on {result['device']}",
        f"{'method':<20}{'ms/step':>10}{'iters':>7}{'× sklearn':>11}  optimizer",
    ]
    sk = result["step_ms"]["sklearn_ard_gp"]
    for name, ms in result["step_ms"].items():
        iters = result["iterations"][name]
        lines.append(f"{name:<20}{ms:>10.1f}{iters:>7g}{sk / ms:>10.1f}×  {result['optimizer'][name]}")
    for ours, ratio in result["speedup_vs_fastest_ref"].items():
        refs = SAME_TYPE[ours]
        fastest = min(refs, key=lambda r: result["step_ms"][r])
        verdict = "faster" if ratio >= 1.0 else "slower"
        shown = ratio if ratio >= 1.0 else 1.0 / ratio
        lines.append(f"{ours}: {shown:.2f}× {verdict} than the fastest library reference ({fastest})")
    return "\n".join(lines)
