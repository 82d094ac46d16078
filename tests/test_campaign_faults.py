"""Campaigns that survive what real data contain: spectra that cannot be scalarised become failed
measurements, numerical failures of the model are recovered, and the campaign runs to its end."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from autoscope.instruments.replay import ReplayMicroscope, load_spectrum_image
from autoscope.tests.datasets import record_from_twin
from autoscope.tools.campaign import CampaignConfig, run_campaign
from autoscope.tools.figures import campaign_figure
from autoscope.tools.ml.dkl import DKL
from autoscope.tools.store import RunStore

GRID = 16


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    path = record_from_twin(tmp_path_factory.mktemp("faults") / "map.h5", grid=GRID, channels=400)
    return load_spectrum_image(path)


def _config(si, **changes) -> CampaignConfig:
    x0, x1, _, _ = si.extent_nm
    window = (max(si.energy_offset_eV, 0.2), si.energy_eV[-1])
    return CampaignConfig(
        **{
            "method": "dkl",
            "budget": 500,  # more than the map holds: the campaign ends when every candidate is measured
            "seed_points": 6,
            "survey": {
                "fov_nm": x1 - x0,
                "pixels": GRID,
                "dwell_s": si.dwell_s,
                "spectra": 0,
                "spectrum_dwell_s": si.spectrum_dwell_s,
                "energy_min_eV": window[0],
                "energy_max_eV": window[1],
            },
            "stride_px": 1,
            "patch": {"window_px": 4, "pca_components": 4},
            "scalarizer": {
                "kind": "band_intensity",
                "lo_eV": 1.1,
                "hi_eV": 1.7,
                "background": "power_law",
                "pre_lo_eV": 0.6,
                "pre_hi_eV": 1.0,
            },
            "spectrum_dwell_s": si.spectrum_dwell_s,
            "energy_min_eV": window[0],
            "energy_max_eV": window[1],
            **changes,
        }
    )


def test_bad_pixels_become_failed_measurements_and_the_map_is_measured_to_its_end(tmp_path: Path, recording):
    """A NaN pixel and a pixel whose pre-edge window is zero: each is a recorded failed measurement with
    its reason; every other candidate is measured and the model is never fitted on a bad value."""
    spectra = recording.spectra.astype(np.float64).copy()
    e = recording.energy_eV
    spectra[5, 6, :] = np.nan  # a dead read-out
    spectra[9, 4, (e >= 0.6) & (e <= 1.0)] = 0.0  # a zero pre-edge: no power law to fit
    si = dataclasses.replace(recording, spectra=spectra)
    cfg = _config(si)
    with RunStore.create(tmp_path / "run") as store:
        result = run_campaign(ReplayMicroscope(si, seed=0), store, cfg)
        failed_events = store.events("measurement_failed")
        complete = store.events("campaign_complete")[-1]
    m = len(result.grid.rows)
    assert m == (GRID - 4) ** 2  # every pixel with a full 4-px patch is a candidate
    assert len(result.steps) == m == len(set(result.visited))  # the whole map, nothing measured twice
    pix = {(int(r), int(c)) for r, c in zip(result.grid.rows, result.grid.cols, strict=True)}
    bad = {(5, 6), (9, 4)} & pix
    failed_pixels = {
        (int(result.grid.rows[s.candidate]), int(result.grid.cols[s.candidate])) for s in result.failed
    }
    assert failed_pixels == bad and len(failed_events) == len(bad) == 2
    reasons = " ".join(ev["reason"] for ev in failed_events)
    # the NaN read-out fails the integrity check through every retry: nothing stored, said so
    assert "fewer than 3 positive channels" in reasons and "corrupt" in reasons
    assert sorted(ev["stored"] for ev in failed_events) == [False, True]
    assert all(math.isfinite(y) for y in result.y) and len(result.y) == m - 2
    assert complete["failed"] == 2 and complete["measurements"] == m
    assert result.mean is not None and np.all(np.isfinite(result.mean))
    png = campaign_figure(result, tmp_path / "campaign.png")  # failed measurements drawn, not a crash
    assert png.stat().st_size > 10_000
    # a resume reads every step back: the same failures, nothing retaken, nothing logged twice
    with RunStore.open_or_create(tmp_path / "run") as store:
        n_acq = len(store.events("acquisition"))
        again = run_campaign(ReplayMicroscope(si, seed=0), store, cfg)
        assert len(store.events("acquisition")) == n_acq and len(store.events("measurement_failed")) == 2
    assert [s.candidate for s in again.failed] == [s.candidate for s in result.failed]
    assert again.visited == result.visited and again.y == result.y


def test_a_model_that_fails_numerically_is_recovered_and_counted(tmp_path: Path, recording, monkeypatch):
    """float32 DKL fits fail from the 4th fit on: the float64 rebuild takes over. When every DKL fit
    fails, each step falls back to an exact GP. Both are logged as events and the budget is spent."""
    real_fit = DKL.fit
    calls = {"n": 0}

    def flaky(self, X, y):
        calls["n"] += 1
        if self.dtype == torch.float32 and calls["n"] >= 4:
            raise torch.linalg.LinAlgError("kernel matrix not positive definite even with jitter 1.0e+00")
        return real_fit(self, X, y)

    monkeypatch.setattr(DKL, "fit", flaky)
    cfg = _config(recording, budget=20, scalarizer={"kind": "band_intensity", "lo_eV": 1.1, "hi_eV": 1.7})
    with RunStore.create(tmp_path / "f64") as store:
        result = run_campaign(ReplayMicroscope(recording, seed=0), store, cfg)
        events = store.events("model_recovered")
    assert len(result.steps) == 20 and result.recoveries == 1
    assert len(events) == 1 and "float64" in events[0]["rung"] and "positive definite" in events[0]["error"]

    def broken(self, X, y):
        raise RuntimeError("NaN in the network weights")

    monkeypatch.setattr(DKL, "fit", broken)
    with RunStore.create(tmp_path / "gp") as store:
        result = run_campaign(ReplayMicroscope(recording, seed=0), store, cfg)
        events = store.events("model_recovered")
    active = [s for s in result.steps if s.phase == "active"]
    assert len(result.steps) == 20 and result.recoveries == len(events) == len(active) + 1  # + the final fit
    assert all("exact GP" in ev["rung"] for ev in events)
