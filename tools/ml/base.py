"""Interfaces of the active-learning engine (``tools/ml``).

The campaign runner (``tools/campaign.py``) composes these: descriptors turn the
survey image into one feature vector per candidate position, a scalarizer turns each
measured spectrum into one number, a surrogate model learns feature → number, an
acquisition function picks the next candidates, and monitors watch for drift,
out-of-distribution data and a stuck trajectory.

Arrays are NumPy at these boundaries (float64 unless said); models may use torch inside.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict


class FitReport(BaseModel):
    """What one (re)fit did: for logging, monitors and latency accounting."""

    model_config = ConfigDict(frozen=True)

    n_observations: int
    iterations: int
    fit_s: float
    neg_log_marginal_likelihood: float
    #: fitted kernel amplitude and noise variance, in units of the standardised target
    outputscale: float
    noise: float
    extra: dict[str, Any] = {}


@runtime_checkable
class Surrogate(Protocol):
    """A probabilistic regression model over candidate descriptors.

    ``fit`` may be called repeatedly with growing data and warm-starts from the
    previous fit. Targets are standardised internally; predictions come back in the
    units of ``y``.
    """

    def fit(self, X: np.ndarray, y: np.ndarray) -> FitReport:
        """X: (n, d) descriptors, y: (n,) scalarized measurements."""
        ...

    def predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and variance of the latent function at X (m, d); batched internally."""
        ...

    def sample(self, X: np.ndarray, n_samples: int, rng: np.random.Generator) -> np.ndarray:
        """(n_samples, m) posterior function samples at X (Thompson sampling)."""
        ...

    def embed(self, X: np.ndarray) -> np.ndarray:
        """The representation the kernel sees (DKL: learned features; GP: X itself)."""
        ...


MonitorKind = Literal["drift", "ood", "stuck"]


class MonitorEvent(BaseModel):
    """A monitor's finding; the campaign logs it and the agents can act on it."""

    kind: MonitorKind
    step: int
    message: str
    #: numbers behind the finding (shift_nm, ood_fraction, best_so_far...)
    details: dict[str, Any] = {}
