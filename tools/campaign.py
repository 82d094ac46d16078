"""The campaign runner: the inner loop of an automated experiment, without an LLM.

survey → candidate grid and patch descriptors → seed points → loop(acquire a spectrum
at a candidate, store it, scalarize, update the model, choose the next candidate),
within a measurement budget and whatever safety limits wrap the microscope.

Every step is an exactly-once store step (``al-0000``, ``al-0001``...; repeated surveys
for drift checks are ``drift-000``...), and its acquisition event records the candidate
it aimed at, so a killed campaign resumes from the store: finished steps are read back,
never re-acquired, and no position is ever measured twice.

Methods share this runner: ``dkl`` (deep kernel learning on PCA-compressed patches),
``gp`` (exact GP on raw patches), and the baselines ``random`` and ``raster``
(serpentine over a sub-sampled grid sized to the budget).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from autoscope.instruments.config_files import load_model
from autoscope.instruments.protocols import Microscope
from autoscope.instruments.records import ImageRecord, SpectrumRecord
from autoscope.tools.acquisition import Acquirer, CorruptFrame
from autoscope.tools.ml.acquisition import AcquisitionSpec, choose_detailed
from autoscope.tools.ml.base import FitReport, MonitorEvent, MonitorKind, Surrogate
from autoscope.tools.ml.descriptors import (
    CandidateGrid,
    PatchFeaturizer,
    PatchSpec,
    candidate_grid,
    extract_patches,
    in_field,
    patches_at_nm,
)
from autoscope.tools.ml.monitors import DriftMonitor, OODMonitor, StuckMonitor
from autoscope.tools.ml.recovery import RecoveringSurrogate
from autoscope.tools.ml.scalarizers import Scalarizer
from autoscope.tools.pipeline import Decision, DecisionPipeline, Timing, start_warm_up
from autoscope.tools.store import RunStore
from autoscope.tools.survey import IMAGE_STEP, SurveyPlan, run_survey

log = logging.getLogger(__name__)

Method = Literal["dkl", "gp", "random", "raster"]
METHODS: tuple[Method, ...] = ("dkl", "gp", "random", "raster")
#: the default of ``CampaignConfig.sparse_above``: ``tools.ml.sparse.SPARSE_ABOVE`` (not imported: torch)
SPARSE_ABOVE = 1000


class CampaignConfig(BaseModel):
    """Everything a campaign needs; typed, serialisable, validated (agents will write these)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Method = "dkl"
    budget: int = Field(150, ge=1, le=100_000, description="spectra to acquire, seeds included")
    seed_points: int = Field(8, ge=1, description="random measurements before the model takes over")
    seed: int = 0
    survey: SurveyPlan
    stride_px: int = Field(8, ge=1, description="candidate spacing on the survey image (pixels)")
    patch: PatchSpec = PatchSpec()
    scalarizer: Scalarizer
    acquisition: AcquisitionSpec = AcquisitionSpec(kind="ei")
    sparse_above: int | None = Field(
        SPARSE_ABOVE,
        ge=0,
        description="observations beyond which the model's GP head is the sparse one (Titsias' bound on at "
        "most `inducing` points, tools/ml/sparse.py): measured where the exact step stops keeping up; "
        "null: always exact",
    )
    inducing: int = Field(512, ge=1, description="the sparse head's inducing points, at most")
    y_transform: Literal["none", "log"] = Field(
        "none",
        description="what the model learns: y itself, or log y (a positive, heavy-tailed signal such as "
        "a plasmon band intensity: hot spots tens of times the background would otherwise dominate "
        "the fit); measured values stay raw everywhere else",
    )
    spectrum_dwell_s: float = Field(gt=0)
    energy_min_eV: float
    energy_max_eV: float
    drift_check_every: int | None = Field(None, ge=1, description="steps between repeated surveys")
    drift_threshold_nm: float | None = Field(None, gt=0, description="default: one survey pixel")
    stuck_window: int = Field(15, ge=3)
    stop_on: tuple[MonitorKind, ...] = ()
    pipeline: bool = Field(
        False,
        description="refit the model on a worker thread while the instrument measures, choosing from "
        "the posterior one batch behind the newest spectra (tools/pipeline.py): the column does not "
        "wait for the model, and decisions depend on timing",
    )
    pipeline_max_batch: int = Field(16, ge=1, description="the most candidates one pipelined fit chooses")

    def with_(self, **changes) -> CampaignConfig:
        """A validated copy with ``changes`` (a campaign file plus command-line overrides)."""
        return CampaignConfig.model_validate({**self.model_dump(), **changes})


