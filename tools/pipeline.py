"""Pipelined decisions: the model is refitted while the instrument measures.

A sequential campaign fits and predicts after each spectrum arrives and before the next one
starts, so the column idles for the whole model step. ``DecisionPipeline`` runs the model step
on a worker thread instead: when the loop takes a candidate for the instrument, the next fit
starts at once on every spectrum measured so far, with the candidate being measured and those
still queued held out as *pending* (never chosen again, and kept at the acquisition's minimum
separation like measured ones). Each fit returns a batch sized to outlast the next fit
(``ceil(fit time / step time) + 1``, from moving averages of both, within ``max_batch``), which
replaces the queue when it lands; the next fit starts as soon as there is a new spectrum or the
queue is empty, and the loop waits only when the queue runs dry before a fit is done. While the
first fit (cold, on the seed points, the slowest) runs, the loop measures more random points
instead of waiting, up to ``max_explore`` of them. The first fit is not started earlier, on
fewer points: the warm-started model never recovered from a cold fit on two or three spectra
(recall at the budget fell from 0.84 to 0.21 on one seed). After a resume the same happens
again. ``start_warm_up`` pays torch's one-time start-up (~1.5 s) on a side thread during the
survey, for sequential campaigns too.

What the pipeline changes is which posterior a decision comes from: it lags the newest
spectra by up to one batch. Decisions therefore depend on timing, and two runs of the same
campaign may differ; the store still records each step's candidate, so a resume repeats
nothing. Torch and NumPy release the GIL in their kernels, so the fit and the instrument's
wait (or an HTTP round trip) overlap on one process.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from autoscope.tools.ml.base import FitReport

log = logging.getLogger(__name__)


@dataclass
class Timing:
    """Where a campaign's loop spent its wall-clock time (set-up and the final fit excluded)."""

    wall_s: float = 0.0
    instrument_s: float = 0.0  # inside the instrument's acquire calls: the column was busy
    decision_wait_s: float = 0.0  # the loop waiting for the model before it could move the probe
    first_decision_s: float | None = None  # of which the first model decision (a cold fit)
    model_s: float = 0.0  # model steps, whichever thread ran them (overlaps acquisition when pipelined)
    pipelined: bool = False
    batches: list[int] = field(default_factory=list)  # pipelined: the size of each batch chosen

    @property
    def dead_fraction(self) -> float:
        """The share of the loop's wall time the column was not acquiring."""
        return max(0.0, 1.0 - self.instrument_s / self.wall_s) if self.wall_s > 0 else 0.0

    @property
    def steady_dead_fraction(self) -> float:
        """The dead time once the first model decision (a cold fit, paid once) is made."""
        rest = self.wall_s - (self.first_decision_s or 0.0)
        return max(0.0, 1.0 - self.instrument_s / rest) if rest > 0 else 0.0

    @property
    def wait_fraction(self) -> float:
        """The share of the loop's wall time spent waiting for a decision."""
        return self.decision_wait_s / self.wall_s if self.wall_s > 0 else 0.0

    def as_dict(self) -> dict[str, float | bool | int]:
        return {
            "wall_s": self.wall_s,
            "instrument_s": self.instrument_s,
            "decision_wait_s": self.decision_wait_s,
            "model_s": self.model_s,
            "dead_fraction": self.dead_fraction,
            "first_decision_s": self.first_decision_s or 0.0,
            "steady_dead_fraction": self.steady_dead_fraction,
            "wait_fraction": self.wait_fraction,
            "pipelined": self.pipelined,
            "fits": len(self.batches) if self.pipelined else 0,
            "median_batch": float(np.median(self.batches)) if self.batches else 0.0,
        }


def warm_up_torch() -> None:
    """Pay torch's one-time start-up costs (about 1.5 s on 2 cores: the first fit of a process took
    2.4 s, the next ones 0.4-0.6 s, and it is process-wide) on a tiny throwaway fit, so a campaign
    can do it on a side thread while the survey is taken instead of at its first decision."""
    from autoscope.tools.ml.dkl import DKL

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(4, 3)), rng.normal(size=4)
    model = DKL(hidden=(4,), latent_dim=2, device="cpu", max_iter=3)
    model.fit(X, y)
    model.predict(X)


_warm_up: threading.Thread | None = None
_warm_up_lock = threading.Lock()


def start_warm_up() -> threading.Thread:
    """``warm_up_torch`` on a daemon thread, once per process: the cost it pays is process-wide, so
    later campaigns (every round of a run) get the same thread back (a failure is logged, never raised)."""
    global _warm_up

    def run() -> None:
        try:
            warm_up_torch()
        except Exception as exc:  # noqa: BLE001 - only a head start; the real fit reports errors
            log.info("torch warm-up failed: %s", exc)

    with _warm_up_lock:
        if _warm_up is None:
            _warm_up = threading.Thread(target=run, name="autoscope-warm-up", daemon=True)
            _warm_up.start()
        return _warm_up


@dataclass(frozen=True)
class Decision:
    """What one model step chose, from data up to ``n_observations``."""

    indices: list[int]
    report: FitReport | None
    mean_std: float | None
    n_observations: int
    model_s: float  # fit + prediction + acquisition-function time, on whichever thread ran it


#: (measured rows, their targets, the mask of candidates that may not be chosen, batch size) → Decision
ModelStep = Callable[[np.ndarray, np.ndarray, np.ndarray, int], Decision]


@dataclass
class Taken:
    """A candidate handed to the instrument, with the decision it came from."""

    candidate: int
    decision: Decision | None  # None: an exploratory point taken while the first fit runs
    wait_s: float  # how long the loop waited for the model before it could hand this one over


