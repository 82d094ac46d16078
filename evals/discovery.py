"""The discovery benchmark: how fast does each method find the targets?

A **target region** is a connected region (8-neighbour, on the campaign's candidate
grid) where the true scalarized signal — the scalarizer applied to the noise-free
spectrum, from the twin's oracle or, on replayed data, to the recorded spectrum — is in
the top ``TOP_FRACTION`` (5 %) of all candidates. A region is **found** when one
measurement lands inside it (on one of its candidates). **Recall** after n measurements
is the fraction of regions found. For each method the benchmark reports the number of
measurements needed to reach 50 % and 90 % recall (``None`` when never reached within
the budget), the recall at the budget, the areal dose used (survey plus spectra,
averaged over the survey field) and the median model step latency (fit + prediction +
acquisition; 0 for the baselines), each the median over seeds.
"""

from __future__ import annotations

import logging
import math
import statistics
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from autoscope.instruments.factory import open_backend
from autoscope.instruments.records import NM2_TO_A2, SpectrumRecord, SpectrumRequest, electrons, energy_axis
from autoscope.instruments.replay import ReplayMicroscope
from autoscope.instruments.sim.microscope import SimMicroscope
from autoscope.instruments.sim.oracle import Oracle
from autoscope.tools.campaign import (
    METHODS,
    CampaignConfig,
    StepInfo,
    default_campaign_path,
    load_campaign,
    run_campaign,
)
from autoscope.tools.ml.descriptors import CandidateGrid
from autoscope.tools.store import RunStore

log = logging.getLogger(__name__)

TOP_FRACTION = 0.05


@dataclass
class Targets:
    """Target regions on a candidate grid: ``labels[i]`` is the region of candidate i (0: none)."""

    labels: np.ndarray
    n_regions: int
    truth: np.ndarray  # true scalarized signal per candidate
    threshold: float

    def recall_curve(self, measured: Sequence[int]) -> np.ndarray:
        """Recall after each measurement."""
        found: set[int] = set()
        curve = np.zeros(len(measured))
        for n, cand in enumerate(measured):
            if self.labels[cand]:
                found.add(int(self.labels[cand]))
            curve[n] = len(found) / max(self.n_regions, 1)
        return curve


def target_regions(grid: CandidateGrid, truth: np.ndarray, top_fraction: float = TOP_FRACTION) -> Targets:
    """Label connected top-``top_fraction`` regions of ``truth`` on the grid."""
    rows_u, cols_u = np.unique(grid.rows), np.unique(grid.cols)
    r = np.searchsorted(rows_u, grid.rows)
    c = np.searchsorted(cols_u, grid.cols)
    threshold = float(np.quantile(truth, 1.0 - top_fraction))
    mask = np.zeros((rows_u.size, cols_u.size), dtype=bool)
    mask[r, c] = truth >= threshold
    labels2d, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=int))
    return Targets(labels=labels2d[r, c], n_regions=int(n), truth=truth, threshold=threshold)


def _truth_record(
    counts_per_e: np.ndarray,
    offset_eV: float,
    dispersion_eV: float,
    cfg: CampaignConfig,
    current_pA: float,
    x_nm: float,
    y_nm: float,
) -> SpectrumRecord:
    n_e = electrons(current_pA, cfg.spectrum_dwell_s)
    return SpectrumRecord(
        counts=counts_per_e * n_e,
        energy_offset_eV=offset_eV,
        dispersion_eV=dispersion_eV,
        x_nm=x_nm,
        y_nm=y_nm,
        dwell_s=cfg.spectrum_dwell_s,
        current_pA=current_pA,
        dose_e=n_e,
        dose_e_per_A2=0.0,
        t_start_s=0.0,
        t_end_s=cfg.spectrum_dwell_s,
    )


def _truth_axis(scope: Any, cfg: CampaignConfig) -> tuple[float, int]:
    """The (offset_eV, channels) the backend itself measures the campaign's window on."""
    req = SpectrumRequest(
        x_nm=0.0,
        y_nm=0.0,
        dwell_s=cfg.spectrum_dwell_s,
        energy_min_eV=cfg.energy_min_eV,
        energy_max_eV=cfg.energy_max_eV,
    )
    return energy_axis(req, scope.capabilities())


def sim_truth(
    scope: SimMicroscope, grid: CandidateGrid, cfg: CampaignConfig, survey_mid_s: float
) -> np.ndarray:
    """True scalarized signal at each candidate of a twin campaign (noise-free, drift removed)."""
    oracle = Oracle(scope)
    offset, channels = _truth_axis(scope, cfg)
    dispersion = scope.capabilities().dispersion_eV
    energy = offset + dispersion * np.arange(channels)
    dx, dy = oracle.drift_nm(survey_mid_s)
    current = scope.beam_current_pA()
    out = np.empty(len(grid.rows))
    for i, (x, y) in enumerate(grid.xy_nm):
        per_e = oracle.true_spectrum(x - dx, y - dy, energy)
        out[i] = cfg.scalarizer(_truth_record(per_e, offset, dispersion, cfg, current, x, y))
    return out


