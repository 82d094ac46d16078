"""How the cost of one active-learning step grows: the exact heads against the sparse ones.

A step is the same as in ``evals/latency.py``: refit warm from the previous step's fit on
one fewer point, predict mean and variance over every candidate, take the expected-
improvement argmax. It is timed (median over ``steps`` steps, each refitting a copy of the
same state) and its peak memory measured, for four models — the exact GP and DKL as a
campaign has them below the switch (``sparse_above=None``) and their sparse versions
(``sparse_above=0``, at most ``inducing`` inducing points) — along two sweeps on seeded
synthetic descriptors (``latency.synthetic_candidates``):

- against the observations (default 100 … 5000) at a fixed number of candidates; the
  observations are drawn from a pool larger than the candidates when need be (timing does
  not care whether a measured point is also a candidate);
- against the candidates (default 4096 … 262 144) at a fixed number of observations;
  predictions are chunked (``kernels.PREDICT_CHUNK``), so memory stays bounded.

Along the observation sweep each model's state grows with the sweep (the fit at the next
size is warm from the previous size). A point whose step would take more than
``max_step_s`` (grown from the model's previous point: n³ for the exact heads, n for the
sparse ones) is not run in full: two capped steps are timed instead, with no optimisation
iteration (t₀: standardisation, the final likelihood, the posterior, prediction and EI) and
with one (t₁, its e₁ loss evaluations with gradients, line search included), and the step
is estimated as ``t₀ + E · (t₁ − t₀) / e₁`` with E the loss evaluations of the model's last
full step; such a point says ``"extrapolated": true``. Its peak memory is the capped steps'
(one evaluation has the same peak as many).

Memory: on CUDA the growth of torch's allocator peak over what was allocated when the step
began; on the CPU (tracemalloc does not see torch's allocations) the growth of the process's
peak resident set over its resident set when the step began — the high-water mark reset
through ``/proc/self/clear_refs`` and free heap returned to the system first
(``malloc_trim``), else a 5 ms sampler of the resident set. Memory the allocator kept from
an earlier step and reuses is not counted: the figures are lower bounds, good for growth.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autoscope.evals.latency import _sync, synthetic_candidates
from autoscope.tools.ml.acquisition import expected_improvement
from autoscope.tools.ml.base import FitReport, Surrogate
from autoscope.tools.ml.dkl import DKL
from autoscope.tools.ml.gp import ExactGP
from autoscope.tools.ml.sparse import INDUCING, SPARSE_ABOVE

log = logging.getLogger(__name__)

MODELS = ("gp", "gp_sparse", "dkl", "dkl_sparse")
OBSERVATIONS = (100, 200, 500, 1000, 2000, 5000)
CANDIDATES = (4096, 16384, 65536, 262144)
#: how a step's cost is expected to grow with the observations, for the skip decision
_GROWTH_POWER = {"gp": 3.0, "dkl": 3.0, "gp_sparse": 1.0, "dkl_sparse": 1.0}


def make_growth_model(name: str, device: str, seed: int, inducing: int = INDUCING) -> ExactGP | DKL:
    """One of ``MODELS``: exact (never sparse) or sparse from the first observation."""
    sparse_above = 0 if name.endswith("_sparse") else None
    if name.startswith("gp"):
        return ExactGP(device=device, seed=seed, sparse_above=sparse_above, inducing=inducing)
    if name.startswith("dkl"):
        return DKL(device=device, seed=seed, sparse_above=sparse_above, inducing=inducing)
    raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")


# -- peak memory -------------------------------------------------------------------------
def _proc_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _malloc_trim() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _can_reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return _proc_kb("VmHWM") is not None
    except OSError:
        return False


def memory_method(device: str) -> str:
    """What ``peak_memory_mb`` measures on this machine."""
    if device.startswith("cuda"):
        return "cuda allocator peak growth (torch.cuda.max_memory_allocated)"
    if _can_reset_hwm():
        return "resident-set peak growth (VmHWM reset via /proc/self/clear_refs, after malloc_trim)"
    if _proc_kb("VmRSS") is not None:
        return "resident-set peak growth (VmRSS sampled every 5 ms)"
    return "unavailable"


def peak_memory_mb(run: Callable[[], None], device: str) -> tuple[float | None, float]:
    """(peak memory growth in MiB during ``run()``, or None where not measurable; seconds taken)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        run()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20, time.perf_counter() - t0
    _malloc_trim()
    base = _proc_kb("VmRSS")
    if base is not None and _can_reset_hwm():
        t0 = time.perf_counter()
        run()
        elapsed = time.perf_counter() - t0
        peak = _proc_kb("VmHWM")
        return (None if peak is None else max(peak - base, 0) / 1024), elapsed
    if base is None:
        t0 = time.perf_counter()
        run()
        return None, time.perf_counter() - t0
    high, done = [base], threading.Event()

    def sample() -> None:
        while not done.wait(0.005):
            high[0] = max(high[0], _proc_kb("VmRSS") or 0)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    try:
        run()
    finally:
        elapsed = time.perf_counter() - t0
        done.set()
        sampler.join()
    return max(high[0] - base, 0) / 1024, elapsed


