"""The step-latency benchmark returns its documented shape (timings are not asserted)."""

from __future__ import annotations

import json

from autoscope.evals.latency import bench_latency, format_latency, synthetic_candidates


def test_tiny_latency_bench_has_the_exact_shape() -> None:
    result = bench_latency(candidates=256, dim=8, observations=20, device="cpu", steps=2, seed=0)
    assert set(result) == {"candidates", "dim", "observations", "device", "step_ms", "speedup_vs_sklearn"}
    assert (result["candidates"], result["dim"], result["observations"], result["device"]) == (
        256,
        8,
        20,
        "cpu",
    )
    assert set(result["step_ms"]) == {"dkl", "gp", "sklearn_ard_gp"}
    assert set(result["speedup_vs_sklearn"]) == {"dkl", "gp"}
    assert all(v > 0 for v in result["step_ms"].values())
    assert all(v > 0 for v in result["speedup_vs_sklearn"].values())
    json.dumps(result)
    table = format_latency(result)
    assert "sklearn_ard_gp" in table and "dkl" in table


def test_synthetic_candidates_are_seeded() -> None:
    X1, y1 = synthetic_candidates(100, 16, seed=3)
    X2, y2 = synthetic_candidates(100, 16, seed=3)
    assert X1.shape == (100, 16) and y1.shape == (100,)
    assert (X1 == X2).all() and (y1 == y2).all()
    assert not (synthetic_candidates(100, 16, seed=4)[1] == y1).all()