def replay_truth(scope: ReplayMicroscope, grid: CandidateGrid, cfg: CampaignConfig) -> np.ndarray:
    """Scalarized recorded spectrum at each candidate (the recording is the ground truth)."""
    d = scope.data
    offset, channels = _truth_axis(scope, cfg)
    n_rec = electrons(d.current_pA, d.spectrum_dwell_s)
    out = np.empty(len(grid.rows))
    for i, (x, y) in enumerate(grid.xy_nm):
        first_eV, counts = d.recorded_spectrum(x, y, offset, channels)
        out[i] = cfg.scalarizer(
            _truth_record(counts / n_rec, first_eV, d.dispersion_eV, cfg, d.current_pA, x, y)
        )
    return out


def _first_reaching(curve: np.ndarray, level: float) -> int | None:
    hit = np.flatnonzero(curve >= level - 1e-12)
    return int(hit[0]) + 1 if hit.size else None


def run_one(
    config: CampaignConfig,
    *,
    scenario: str | None,
    seed: int,
    replay: Path | None = None,
    run_dir: Path | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """One campaign of one method and seed, scored against the ground truth."""
    cfg = config.with_(seed=seed)
    scope = open_backend(scenario=scenario, seed=seed, replay=replay)
    with tempfile.TemporaryDirectory(prefix="autoscope-bench-") as tmp:
        store = RunStore.create(Path(run_dir or tmp) / f"{cfg.method}-{seed}")
        with store:
            steps: list[StepInfo] = []

            def on_step(info: StepInfo) -> None:
                steps.append(info)
                if progress:
                    progress(1)

            result = run_campaign(scope, store, cfg, on_step=on_step)
    survey = result.survey
    if replay is not None:
        truth = replay_truth(scope, result.grid, cfg)
    else:
        truth = sim_truth(scope, result.grid, cfg, (survey.t_start_s + survey.t_end_s) / 2)
    targets = target_regions(result.grid, truth)
    curve = targets.recall_curve(result.measured)
    area_A2 = survey.area_nm2 * NM2_TO_A2
    lat = result.model_latency_s
    return {
        "to_recall_50": _first_reaching(curve, 0.5),
        "to_recall_90": _first_reaching(curve, 0.9),
        "recall_at_budget": float(curve[-1]) if curve.size else 0.0,
        "dose_e_per_A2": result.dose_e / area_A2,
        "step_latency_ms": 1e3 * statistics.median(lat) if lat else 0.0,
        "regions": targets.n_regions,
        "recall_curve": curve.tolist(),
    }


def _median_or_none(values: list[int | None]) -> float | None:
    """Median where 'never reached' (None) ranks above every number; None when the median is 'never'."""
    med = float(np.median([math.inf if v is None else v for v in values]))
    return None if math.isinf(med) else med


def bench_discovery(
    scenario: str | None,
    seeds: int,
    budget: int,
    *,
    methods: Sequence[str] = METHODS,
    campaign: Path | None = None,
    replay: Path | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Run every method over ``seeds`` seeds; medians per method (JSON shape in the README)."""
    if campaign is None:
        if scenario is None:
            raise ValueError("a replayed dataset needs --campaign FILE (its scalarizer and windows)")
        campaign = default_campaign_path(scenario)
    base = load_campaign(campaign).with_(budget=budget)
    out: dict[str, Any] = {
        "scenario": scenario or str(replay),
        "seeds": seeds,
        "budget": budget,
        "methods": {},
    }
    runs: dict[str, list[dict[str, Any]]] = {}
    for method in methods:
        runs[method] = [
            run_one(base.with_(method=method), scenario=scenario, seed=s, replay=replay, progress=progress)
            for s in range(seeds)
        ]
        rs = runs[method]
        out["methods"][method] = {
            "to_recall_50": _median_or_none([r["to_recall_50"] for r in rs]),
            "to_recall_90": _median_or_none([r["to_recall_90"] for r in rs]),
            "recall_at_budget": statistics.median(r["recall_at_budget"] for r in rs),
            "dose_e_per_A2": statistics.median(r["dose_e_per_A2"] for r in rs),
            "step_latency_ms": statistics.median(r["step_latency_ms"] for r in rs),
        }
        log.info("%s: %s", method, out["methods"][method])
    out["regions"] = statistics.median(r["regions"] for rs in runs.values() for r in rs)
    return out