def default_campaign_path(scenario: str) -> Path:
    return Path(str(resources.files("autoscope.tools").joinpath("campaigns", f"{scenario}.yaml")))


def load_campaign(path: str | Path) -> CampaignConfig:
    """A campaign file (YAML/TOML/JSON); errors name the file and the field."""
    return load_model(CampaignConfig, path, "campaign")


class CampaignStop(Exception):
    """Raised by an ``on_step`` observer to end a campaign cleanly after the current step
    (a person interrupted it, or a plan's stop condition was reached). The message is the reason."""


@dataclass
class StepInfo:
    """One measurement of a campaign, as observers (benchmarks, progress) see it."""

    step: int
    step_id: str
    candidate: int
    phase: Literal["seed", "active", "baseline"]
    y: float
    record: SpectrumRecord | None  # None: the frame stayed corrupt, nothing was stored
    reused: bool
    model_s: float  # fit + prediction + acquisition time spent choosing this candidate
    mean_std: float | None  # mean posterior standard deviation over candidates when it was chosen
    failed: str | None = None  # why the spectrum could not be scalarised (y is NaN, the model skips it)


@dataclass
class CampaignResult:
    survey: ImageRecord
    grid: CandidateGrid
    measured: list[int] = field(default_factory=list)
    y: list[float] = field(default_factory=list)
    steps: list[StepInfo] = field(default_factory=list)
    events: list[MonitorEvent] = field(default_factory=list)
    stopped_by: MonitorEvent | None = None
    stop_reason: str | None = None  # set when an observer ended the campaign (CampaignStop)
    mean: np.ndarray | None = None  # final posterior mean over the candidates
    std: np.ndarray | None = None
    recoveries: int = 0  # model fits recovered by the ladder (tools/ml/recovery.py)
    timing: Timing = field(default_factory=Timing)

    @property
    def failed(self) -> list[StepInfo]:
        """Measurements whose spectrum could not be scalarised (recorded, skipped by the model)."""
        return [s for s in self.steps if s.failed]

    @property
    def visited(self) -> list[int]:
        """Every candidate the probe was sent to, in order, failed measurements included."""
        return [s.candidate for s in self.steps]

    @property
    def dose_e(self) -> float:
        return self.survey.dose_e + sum(s.record.dose_e for s in self.steps if s.record is not None)

    @property
    def model_latency_s(self) -> list[float]:
        return [s.model_s for s in self.steps if s.phase == "active" and not s.reused]


def make_model(
    method: Method,
    seed: int,
    on_recovery: Callable[[dict], None] | None = None,
    *,
    sparse_above: int | None = SPARSE_ABOVE,
    inducing: int = 512,
) -> RecoveringSurrogate | None:
    """The method's surrogate behind the recovery ladder (``tools/ml/recovery.py``); None for baselines.
    Beyond ``sparse_above`` observations (None: never) the model and its fallback fit the sparse head."""
    from autoscope.tools.ml.gp import ExactGP

    def fallback() -> Surrogate:
        return ExactGP(ard=False, seed=seed, sparse_above=sparse_above, inducing=inducing)

    if method == "dkl":
        from autoscope.tools.ml.dkl import DKL

        return RecoveringSurrogate(
            lambda dtype: DKL(seed=seed, dtype=dtype, sparse_above=sparse_above, inducing=inducing),
            fallback,
            on_recovery=on_recovery,
        )
    if method == "gp":  # already float64: the ladder is a cold refit, then a fresh GP
        return RecoveringSurrogate(
            lambda _dtype: ExactGP(ard=False, seed=seed, sparse_above=sparse_above, inducing=inducing),
            fallback,
            on_recovery=on_recovery,
        )
    return None


