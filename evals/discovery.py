"""The discovery benchmark: how fast does each method find the targets?

The **true signal** at each candidate is the scalarizer applied to the noise-free spectrum
(the twin's oracle) or, on replayed data, to the recorded spectrum; a candidate whose
recorded spectrum cannot be scalarised has none and is never a target. Two definitions of
a **target region** are scored side by side:

- ``raw``: a connected region (8-neighbour, on the campaign's candidate grid) of candidates
  whose true signal is in the top ``top_fraction`` (default 5 %);
- ``robust``: the same on the true signal denoised by a 3 × 3 median on the grid, keeping
  regions of at least ``MIN_REGION`` candidates. On a noisy recording the raw top 5 % is
  mostly single-candidate noise maxima; the robust regions are the features a scientist
  would point at.

A region is **found** when one measurement lands inside it. **Recall** after n
measurements (failed ones included: the probe went there) is the fraction of regions
found. Per method and definition the benchmark reports, for every seed and as the median
over seeds, the measurements needed to reach 50 % and 90 % recall (``None`` when never
reached within the budget) and the recall at the budget; the areal dose used (survey plus
spectra, averaged over the survey field), the median model step latency, failed
measurements and model recoveries; and the information-per-dose curve (median recall
against the cumulative areal dose). Every campaign goes through the safety interlocks.
With ``keep_dir`` each seed's result is written as soon as it finishes, and a seed that
fails is recorded with its error while the others go on.
"""

from __future__ import annotations

import json
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

from autoscope.instruments.errors import ConfigError, InstrumentError, InvalidRequest, SafetyLimitExceeded
from autoscope.instruments.factory import open_backend
from autoscope.instruments.records import NM2_TO_A2, SpectrumRecord, SpectrumRequest, electrons, energy_axis
from autoscope.instruments.replay import ReplayMicroscope
from autoscope.instruments.safety import SafeMicroscope, SafetyLimits
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
from autoscope.tools.ml.recovery import ModelFailure
from autoscope.tools.store import RunStore

log = logging.getLogger(__name__)

TOP_FRACTION = 0.05
MIN_REGION = 2  # candidates, for the robust definition
DEFINITIONS = ("raw", "robust")


@dataclass
class Targets:
    """Target regions on a candidate grid: ``labels[i]`` is the region of candidate i (0: none)."""

    labels: np.ndarray
    n_regions: int
    truth: np.ndarray  # true scalarized signal per candidate
    threshold: float

    def recall_curve(self, measured: Sequence[int]) -> np.ndarray:
        """Recall after each measurement (NaN throughout when there is no target to find)."""
        if self.n_regions == 0:
            return np.full(len(measured), np.nan)
        found: set[int] = set()
        curve = np.zeros(len(measured))
        for n, cand in enumerate(measured):
            if self.labels[cand]:
                found.add(int(self.labels[cand]))
            curve[n] = len(found) / max(self.n_regions, 1)
        return curve


def _grid_index(grid: CandidateGrid) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    rows_u, cols_u = np.unique(grid.rows), np.unique(grid.cols)
    return np.searchsorted(rows_u, grid.rows), np.searchsorted(cols_u, grid.cols), (rows_u.size, cols_u.size)


def target_regions(
    grid: CandidateGrid,
    truth: np.ndarray,
    top_fraction: float = TOP_FRACTION,
    *,
    definition: str = "raw",
) -> Targets:
    """Label connected top-``top_fraction`` regions of ``truth`` on the grid (module doc: raw or
    robust). Candidates with a non-finite truth are never targets."""
    if definition not in DEFINITIONS:
        raise ValueError(f"definition must be one of {DEFINITIONS}, got {definition!r}")
    if not 0 < top_fraction < 1:
        raise ValueError(f"top_fraction must lie in (0, 1), got {top_fraction}")
    r, c, shape = _grid_index(grid)
    values = np.full(shape, np.nan)
    values[r, c] = truth
    finite = np.isfinite(values)
    if definition == "robust":
        filled = np.where(finite, values, np.nanmedian(values) if finite.any() else 0.0)
        values = np.where(finite, ndimage.median_filter(filled, size=3, mode="nearest"), np.nan)
    ranked = values[r, c]
    ok = np.isfinite(ranked)
    if not ok.any():
        return Targets(labels=np.zeros(len(truth), dtype=int), n_regions=0, truth=truth, threshold=math.nan)
    threshold = float(np.quantile(ranked[ok], 1.0 - top_fraction))
    top = ranked[ok] >= threshold
    if top.mean() > 2 * top_fraction:  # ties at the threshold (a map of zeros): only what stands above
        top = ranked[ok] > threshold
    mask = np.zeros(shape, dtype=bool)
    mask[r[ok], c[ok]] = top
    labels2d, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=int))
    if definition == "robust" and n:
        sizes = ndimage.sum_labels(mask, labels2d, index=np.arange(1, n + 1))
        keep = np.flatnonzero(sizes >= MIN_REGION) + 1
        relabel = np.zeros(n + 1, dtype=int)
        relabel[keep] = np.arange(1, keep.size + 1)
        labels2d, n = relabel[labels2d], int(keep.size)
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
    """Scalarized recorded spectrum at each candidate (the recording is the ground truth; NaN where
    the recorded spectrum cannot be scalarised)."""
    from autoscope.tools.campaign import scalarise

    d = scope.data
    offset, channels = _truth_axis(scope, cfg)
    n_rec = electrons(d.current_pA, d.spectrum_dwell_s)
    out = np.empty(len(grid.rows))
    for i, (x, y) in enumerate(grid.xy_nm):
        first_eV, counts = d.recorded_spectrum(x, y, offset, channels)
        out[i], _ = scalarise(
            cfg.scalarizer, _truth_record(counts / n_rec, first_eV, d.dispersion_eV, cfg, d.current_pA, x, y)
        )
    return out


