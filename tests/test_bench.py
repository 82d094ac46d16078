"""The benchmark commands: JSON shapes scripts rely on, on the twin and on replayed data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from autoscope.agents.cli import app
from autoscope.tests.datasets import record_from_twin

runner = CliRunner()
METHOD_KEYS = {"to_recall_50", "to_recall_90", "recall_at_budget", "dose_e_per_A2", "step_latency_ms"}


def bench(*args: str) -> dict:
    res = runner.invoke(app, ["bench", *args, "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_discovery_json_shape_on_the_twin():
    out = bench(
        "discovery",
        "--scenario",
        "plasmonic",
        "--seeds",
        "1",
        "--budget",
        "12",
        "--methods",
        "dkl,random,raster",
    )
    assert {"scenario", "seeds", "budget", "methods"} <= set(out)
    assert out["scenario"] == "plasmonic" and out["seeds"] == 1 and out["budget"] == 12
    assert set(out["methods"]) == {"dkl", "random", "raster"}
    for name, m in out["methods"].items():
        assert set(m) >= METHOD_KEYS
        assert 0.0 <= m["recall_at_budget"] <= 1.0
        assert m["dose_e_per_A2"] > 0
        for level in ("to_recall_50", "to_recall_90"):
            assert m[level] is None or 1 <= m[level] <= 12
        assert (m["step_latency_ms"] > 0) == (name == "dkl")


def test_latency_json_shape():
    out = bench(
        "latency", "--candidates", "256", "--dim", "8", "--observations", "20", "--steps", "2", "--no-refs"
    )
    assert out["candidates"] == 256 and out["dim"] == 8 and out["observations"] == 20
    assert set(out["step_ms"]) == {"dkl", "gp", "sklearn_ard_gp"}
    assert set(out["speedup_vs_sklearn"]) == {"dkl", "gp"}
    assert all(v > 0 for v in out["step_ms"].values())
    for k in ("dkl", "gp"):
        assert out["speedup_vs_sklearn"][k] == pytest.approx(
            out["step_ms"]["sklearn_ard_gp"] / out["step_ms"][k]
        )


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    return record_from_twin(tmp_path_factory.mktemp("bench") / "si.h5", grid=40, fov_nm=400.0, channels=200)


def test_both_benchmarks_run_on_replayed_data(recorded: Path, tmp_path: Path):
    campaign = tmp_path / "replay-campaign.yaml"
    campaign.write_text(
        json.dumps(
            {
                "budget": 10,
                "seed_points": 4,
                "survey": {
                    "fov_nm": 400.0,
                    "pixels": 40,
                    "dwell_s": 1e-5,
                    "spectra": 0,
                    "spectrum_dwell_s": 0.01,
                    "energy_min_eV": -1.5,
                    "energy_max_eV": 2.9,
                },
                "stride_px": 2,
                "patch": {"window_px": 8, "pca_components": 8},
                "scalarizer": {"kind": "band_intensity", "lo_eV": 1.1, "hi_eV": 1.7},
                "spectrum_dwell_s": 0.01,
                "energy_min_eV": -1.5,
                "energy_max_eV": 2.9,
            }
        )
    )
    out = bench(
        "discovery",
        "--replay",
        str(recorded),
        "--campaign",
        str(campaign),
        "--seeds",
        "1",
        "--budget",
        "10",
        "--methods",
        "random,dkl",
    )
    assert set(out["methods"]) == {"random", "dkl"}
    assert all(0.0 <= m["recall_at_budget"] <= 1.0 for m in out["methods"].values())
    lat = bench(
        "latency",
        "--replay",
        str(recorded),
        "--candidates",
        "300",
        "--dim",
        "16",
        "--observations",
        "30",
        "--steps",
        "2",
        "--no-refs",
    )
    assert lat["candidates"] == 300 and lat["step_ms"]["dkl"] > 0


def test_unknown_method_exits_2():
    res = runner.invoke(app, ["bench", "discovery", "--methods", "dkl,oracle"])
    assert res.exit_code == 2 and "oracle" in res.output
