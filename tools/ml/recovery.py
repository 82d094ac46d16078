"""A surrogate that survives the numerical failures real data bring out.

On a recorded map a model fit can fail: a kernel matrix that is not positive definite
even with the largest jitter ``cholesky_jitter`` tries, NaN weights after a bad step, a
float32 round-off on near-duplicate descriptors. ``RecoveringSurrogate`` wraps the
campaign's model and climbs a ladder on each failed fit, so one bad step costs a slower
step, not the campaign:

1. the model as configured (warm-started as usual);
2. the same model rebuilt from scratch in float64 (kept from then on: what failed once
   in float32 tends to fail again);
3. an exact GP on the same descriptors for this step only (the next step tries the
   model again).

Each recovery is reported to ``on_recovery`` (the campaign logs it and writes a
``model_recovered`` event) and counted in ``recoveries``. A fit that fails on every
rung raises ``ModelFailure``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from autoscope.tools.ml.base import FitReport, Surrogate

log = logging.getLogger(__name__)

#: what a numerical failure of a fit looks like
NUMERICAL = (torch.linalg.LinAlgError, RuntimeError, ValueError, FloatingPointError, ZeroDivisionError)


class ModelFailure(RuntimeError):
    """Every rung of the recovery ladder failed."""


class RecoveringSurrogate:
    """``Surrogate`` that recovers failed fits (see the module doc)."""

    def __init__(
        self,
        make: Callable[[torch.dtype], Surrogate],
        make_fallback: Callable[[], Surrogate],
        *,
        on_recovery: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self._make = make
        self._make_fallback = make_fallback
        self._model = make(torch.float32)
        self._float64 = False
        self._active: Surrogate = self._model
        self.on_recovery = on_recovery
        self.recoveries = 0

    @property
    def active(self) -> Surrogate:
        """The model behind the latest successful fit."""
        return self._active

    def _report(self, rung: str, n: int, error: BaseException) -> None:
        self.recoveries += 1
        info = {"rung": rung, "observations": n, "error": f"{type(error).__name__}: {error}"}
        log.warning("model fit on %d observations failed (%s); recovered with %s", n, info["error"], rung)
        if self.on_recovery:
            self.on_recovery(info)

    def fit(self, X: np.ndarray, y: np.ndarray) -> FitReport:
        try:
            report = _checked(self._model.fit(X, y))
            self._active = self._model
            return report
        except NUMERICAL as exc:
            first = exc
        if not self._float64:
            try:
                model = self._make(torch.float64)
                report = _checked(model.fit(X, y))
                self._model, self._active, self._float64 = model, model, True
                self._report("the model refitted from scratch in float64", len(y), first)
                return report
            except NUMERICAL as exc:
                first = exc
        try:
            fallback = self._make_fallback()
            report = _checked(fallback.fit(X, y))
        except NUMERICAL as exc:
            raise ModelFailure(f"every model failed on {len(y)} observations: {exc}") from first
        self._active = fallback
        self._report("an exact GP for this step", len(y), first)
        return report

    def predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._active.predict(X)

    def sample(self, X: np.ndarray, n_samples: int, rng: np.random.Generator) -> np.ndarray:
        return self._active.sample(X, n_samples, rng)

    def embed(self, X: np.ndarray) -> np.ndarray:
        return self._active.embed(X)

    def __getattr__(self, name: str) -> Any:  # target_scale, noise_variance... of the active model
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._active, name)


def _checked(report: FitReport) -> FitReport:
    if not math.isfinite(report.neg_log_marginal_likelihood):
        raise FloatingPointError(f"non-finite marginal likelihood {report.neg_log_marginal_likelihood}")
    return report
