"""The cost-growth benchmark returns its documented shape and draws its figure (timings are not asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autoscope.evals.growth import (
    MODELS,
    bench_growth,
    crossing,
    format_growth,
    growth_figure,
    peak_memory_mb,
)
from autoscope.tools import campaign
from autoscope.tools.ml import sparse

POINT_KEYS = {
    "observations",
    "candidates",
    "step_ms",
    "peak_mb",
    "iterations",
    "evaluations",
    "sparse",
    "inducing",
    "extrapolated",
}


@pytest.fixture(scope="module")
def tiny() -> dict:
    return bench_growth(
        (20, 40), (64, 256), fixed_candidates=64, fixed_observations=24, dim=4, steps=1, inducing=16, seed=0
    )


def test_tiny_growth_run_has_the_documented_shape(tiny: dict, tmp_path: Path) -> None:
    assert {"device", "threads", "dim", "steps", "inducing", "sparse_above", "memory", "by_observations",
            "by_candidates", "crossing", "fixed_candidates", "fixed_observations", "max_step_s"} <= set(tiny)  # fmt: skip
    assert list(tiny["by_observations"]) == list(MODELS) == list(tiny["by_candidates"])
    for name in MODELS:
        rows = tiny["by_observations"][name]
        assert [r["observations"] for r in rows] == [20, 40]
        assert [r["candidates"] for r in tiny["by_candidates"][name]] == [64, 256]
        for r in rows + tiny["by_candidates"][name]:
            assert POINT_KEYS <= set(r) and r["step_ms"] > 0
            assert r["sparse"] is name.endswith("_sparse")
        if name.endswith("_sparse"):
            assert rows[-1]["inducing"] == 16  # 40 observations, at most 16 inducing points
    assert set(tiny["crossing"]) == {"gp", "dkl"}
    json.dumps(tiny)
    text = format_growth(tiny)
    assert "gp_sparse" in text and "against observations" in text and "against candidates" in text
    png = growth_figure(tiny, tmp_path / "growth.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_point_that_would_take_too_long_is_extrapolated() -> None:
    r = bench_growth((20, 40), (64,), fixed_candidates=64, fixed_observations=24, models=("gp",), dim=3,
                     steps=1, max_step_s=0.0)  # fmt: skip
    first, second = r["by_observations"]["gp"]
    assert not first["extrapolated"] and second["extrapolated"]
    assert second["evaluations"] == first["evaluations"] and second["evaluation_ms"] >= 0
    assert "~" in format_growth(r)


def test_crossing_is_where_the_sparse_step_stays_faster() -> None:
    def rows(ms: list[float]) -> list[dict]:
        return [{"observations": n, "step_ms": t} for n, t in zip((100, 1000, 10000), ms, strict=True)]

    assert crossing(rows([1, 10, 100]), rows([10, 10, 10])) == pytest.approx(1000.0)
    assert crossing(rows([1, 100, 1000]), rows([10, 10, 10])) == pytest.approx(316.2, rel=1e-3)
    assert crossing(rows([1, 2, 3]), rows([10, 10, 10])) is None
    assert crossing(rows([5, 20, 30]), rows([1, 1, 1])) == 100.0


def test_peak_memory_sees_a_large_allocation() -> None:
    import numpy as np

    def allocate() -> None:
        a = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
        assert a.sum() > 0

    peak, elapsed = peak_memory_mb(allocate, "cpu")
    assert elapsed > 0
    if peak is not None:
        assert 50 < peak < 400


def test_the_campaign_default_is_the_models_default() -> None:
    assert campaign.SPARSE_ABOVE == sparse.SPARSE_ABOVE
    assert campaign.CampaignConfig.model_fields["sparse_above"].default == sparse.SPARSE_ABOVE
