"""The campaign runner: exactly-once steps, resume after SIGKILL, baselines, and monitors on the twin."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from autoscope.evals.discovery import sim_truth, target_regions
from autoscope.instruments.sim.config import SimConfig
from autoscope.instruments.sim.oracle import Oracle
from autoscope.instruments.sim.scenarios import make_microscope
from autoscope.tests.processes import log_count, sigkill_when
from autoscope.tools.campaign import (
    CampaignConfig,
    default_campaign_path,
    load_campaign,
    raster_order,
    run_campaign,
)
from autoscope.tools.ml.descriptors import candidate_grid
from autoscope.tools.store import RunStore


def small(**changes) -> CampaignConfig:
    base = load_campaign(default_campaign_path("plasmonic"))
    survey = base.survey.model_copy(update={"pixels": 128})
    return base.with_(**{"survey": survey.model_dump(), "budget": 30, "seed_points": 6, **changes})


@pytest.mark.parametrize("method", ["dkl", "gp", "random", "raster"])
def test_every_method_measures_distinct_positions_within_budget(tmp_path: Path, method: str):
    scope = make_microscope("plasmonic", seed=0)
    with RunStore.create(tmp_path / "run") as store:
        result = run_campaign(scope, store, small(method=method, budget=20))
        acq = [e for e in store.events("acquisition") if e["step_id"].startswith("al-")]
    assert len(result.measured) == len(set(result.measured)) == 20
    assert [e["candidate"] for e in acq] == result.measured
    assert all(e["method"] == method for e in acq)
    assert scope.beam_blanked()
    if method in ("dkl", "gp"):
        assert {s.phase for s in result.steps} == {"seed", "active"}
        assert result.mean is not None and result.mean.shape == (len(result.grid.rows),)


@pytest.mark.parametrize("seed", [0, 2])
def test_dkl_finds_more_targets_than_random_on_the_same_seed(tmp_path: Path, seed: int):
    """With the shipped plasmonic campaign, 60 spectra: DKL lands in far more target regions."""
    base = load_campaign(default_campaign_path("plasmonic"))
    recalls = {}
    for method in ("dkl", "random"):
        scope = make_microscope("plasmonic", seed=seed)
        cfg = base.with_(method=method, budget=60, seed_points=6)
        with RunStore.create(tmp_path / method) as store:
            result = run_campaign(scope, store, cfg)
        s = result.survey
        targets = target_regions(
            result.grid, sim_truth(scope, result.grid, cfg, (s.t_start_s + s.t_end_s) / 2)
        )
        recalls[method] = targets.recall_curve(result.measured)[-1]
    assert recalls["dkl"] > 2 * recalls["random"], recalls


def test_raster_order_visits_every_candidate_once_spreading_the_first_pass():
    twin = make_microscope("plasmonic", seed=0)
    twin.unblank_beam()
    grid = candidate_grid(twin.acquire_image(1000.0, 128, 1e-6), 4, 8)
    order = raster_order(grid, budget=50)
    assert sorted(order) == list(range(len(grid.rows)))
    first = grid.xy_nm[order[:50]]
    assert np.ptp(first[:, 0]) > 0.8 * np.ptp(grid.xy_nm[:, 0])  # the first pass covers the field
    assert np.ptp(first[:, 1]) > 0.5 * np.ptp(grid.xy_nm[:, 1])


def test_sigkill_and_resume_end_like_an_uninterrupted_run(tmp_path: Path):
    cfg_path = tmp_path / "campaign.yaml"
    cfg_path.write_text(json.dumps(small(method="dkl", budget=45).model_dump(mode="json")))
    cmd = [
        sys.executable,
        "-m",
        "autoscope",
        "campaign",
        str(cfg_path),
        "--scenario",
        "plasmonic",
        "--seed",
        "2",
    ]

    whole = subprocess.run(
        [*cmd, "--out", str(tmp_path / "whole")], capture_output=True, text=True, timeout=600
    )
    assert whole.returncode == 0, whole.stderr

    out = tmp_path / "killed"
    sigkill_when([*cmd, "--out", str(out)], out / "events.jsonl", '"step_id":"al-', 15)
    assert 15 <= log_count(out / "events.jsonl", '"step_id":"al-') < 45, "the kill must land mid-campaign"

    resumed = subprocess.run([*cmd, "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr

    def positions(run: Path) -> list[tuple[float, float]]:
        acq = RunStore.open(run, read_only=True).events("acquisition")
        return [(e["x_nm"], e["y_nm"]) for e in acq if e["step_id"].startswith("al-")]

    killed, uninterrupted = positions(out), positions(tmp_path / "whole")
    assert len(killed) == len(set(killed)) == len(set(uninterrupted)) == 45  # no position measured twice


def test_drift_is_detected_and_corrected(tmp_path: Path):
    """A sample drifting ~40 nm during the campaign: candidates are re-aimed onto the same features."""
    sim = SimConfig(drift_velocity_nm_per_s=(25.0, -15.0), drift_random_walk_nm_per_sqrt_s=0.0)
    scope = make_microscope("plasmonic", seed=0, config=sim)
    oracle = Oracle(scope)
    cfg = small(method="dkl", budget=40, drift_check_every=10)
    with RunStore.create(tmp_path / "run") as store:
        result = run_campaign(scope, store, cfg)
        drift_events = [e for e in store.events("monitor") if e["monitor"] == "drift"]
        repeats = [e for e in store.events("acquisition") if e["step_id"].startswith("drift-")]
    assert len(drift_events) >= 2
    s, last = result.survey, repeats[-1]
    true = np.subtract(
        oracle.drift_nm((last["t_start_s"] + last["t_end_s"]) / 2),
        oracle.drift_nm((s.t_start_s + s.t_end_s) / 2),
    )
    base = candidate_grid(s, cfg.stride_px, cfg.patch.window_px // 2)
    applied = result.grid.xy_nm[0] - base.xy_nm[0]
    assert np.hypot(*true) > 3 * s.pixel_size_nm  # a drift that matters
    assert np.hypot(*(applied - true)) < s.pixel_size_nm  # re-aimed within a survey pixel


def test_no_drift_correction_without_drift(tmp_path: Path):
    sim = SimConfig(drift_velocity_nm_per_s=(0.0, 0.0), drift_random_walk_nm_per_sqrt_s=0.0)
    scope = make_microscope("plasmonic", seed=0, config=sim)
    with RunStore.create(tmp_path / "run") as store:
        result = run_campaign(scope, store, small(method="random", budget=25, drift_check_every=10))
    assert not [e for e in result.events if e.kind == "drift"]
    assert np.allclose(result.grid.xy_nm, candidate_grid(result.survey, 4, 8).xy_nm)


class _RegionChange:
    """Test fake: the microscope's field moves to another area of the grid after ``after`` spectra.

    Delegates every protocol call to the current twin; the second twin is a sample on a
    different support (what the probe sees after the stage slipped onto another window).
    """

    def __init__(self, first, second, after: int) -> None:
        self._first, self._second, self._after, self._n = first, second, after, 0

    @property
    def _now(self):
        return self._second if self._n >= self._after else self._first

    def acquire_spectrum(self, *args, **kwargs):
        self._n += 1
        return self._now.acquire_spectrum(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._now, name)


def _support(seed: int) -> str:
    return Oracle(make_microscope("plasmonic", seed=seed)).truth()["substrate"]


def test_change_of_sample_region_raises_ood(tmp_path: Path):
    first = next(s for s in range(20) if _support(s) == "carbon")
    other = next(s for s in range(20) if _support(s) != "carbon")
    scope = _RegionChange(
        make_microscope("plasmonic", seed=first), make_microscope("plasmonic", seed=other), 15
    )
    for twin in (scope._first, scope._second):
        twin.unblank_beam()
    cfg = small(method="dkl", budget=40, drift_check_every=10, stop_on=("ood",))
    with RunStore.create(tmp_path / "run") as store:
        result = run_campaign(scope, store, cfg)
        monitor = store.events("monitor")
    assert result.stopped_by is not None and result.stopped_by.kind == "ood"
    assert result.stopped_by.step == 20  # the first check after the change, not the one before
    assert len(result.measured) == 20
    assert any(e["monitor"] == "ood" for e in monitor)


def test_scalarizer_on_an_empty_band_gets_stuck(tmp_path: Path):
    empty = {"kind": "band_intensity", "lo_eV": -1.9, "hi_eV": -1.4, "background": "linear"}
    good_events, bad = [], None
    for scal, budget in ((empty, 60), (small().scalarizer.model_dump(), 40)):
        scope = make_microscope("plasmonic", seed=5)
        cfg = small(method="gp", budget=budget, scalarizer=scal, stop_on=("stuck",), energy_min_eV=-2.0)
        with RunStore.create(tmp_path / f"run-{scal['lo_eV']}") as store:
            result = run_campaign(scope, store, cfg)
        if scal is empty:
            bad = result
        else:
            good_events = [e for e in result.events if e.kind == "stuck"]
    assert bad.stopped_by is not None and bad.stopped_by.kind == "stuck"
    assert len(bad.measured) < 60
    assert not good_events