def _first_reaching(curve: np.ndarray, level: float) -> int | None:
    hit = np.flatnonzero(curve >= level - 1e-12)
    return int(hit[0]) + 1 if hit.size else None


def _dose_curve(result: Any, area_A2: float) -> np.ndarray:
    """Cumulative areal dose (e/Å², survey included) after each measurement."""
    per = np.array([st.record.dose_e if st.record is not None else 0.0 for st in result.steps])
    return (result.survey.dose_e + np.cumsum(per)) / area_A2


def run_one(
    config: CampaignConfig,
    *,
    scenario: str | None,
    seed: int,
    replay: Path | None = None,
    limits: SafetyLimits | None = None,
    top_fraction: float = TOP_FRACTION,
    run_dir: Path | None = None,
    progress: Callable[[int], None] | None = None,
    sim_config: Path | None = None,
) -> dict[str, Any]:
    """One campaign of one method and seed behind the safety limits, scored against the ground truth.
    ``run_dir``: keep the run store there (else a temporary folder); ``sim_config``: twin settings."""
    cfg = config.with_(seed=seed)
    with tempfile.TemporaryDirectory(prefix="autoscope-bench-") as tmp:
        store = RunStore.create(Path(run_dir or tmp) / f"{cfg.method}-{seed}")
        with store:
            # the oracle reads the backend itself; every request goes through the interlocks
            inner = open_backend(scenario=scenario, seed=seed, replay=replay, sim_config=sim_config)
            scope = SafeMicroscope(
                inner, limits or SafetyLimits(), on_event=lambda e: store.append_event(**e)
            )

            def on_step(_info: StepInfo) -> None:
                if progress:
                    progress(1)

            result = run_campaign(scope, store, cfg, on_step=on_step)
    survey = result.survey
    if replay is not None:
        truth = replay_truth(inner, result.grid, cfg)
    else:
        truth = sim_truth(inner, result.grid, cfg, (survey.t_start_s + survey.t_end_s) / 2)
    area_A2 = survey.area_nm2 * NM2_TO_A2
    lat = result.model_latency_s
    out: dict[str, Any] = {
        "seed": seed,
        "candidates": len(result.grid.rows),
        "measurements": len(result.steps),
        "failed_measurements": len(result.failed),
        "model_recoveries": result.recoveries,
        "dose_e_per_A2": result.dose_e / area_A2,
        "step_latency_ms": 1e3 * statistics.median(lat) if lat else 0.0,
        "dose_curve_e_per_A2": _dose_curve(result, area_A2).tolist(),
        "timing": result.timing.as_dict(),
    }
    for definition in DEFINITIONS:
        targets = target_regions(result.grid, truth, top_fraction, definition=definition)
        curve = targets.recall_curve(result.visited)
        out[definition] = {
            "regions": targets.n_regions,
            "target_candidates": int(np.count_nonzero(targets.labels)),
            "to_recall_50": _first_reaching(curve, 0.5),
            "to_recall_90": _first_reaching(curve, 0.9),
            # None: nothing to find (no region stands above the rest)
            "recall_at_budget": float(curve[-1]) if curve.size and targets.n_regions else None,
            "recall_curve": curve.tolist() if targets.n_regions else [],
        }
    return out


def _median_or_none(values: list[int | None]) -> float | None:
    """Median where 'never reached' (None) ranks above every number; None when the median is 'never'."""
    med = float(np.median([math.inf if v is None else v for v in values]))
    return None if math.isinf(med) else med