def raster_order(grid: CandidateGrid, budget: int) -> list[int]:
    """Serpentine over a sub-sampled grid whose step makes one pass fit the budget, then the gaps."""
    n_rows, n_cols = len(np.unique(grid.rows)), len(np.unique(grid.cols))
    index = np.arange(n_rows * n_cols).reshape(n_rows, n_cols)
    step = max(1, math.ceil(math.sqrt(n_rows * n_cols / max(budget, 1))))
    order: list[int] = []
    for r0 in range(step):  # each pass fills the offsets the previous ones skipped
        for c0 in range(step):
            for i, r in enumerate(range(r0, n_rows, step)):
                cols = list(range(c0, n_cols, step))
                order.extend(int(index[r, c]) for c in (cols if i % 2 == 0 else cols[::-1]))
    return order


class Campaign:
    """One campaign on one microscope into one run store (see the module doc)."""

    def __init__(
        self,
        microscope: Microscope,
        store: RunStore,
        config: CampaignConfig,
        *,
        prefix: str = "",
        survey: ImageRecord | None = None,
    ) -> None:
        """``prefix`` names this campaign's steps (``<prefix>al-0000``), so several campaigns share a
        run store; ``survey``: an overview already acquired (else the campaign surveys first)."""
        self.microscope = microscope
        self.store = store
        self.config = config
        self.prefix = prefix
        self.survey = survey
        # pipelined: each step's store write overlaps the next acquisition too
        self.acq = Acquirer(microscope, store, on_conflict="rekey", background_saves=config.pipeline)
        self.rng = np.random.default_rng(config.seed)

    # ---------------------------------------------------------------- set-up
    def _survey(self) -> ImageRecord:
        if self.survey is not None:
            return self.survey
        plan = self.config.survey.model_copy(update={"spectra": 0})
        return run_survey(self.microscope, self.store, plan).image

    def _features(self, survey: ImageRecord, grid: CandidateGrid) -> tuple[np.ndarray, PatchFeaturizer]:
        spec = self.config.patch
        if self.config.method == "gp":  # the baseline the field uses: a GP on raw patches
            spec = spec.model_copy(update={"pca_components": None, "descriptor": "pixels"})
        featurizer = PatchFeaturizer(spec)
        patches = extract_patches(survey.data, grid.rows, grid.cols, spec.window_px)
        return featurizer.fit_transform(patches), featurizer

    def _baseline_order(self, grid: CandidateGrid) -> list[int]:
        m = len(grid.rows)
        if self.config.method == "random":
            return [int(i) for i in self.rng.permutation(m)]
        return raster_order(grid, self.config.budget)

    # ---------------------------------------------------------------- the loop
    def run(
        self,
        *,
        on_step: Callable[[StepInfo], None] | None = None,
        on_event: Callable[[MonitorEvent], None] | None = None,
    ) -> CampaignResult:
        cfg = self.config
        if cfg.method in ("dkl", "gp"):
            start_warm_up()  # torch's start-up cost overlaps the survey instead of the first decision
        survey = self._survey()
        margin = cfg.patch.window_px // 2
        base_grid = candidate_grid(survey, cfg.stride_px, margin)
        grid = base_grid
        m = len(grid.rows)
        if m < cfg.budget:
            log.warning("only %d candidates for a budget of %d; the campaign ends early", m, cfg.budget)
        X, featurizer = (None, None) if cfg.method in ("random", "raster") else self._features(survey, grid)

        def recovered(info: dict) -> None:
            self.store.append_event("model_recovered", step=len(result.steps), **info)

        model = make_model(
            cfg.method, cfg.seed, on_recovery=recovered, sparse_above=cfg.sparse_above, inducing=cfg.inducing
        )
        seeds = [int(i) for i in self.rng.choice(m, size=min(cfg.seed_points, m), replace=False)]
        order = self._baseline_order(grid) if model is None else []

        al = f"{self.prefix}al-"
        done = {e["step_id"]: e for e in self.store.events("acquisition") if e["step_id"].startswith(al)}
        # steps whose frame stayed corrupt through every retry: nothing stored, not retaken on resume
        lost = {
            e["step_id"]: e
            for e in self.store.events("measurement_failed")
            if e["step_id"].startswith(al) and not e.get("stored", True)
        }
        done.update({k: v for k, v in lost.items() if k not in done})
        self.store.append_event(
            "campaign_started",
            config=cfg.model_dump(mode="json"),
            candidates=m,
            resumed=bool(done),
            prefix=self.prefix,
        )
        result = CampaignResult(survey=survey, grid=grid)
        measured = np.zeros(m, dtype=bool)
        drift = DriftMonitor(cfg.drift_threshold_nm or survey.pixel_size_nm)
        ood = OODMonitor().fit(X) if X is not None else None
        stuck = StuckMonitor(window=cfg.stuck_window)
        reference = survey
        report: FitReport | None = None
        queue: list[int] = []
        budget = min(cfg.budget, m)
        pipeline = None
        if model is not None and cfg.pipeline:
            pipeline = DecisionPipeline(
                self._model_step(model, X, result),
                min_batch=cfg.acquisition.q,
                max_batch=max(cfg.pipeline_max_batch, cfg.acquisition.q),
                explore=lambda blocked: int(self.rng.choice(np.flatnonzero(~blocked))),
                max_explore=3 * cfg.seed_points,
            )
        timing = result.timing
        timing.pipelined = pipeline is not None
        loop_t0, instrument0 = time.perf_counter(), self.acq.instrument_s

        def emit(event: MonitorEvent | None) -> bool:
            if event is None:
                return False
            result.events.append(event)
            payload = event.model_dump(mode="json")
            self.store.append_event("monitor", monitor=payload.pop("kind"), **payload)
            log.warning("monitor (%s) at step %d: %s", event.kind, event.step, event.message)
            if on_event:
                on_event(event)
            if event.kind in cfg.stop_on:
                result.stopped_by = event
                self.store.append_event("campaign_stopped", reason=event.kind, step=event.step)
                return True
            return False

        try:
            for k in range(budget):
                if cfg.drift_check_every and k and k % cfg.drift_check_every == 0:
                    grid, reference, stop = self._drift_check(
                        k, reference, base_grid, featurizer, drift, ood, emit
                    )
                    result.grid = grid
                    if stop:
                        break
                step_id = f"{al}{k:04d}"
                t0 = time.perf_counter()
                mean_std, explored = None, False
                if step_id in done:
                    cand, phase = int(done[step_id]["candidate"]), done[step_id]["phase"]
                elif model is None:
                    cand, phase = next(i for i in order if not measured[i]), "baseline"
                elif k < len(seeds) and not measured[seeds[k]]:
                    cand, phase = seeds[k], "seed"
                else:
                    if not queue and len(result.y) < 2:  # too few usable spectra to fit: explore
                        queue = [int(i) for i in self.rng.permutation(np.flatnonzero(~measured))[:1]]
                    if not queue and pipeline is not None:  # the model runs beside the instrument
                        taken = pipeline.take(
                            measured, measured_idx(result), model_targets(result.y, cfg.y_transform)
                        )
                        queue = [taken.candidate]
                        if taken.decision is None:  # no posterior yet: one more seed point meanwhile
                            explored = True
                        else:
                            report, mean_std = taken.decision.report, taken.decision.mean_std
                    elif not queue:
                        y_model = model_targets(result.y, cfg.y_transform)
                        t_fit = time.perf_counter()
                        report = model.fit(X[measured_idx(result)], y_model)
                        choice = choose_detailed(
                            model,
                            X,
                            grid.xy_nm,
                            measured,
                            cfg.acquisition,
                            rng=self.rng,
                            best_y=float(np.max(y_model)),
                        )
                        timing.model_s += time.perf_counter() - t_fit
                        queue = list(choice.indices)
                        mean_std = float(np.mean(np.sqrt(np.maximum(choice.var, 0.0))))
                    cand, phase = queue.pop(0), ("seed" if explored else "active")
                model_s = time.perf_counter() - t0
                if k >= len(seeds) and model is not None and step_id not in done:
                    timing.decision_wait_s += model_s
                    if timing.first_decision_s is None and phase == "active":
                        timing.first_decision_s = model_s
                x_nm, y_nm = grid.xy_nm[cand]
                record: SpectrumRecord | None = None
                if step_id in lost:
                    y, failed = math.nan, lost[step_id]["reason"]
                else:
                    try:
                        record = self.acq.spectrum(
                            step_id,
                            x_nm=float(x_nm),
                            y_nm=float(y_nm),
                            dwell_s=cfg.spectrum_dwell_s,
                            energy_min_eV=cfg.energy_min_eV,
                            energy_max_eV=cfg.energy_max_eV,
                            candidate=cand,
                            phase=phase,
                            method=cfg.method,
                        )
                        y, failed = scalarise(cfg.scalarizer, record)
                    except CorruptFrame as exc:  # retried by the Acquirer; still garbled: nothing stored
                        y, failed = math.nan, f"the frame stayed corrupt through every retry: {exc}"
                    if failed is not None and step_id not in done:  # a resume reads it back: logged once
                        log.warning("step %s at candidate %d: %s", step_id, cand, failed)
                        self.store.append_event(
                            "measurement_failed",
                            step_id=step_id,
                            candidate=cand,
                            phase=phase,
                            reason=failed,
                            stored=record is not None,
                        )
                measured[cand] = True  # a failed measurement is not retaken
                if failed is None:
                    result.measured.append(cand)
                    result.y.append(y)
                info = StepInfo(
                    k, step_id, cand, phase, y, record, step_id in done, model_s, mean_std, failed
                )
                result.steps.append(info)
                if on_step:
                    try:
                        on_step(info)
                    except CampaignStop as stop:
                        result.stop_reason = str(stop) or "stopped"
                        self.store.append_event("campaign_stopped", reason=result.stop_reason, step=k)
                        log.info("campaign stopped after step %d: %s", k, result.stop_reason)
                        break
                # the stuck monitor judges what the model chose
                if phase == "active" and failed is None and record is not None:
                    y_sd = float(cfg.scalarizer.uncertainty(record))
                    if emit(stuck.update(k, y, report, y_sd=y_sd)):
                        break
        finally:
            self.acq.close()  # the last step's write is in the store
            if pipeline is not None:
                pipeline.close()
                timing.batches = list(pipeline.batches)
            timing.wall_s = time.perf_counter() - loop_t0
            timing.instrument_s = self.acq.instrument_s - instrument0

        if model is not None and len(result.y) >= 2:
            model.fit(X[measured_idx(result)], model_targets(result.y, cfg.y_transform))
            mean, var = model.predict(X)
            std = np.sqrt(np.maximum(var, 0.0))
            if cfg.y_transform == "log":  # back to y units: the median exp(μ), the delta-method spread
                mean = np.exp(mean)
                std = mean * std
            result.mean, result.std = mean, std
        if model is not None:
            result.recoveries = model.recoveries
        self.store.append_event(
            "campaign_complete",
            prefix=self.prefix,
            measurements=len(result.steps),
            distinct=len(set(result.visited)),
            failed=len(result.failed),
            model_recoveries=result.recoveries,
            stopped_by=result.stopped_by.kind if result.stopped_by else None,
            best_y=max(result.y) if result.y else None,
            timing=result.timing.as_dict(),
        )
        return result

    def _model_step(self, model: Surrogate, X: np.ndarray, result: CampaignResult):
        """The pipelined model step: fit on the rows given, choose a batch among the unblocked
        candidates, spread out by the acquisition's minimum separation (``tools/pipeline.py``)."""
        cfg = self.config
        rng = np.random.default_rng([cfg.seed, 1])  # the worker's own stream: the loop keeps self.rng
        radius = max(cfg.acquisition.penalty_radius_nm, cfg.acquisition.min_separation_nm)

        def step(rows: np.ndarray, y_model: np.ndarray, blocked: np.ndarray, q: int) -> Decision:
            t0 = time.perf_counter()
            if blocked.all():
                return Decision([], None, None, len(y_model), 0.0)
            report = model.fit(X[rows], y_model)
            spec = cfg.acquisition.model_copy(update={"q": q, "penalty_radius_nm": radius})
            choice = choose_detailed(
                model, X, result.grid.xy_nm, blocked, spec, rng=rng, best_y=float(np.max(y_model))
            )
            spread = float(np.mean(np.sqrt(np.maximum(choice.var, 0.0))))
            model_s = time.perf_counter() - t0
            result.timing.model_s += model_s
            return Decision(list(choice.indices), report, spread, len(y_model), model_s)

        return step

    def _drift_check(self, k, reference, base_grid, featurizer, drift, ood, emit):
        """Repeat the survey, re-register it, re-aim the candidates; check the new patches are familiar.

        Returns the re-aimed grid, the reference for the next check (the repeat, once it
        has been registered reliably) and whether a monitor stopped the campaign.
        """
        cfg = self.config
        j = k // cfg.drift_check_every
        repeat = self.acq.image(
            f"{self.prefix}drift-{j:03d}",
            fov_nm=reference.fov_nm,
            pixels=reference.pixels,
            rows=reference.rows,
            dwell_s=reference.dwell_s,
            step=k,
        )
        event = drift.check(k, reference, repeat)
        stop = emit(event)
        if event is not None and event.details.get("reliable"):
            reference = repeat
        grid = base_grid.shifted(*drift.total_shift_nm)
        if featurizer is not None and ood is not None:
            inside = in_field(repeat, grid.xy_nm)
            feats = featurizer.transform(patches_at_nm(repeat, grid.xy_nm[inside], cfg.patch.window_px))
            stop = emit(ood.check(k, feats)) or stop
        return grid, reference, stop