# -- one point ---------------------------------------------------------------------------
def _step(model: Surrogate, X: np.ndarray, y: np.ndarray, obs: np.ndarray, Xc: np.ndarray) -> FitReport:
    """One step as in ``evals/latency.py``, over the candidates Xc: warm fit, predict, EI argmax."""
    report = model.fit(X[obs], y[obs])
    mean, var = model.predict(Xc)
    int(np.argmax(expected_improvement(mean, var, float(y[obs].max()), 0.01)))
    return report


def _capped(model: Surrogate, iterations: int) -> Surrogate:
    capped = copy.deepcopy(model)
    capped.warm_iter = iterations  # type: ignore[attr-defined]
    return capped


def _measure(
    model: Surrogate, X: np.ndarray, y: np.ndarray, obs: Callable[[int], np.ndarray], cand: np.ndarray,
    steps: int, device: str,
) -> dict[str, Any]:  # fmt: skip
    """Median step time (ms) over ``steps`` copies of ``model``, the first's peak memory and report."""
    copies: list[Surrogate | None] = [copy.deepcopy(model) for _ in range(steps)]
    reports: list[FitReport] = []
    Xc = X[cand]  # the campaign holds its candidates' descriptors: not part of the step

    def step(k: int) -> None:
        m = copies[k]
        assert m is not None
        reports.append(_step(m, X, y, obs(k), Xc))
        copies[k] = None  # free the fitted copy before the next step

    times, peak = [], None
    for k in range(steps):
        _sync(device)
        if k == 0:
            peak, elapsed = peak_memory_mb(lambda: step(0), device)
        else:
            t0 = time.perf_counter()
            step(k)
            _sync(device)
            elapsed = time.perf_counter() - t0
        times.append(elapsed * 1e3)
    last = reports[-1]
    return {
        "step_ms": float(np.median(times)),
        "peak_mb": None if peak is None else round(peak, 1),
        "iterations": int(np.median([r.iterations for r in reports])),
        "evaluations": int(np.median([r.extra.get("evaluations", r.iterations) for r in reports])),
        "sparse": bool(last.extra.get("sparse", False)),
        "inducing": int(last.extra.get("inducing", last.n_observations)),
        "extrapolated": False,
    }


def _extrapolate(
    model: Surrogate, X: np.ndarray, y: np.ndarray, obs: Callable[[int], np.ndarray], cand: np.ndarray,
    device: str, reference: dict[str, Any] | None,
) -> dict[str, Any]:  # fmt: skip
    """The step estimated from two capped steps (no optimisation iteration, one): see the module doc."""
    t0 = _measure(_capped(model, 0), X, y, obs, cand, 1, device)
    t1 = _measure(_capped(model, 1), X, y, obs, cand, 1, device)
    per_eval = max(t1["step_ms"] - t0["step_ms"], 0.0) / max(t1["evaluations"], 1)
    evaluations = reference["evaluations"] if reference else t1["evaluations"]
    peaks = [p for p in (t0["peak_mb"], t1["peak_mb"]) if p is not None]
    return t1 | {
        "step_ms": t0["step_ms"] + evaluations * per_eval,
        "peak_mb": max(peaks) if peaks else None,
        "iterations": reference["iterations"] if reference else t1["iterations"],
        "evaluations": evaluations,
        "extrapolated": True,
        "evaluation_ms": per_eval,
    }