class DecisionPipeline:
    """Keeps model steps running on one worker thread while the campaign measures (module doc)."""

    def __init__(
        self,
        step: ModelStep,
        *,
        min_batch: int = 1,
        max_batch: int = 16,
        model_threads: int | None = 1,
        explore: Callable[[np.ndarray], int] | None = None,
        max_explore: int = 8,
    ) -> None:
        """``model_threads``: torch's intra-op threads while the pipeline runs (restored by ``close``;
        None leaves them); ``explore``: given the mask of candidates that may not be chosen, one to
        measure while the first fit is still running (an extra seed point), instead of waiting, at most
        ``max_explore`` times (then the loop waits: random points past that cost recall). One by default: the loop and the instrument's I/O need the other cores,
        and on a 2-core machine two threads for the model beside a busy loop made a 3,600-candidate
        prediction 25× slower (228 ms against 9 ms on one thread)."""
        if not 1 <= min_batch <= max_batch:
            raise ValueError(f"need 1 ≤ min_batch ≤ max_batch, got {min_batch}, {max_batch}")
        self._threads_before = torch.get_num_threads()
        if model_threads is not None:
            torch.set_num_threads(model_threads)
        self._step = step
        self._explore = explore
        self.max_explore = max_explore
        self.explored = 0
        self.min_batch, self.max_batch = min_batch, max_batch
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="autoscope-model")
        self._future: Future[Decision] | None = None
        self._queue: list[int] = []
        self._queued_from: Decision | None = None
        self._submitted_n = -1  # observations the newest submitted fit saw
        self._fit_s: float | None = None  # moving averages (exponential, weight 0.3 on the newest)
        self._step_s: float | None = None
        self._last_take: float | None = None
        self.fits = 0
        self.batches: list[int] = []  # the size of each batch that landed
        self.decision_wait_s = 0.0

    @staticmethod
    def _ema(old: float | None, new: float) -> float:
        return new if old is None else 0.7 * old + 0.3 * new

    def batch_size(self) -> int:
        """How many candidates the next fit should return to outlast the fit after it."""
        if self._fit_s is None or not self._step_s:
            return self.min_batch
        q = math.ceil(self._fit_s / self._step_s) + 1
        return int(min(self.max_batch, max(self.min_batch, q)))

    def _submit(self, X_rows: np.ndarray, y: np.ndarray, blocked: np.ndarray) -> None:
        self._submitted_n = len(y)
        self._future = self._pool.submit(self._step, X_rows, y, blocked, self.batch_size())

    def _land(self, measured: np.ndarray) -> None:
        """Wait for the fit in flight; its batch (less what was measured meanwhile) becomes the queue."""
        assert self._future is not None
        decision = self._future.result()  # a model failure surfaces here, in the campaign's thread
        self._future = None
        if self.fits:  # the first fit is cold and several times slower: it would oversize batches
            self._fit_s = self._ema(self._fit_s, decision.model_s)
        self.fits += 1
        self.batches.append(len(decision.indices))
        self._queue = [i for i in decision.indices if not measured[i]]
        self._queued_from = decision

    def take(self, measured: np.ndarray, rows: np.ndarray, y: np.ndarray) -> Taken:
        """The next candidate to measure; starts the next fit before returning.

        ``measured``: the mask of candidates already measured; ``rows`` and ``y``: the usable
        observations so far (indices into the candidates, and the model's targets), copied here.
        """
        now = time.perf_counter()
        if self._last_take is not None:
            self._step_s = self._ema(self._step_s, now - self._last_take)
        t0 = now
        if self._future is not None and self._future.done():
            self._land(measured)  # a newer posterior is ready: use it
        self._queue = [i for i in self._queue if not measured[i]]
        if (
            not self._queue
            and self.fits == 0
            and self._explore is not None
            and self.explored < self.max_explore
        ):
            if self._future is None:  # the first (cold) fit starts now, on everything measured so far
                self._submit(rows.copy(), y.copy(), measured.copy())
            cand = self._explore(self._blocked(measured, None))  # no posterior yet: explore meanwhile
            self.explored += 1
            self._last_take = time.perf_counter()
            return Taken(cand, None, 0.0)
        while not self._queue:  # wait for the fit in flight, or start one with nothing pending
            fresh = self._future is None
            if fresh:
                self._submit(rows.copy(), y.copy(), measured.copy())
            self._land(measured)
            if not self._queue and fresh:
                raise RuntimeError("the model chose no candidate: every one is measured")
        wait_s = time.perf_counter() - t0
        self.decision_wait_s += wait_s
        cand = self._queue.pop(0)
        assert self._queued_from is not None
        taken = Taken(cand, self._queued_from, wait_s)
        if self._future is None and (len(y) > self._submitted_n or not self._queue):
            self._submit(rows.copy(), y.copy(), self._blocked(measured, cand))
        self._last_take = time.perf_counter()
        return taken

    def _blocked(self, measured: np.ndarray, cand: int | None) -> np.ndarray:
        blocked = measured.copy()
        blocked[self._queue] = True
        if cand is not None:
            blocked[cand] = True
        return blocked

    def close(self) -> None:
        """Wait for a fit in flight (its result is dropped) and stop the worker."""
        if self._future is not None:
            try:
                self._future.result()
            except Exception as exc:  # noqa: BLE001 - the campaign is over; the fit is not used
                log.info("a model step in flight when the campaign ended failed: %s", exc)
            self._future = None
        self._pool.shutdown(wait=True)
        torch.set_num_threads(self._threads_before)