def scalarise(scalarizer: Scalarizer, record: SpectrumRecord) -> tuple[float, str | None]:
    """(y, None), or (NaN, the reason) when the spectrum cannot be scalarised: a background fit
    that has too few positive channels, a ratio over zero, a non-finite value."""
    try:
        with np.errstate(all="ignore"):
            y = float(scalarizer(record))
    except (ValueError, ZeroDivisionError, FloatingPointError, np.linalg.LinAlgError) as exc:
        return math.nan, f"cannot scalarise the spectrum: {exc}"
    if not math.isfinite(y):
        return math.nan, f"the scalarizer gave {y} (non-finite counts, or a ratio over zero?)"
    return y, None


def model_targets(y: list[float], transform: Literal["none", "log"]) -> np.ndarray:
    """The targets the model is fitted to; ``log`` floors y at a tiny positive value first."""
    arr = np.asarray(y, dtype=np.float64)
    if transform == "log":
        floor = 1e-6 * max(float(np.max(np.abs(arr))), 1e-300)
        return np.log(np.maximum(arr, floor))
    return arr


def measured_idx(result: CampaignResult) -> np.ndarray:
    return np.asarray(result.measured, dtype=int)


def run_campaign(
    microscope: Microscope,
    store: RunStore,
    config: CampaignConfig,
    *,
    on_step: Callable[[StepInfo], None] | None = None,
    on_event: Callable[[MonitorEvent], None] | None = None,
) -> CampaignResult:
    """Run (or resume) ``config`` on ``microscope`` into ``store``."""
    return Campaign(microscope, store, config).run(on_step=on_step, on_event=on_event)


__all__ = [
    "IMAGE_STEP",
    "METHODS",
    "Campaign",
    "CampaignConfig",
    "CampaignResult",
    "CampaignStop",
    "StepInfo",
    "default_campaign_path",
    "load_campaign",
    "raster_order",
    "run_campaign",
]