# -- the benchmark -----------------------------------------------------------------------
def bench_growth(
    observations: Sequence[int] = OBSERVATIONS,
    candidates: Sequence[int] = CANDIDATES,
    *,
    fixed_candidates: int = 4096,
    fixed_observations: int = 200,
    models: Sequence[str] = MODELS,
    dim: int = 64,
    device: str = "cpu",
    steps: int = 3,
    max_step_s: float = 20.0,
    inducing: int = INDUCING,
    seed: int = 0,
    threads: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Step time and peak memory of each model along both sweeps (see the module doc).
    ``threads``: torch's intra-op threads for the run (default: as set; on a loaded machine 1
    avoids the oversubscription collapse of multi-threaded BLAS)."""
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be ≥ 1, got {threads}")
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _bench_growth(
            observations, candidates, fixed_candidates, fixed_observations, models, dim, device, steps,
            max_step_s, inducing, seed, progress,
        )  # fmt: skip
    finally:
        torch.set_num_threads(previous)


def _bench_growth(
    observations: Sequence[int], candidates: Sequence[int], fixed_candidates: int, fixed_observations: int,
    models: Sequence[str], dim: int, device: str, steps: int, max_step_s: float, inducing: int, seed: int,
    progress: Callable[[int], None] | None,
) -> dict[str, Any]:  # fmt: skip
    observations, candidates = sorted(set(observations)), sorted(set(candidates))
    if not observations or not candidates or min(observations) < 2 or min(candidates) < 1:
        raise ValueError("need at least one size per sweep: observations ≥ 2, candidates ≥ 1")
    if steps < 1:
        raise ValueError(f"steps must be ≥ 1, got {steps}")
    for name in models:
        make_growth_model(name, "cpu", seed)  # unknown names fail before any work
    pool = max(fixed_candidates, max(candidates), max(observations) + steps, fixed_observations + steps)
    X, y = synthetic_candidates(pool, dim, seed)
    order = np.random.default_rng(seed + 1).permutation(pool)

    def obs_at(n: int) -> Callable[[int], np.ndarray]:
        base = order[: n - 1]
        return lambda k: np.concatenate([base, order[n - 1 + k : n + k]])

    by_obs: dict[str, list[dict[str, Any]]] = {}
    by_cand: dict[str, list[dict[str, Any]]] = {}
    cand_fixed = np.arange(fixed_candidates)
    for name in models:
        model = make_growth_model(name, device, seed, inducing)
        rows: list[dict[str, Any]] = []
        last_full: dict[str, Any] | None = None
        for i, n in enumerate(observations):
            predicted = 0.0
            if rows:  # the previous point's step, grown as the head's cost grows
                prev = rows[-1]
                predicted = prev["step_ms"] / 1e3 * (n / prev["observations"]) ** _GROWTH_POWER[name]
            if predicted > max_step_s:
                row = _extrapolate(model, X, y, obs_at(n), cand_fixed, device, last_full)
            else:
                model.fit(X[order[: n - 1]], y[order[: n - 1]])  # the previous step's fit (not timed)
                if i == 0:  # first-call overheads, not timed
                    _step(copy.deepcopy(model), X, y, obs_at(n)(0), X[cand_fixed])
                row = _measure(model, X, y, obs_at(n), cand_fixed, steps, device)
                last_full = row
            rows.append({"observations": n, "candidates": fixed_candidates} | row)
            log.info("growth %s n=%d: %s", name, n, rows[-1])
            if progress:
                progress(1)
        by_obs[name] = rows

        model = make_growth_model(name, device, seed, inducing)
        n = fixed_observations
        model.fit(X[order[: n - 1]], y[order[: n - 1]])
        rows = []
        for c in candidates:
            row = _measure(model, X, y, obs_at(n), np.arange(c), steps, device)
            rows.append({"observations": n, "candidates": c} | row)
            log.info("growth %s m=%d: %s", name, c, rows[-1])
            if progress:
                progress(1)
        by_cand[name] = rows
    return {
        "device": device,
        "threads": torch.get_num_threads(),
        "dim": dim,
        "steps": steps,
        "max_step_s": max_step_s,
        "inducing": inducing,
        "sparse_above": SPARSE_ABOVE,
        "memory": memory_method(device),
        "fixed_candidates": fixed_candidates,
        "fixed_observations": fixed_observations,
        "by_observations": by_obs,
        "by_candidates": by_cand,
        "crossing": {
            base: crossing(by_obs[base], by_obs[base + "_sparse"])
            for base in ("gp", "dkl")
            if base in by_obs and base + "_sparse" in by_obs
        },
    }


def crossing(exact: list[dict[str, Any]], sparse: list[dict[str, Any]]) -> float | None:
    """Observations beyond which the sparse step stays faster (log-log interpolated); None if never."""
    pairs = [(a["observations"], a["step_ms"], b["step_ms"]) for a, b in zip(exact, sparse, strict=True)]
    faster = [s < e for _, e, s in pairs]
    if not faster or not faster[-1]:
        return None
    i = len(faster) - 1
    while i > 0 and faster[i - 1]:
        i -= 1
    if i == 0:
        return float(pairs[0][0])
    (n0, e0, s0), (n1, e1, s1) = pairs[i - 1], pairs[i]
    d0, d1 = math.log(e0 / s0), math.log(e1 / s1)  # d0 ≤ 0 < d1
    t = -d0 / (d1 - d0)
    return float(math.exp(math.log(n0) + t * (math.log(n1) - math.log(n0))))


def format_growth(result: dict[str, Any]) -> str:
    """Two tables (ms per step, peak MiB; ~ marks an extrapolated point) and the crossings."""
    lines = [
        f"step cost growth on {result['device']} ({result['threads']} threads), {result['dim']} dims, "
        f"median of {result['steps']}, sparse heads on ≤ {result['inducing']} inducing points; "
        f"memory: {result['memory']}"
    ]
    for key, axis, fixed in (
        ("by_observations", "observations", f"{result['fixed_candidates']} candidates"),
        ("by_candidates", "candidates", f"{result['fixed_observations']} observations"),
    ):
        table = result[key]
        if not table:
            continue
        sizes = [r[axis] for r in next(iter(table.values()))]
        lines.append(f"\nms/step (peak MiB) against {axis}, at {fixed}")
        lines.append(f"{'model':<12}" + "".join(f"{s:>18}" for s in sizes))
        for name, rows in table.items():
            cells = []
            for r in rows:
                mark = "~" if r["extrapolated"] else ""
                mem = "—" if r["peak_mb"] is None else f"{r['peak_mb']:.0f}"
                cells.append(f"{mark}{r['step_ms']:.0f} ({mem})")
            lines.append(f"{name:<12}" + "".join(f"{c:>18}" for c in cells))
    for base, n in result["crossing"].items():
        said = "never within the sweep" if n is None else f"beyond ~{n:.0f} observations"
        lines.append(f"{base}: the sparse step is faster {said}")
    lines.append(f"default switch (sparse_above): {result['sparse_above']}")
    return "\n".join(lines)


def growth_figure(result: dict[str, Any], path: Path) -> Path:
    """Step time against observations and against candidates, log-log, one line per model."""
    from autoscope.tools.figures import FIGURES, save_figure

    with FIGURES:
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        for ax, key, axis in (
            (axes[0], "by_observations", "observations"),
            (axes[1], "by_candidates", "candidates"),
        ):
            for name, rows in result[key].items():
                xs = np.array([r[axis] for r in rows], dtype=float)
                ts = np.array([r["step_ms"] / 1e3 for r in rows])
                est = np.array([r["extrapolated"] for r in rows], dtype=bool)
                (line,) = ax.plot(xs, ts, lw=1.5, label=name, ls="--" if "sparse" in name else "-")
                ax.plot(xs[~est], ts[~est], "o", color=line.get_color(), ms=4)
                ax.plot(xs[est], ts[est], "o", mfc="none", color=line.get_color(), ms=6)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel(axis)
            ax.grid(alpha=0.3, which="both")
        threshold = result.get("sparse_above")
        if threshold:
            axes[0].axvline(threshold, color="0.4", lw=1, ls=":", label=f"switch ({threshold})")
        axes[0].set_title(f"at {result['fixed_candidates']} candidates (open: extrapolated)", fontsize=10)
        axes[1].set_title(f"at {result['fixed_observations']} observations", fontsize=10)
        axes[0].set_ylabel("step time (s): warm fit + predict + EI")
        axes[0].legend(fontsize=8)
        title = (
            f"step cost growth: exact vs sparse (≤ {result['inducing']} inducing), "
            f"{result['device']}, {result['threads']} threads, {result['dim']} dims"
        )
        return save_figure(fig, path, title)