def _summary(rs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the seeds that finished, per region definition, and the information-per-dose curve."""
    out: dict[str, Any] = {
        "seeds_done": len(rs),
        "dose_e_per_A2": statistics.median(r["dose_e_per_A2"] for r in rs),
        "step_latency_ms": statistics.median(r["step_latency_ms"] for r in rs),
        "failed_measurements": sum(r["failed_measurements"] for r in rs),
        "model_recoveries": sum(r["model_recoveries"] for r in rs),
    }
    n = min(len(r["dose_curve_e_per_A2"]) for r in rs)
    for d in DEFINITIONS:
        scored = [r for r in rs if r[d]["regions"]]  # seeds with something to find
        if not scored:
            out[d] = {"regions": 0, "to_recall_50": None, "to_recall_90": None, "recall_at_budget": None,
                      "recall_vs_dose": []}  # fmt: skip
            continue
        rs_d, n_d = scored, min(n, *(len(r[d]["recall_curve"]) for r in scored))
        out[d] = {
            "regions": statistics.median(r[d]["regions"] for r in rs),
            "to_recall_50": _median_or_none([r[d]["to_recall_50"] for r in rs_d]),
            "to_recall_90": _median_or_none([r[d]["to_recall_90"] for r in rs_d]),
            "recall_at_budget": statistics.median(r[d]["recall_at_budget"] for r in rs_d),
            # information per dose: median recall against the median cumulative areal dose
            "recall_vs_dose": [
                [
                    float(np.median([r["dose_curve_e_per_A2"][i] for r in rs_d])),
                    float(np.median([r[d]["recall_curve"][i] for r in rs_d])),
                ]
                for i in range(n_d)
            ],
        }
    # the raw definition's figures at the top level, as before
    out.update({k: out["raw"][k] for k in ("to_recall_50", "to_recall_90", "recall_at_budget")})
    return out


def bench_discovery(
    scenario: str | None,
    seeds: int,
    budget: int,
    *,
    methods: Sequence[str] = METHODS,
    campaign: Path | None = None,
    replay: Path | None = None,
    limits: SafetyLimits | None = None,
    top_fraction: float = TOP_FRACTION,
    keep_dir: Path | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Run every method over ``seeds`` seeds; per-seed results and medians per method (README)."""
    if campaign is None:
        if scenario is None:
            raise ConfigError(
                "campaign", "a replayed recording needs --campaign FILE (its scalarizer and windows)"
            )
        campaign = default_campaign_path(scenario)
    base = load_campaign(campaign).with_(budget=budget)
    if not 0 < top_fraction < 1:
        raise ConfigError("top_fraction", f"must lie in (0, 1), got {top_fraction}")
    out: dict[str, Any] = {
        "scenario": scenario or str(replay),
        "seeds": seeds,
        "budget": budget,
        "top_fraction": top_fraction,
        "min_region": MIN_REGION,
        "methods": {},
        "per_seed": {},
        "errors": [],
    }
    if keep_dir is not None:
        keep_dir.mkdir(parents=True, exist_ok=True)
    for method in methods:
        rs: list[dict[str, Any]] = []
        for s in range(seeds):
            try:
                r = run_one(
                    base.with_(method=method),
                    scenario=scenario,
                    seed=s,
                    replay=replay,
                    limits=limits,
                    top_fraction=top_fraction,
                    run_dir=None if keep_dir is None else keep_dir / "runs",
                    progress=progress,
                )
            except (InvalidRequest, ConfigError):
                raise  # bad input fails every seed alike: exit 2 naming the field (finished seeds are kept)
            except (InstrumentError, ModelFailure, ValueError, RuntimeError) as exc:
                # one failed seed costs that seed: said, kept, and the benchmark goes on
                err = {
                    "method": method,
                    "seed": s,
                    "error": f"{type(exc).__name__}: {exc}",
                    "safety_stop": isinstance(exc, SafetyLimitExceeded),
                }
                log.error("discovery %s seed %d failed: %s", method, s, err["error"])
                out["errors"].append(err)
                if keep_dir is not None:
                    (keep_dir / f"{method}-{s}.json").write_text(json.dumps(err))
                continue
            rs.append(r)
            if keep_dir is not None:
                (keep_dir / f"{method}-{s}.json").write_text(json.dumps(r))
        out["per_seed"][method] = [
            {k: v for k, v in r.items() if k != "dose_curve_e_per_A2"}
            | {d: {k: v for k, v in r[d].items() if k != "recall_curve"} for d in DEFINITIONS}
            for r in rs
        ]
        if rs:
            out["methods"][method] = _summary(rs)
            out["candidates"] = rs[0]["candidates"]
            log.info(
                "%s: %s", method, {k: v for k, v in out["methods"][method].items() if k not in DEFINITIONS}
            )
    done = [r for rs in out["per_seed"].values() for r in rs]
    for d in DEFINITIONS:
        out[f"regions_{d}"] = statistics.median(r[d]["regions"] for r in done) if done else 0
    out["regions"] = out["regions_raw"]
    if keep_dir is not None:
        (keep_dir / "discovery.json").write_text(json.dumps(out))
    return out
