"""Exact Gaussian-process regression in torch, warm-started between fits.

Inputs and targets are standardised inside; hyperparameters (ARD lengthscales,
outputscale, noise, constant mean) maximise the exact marginal likelihood plus
log-normal priors with L-BFGS. A refit after one more observation starts from the
previous optimum — re-expressed exactly in the new standardisation — and so needs a
handful of iterations instead of a cold start's tens to hundreds.

Beyond ``sparse_above`` observations the same head is fitted on Titsias' collapsed bound
over at most ``inducing`` inducing points instead (``tools/ml/sparse.py``): O(n m²) per
iteration instead of O(n³), and the warm start carries over the switch unchanged.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import numpy as np
import torch

from autoscope.tools.ml.base import FitReport
from autoscope.tools.ml.kernels import (
    GPHead,
    KernelKind,
    Posterior,
    PosteriorModel,
    Standardizer,
    as_matrix,
    fit_threads,
    resolve_device,
)
from autoscope.tools.ml.sparse import (
    INDUCING,
    SPARSE_ABOVE,
    SparsePosterior,
    keep_inducing,
    select_inducing,
    sparse_loss,
)

log = logging.getLogger(__name__)


def as_targets(y: np.ndarray, n: int) -> np.ndarray:
    """Validate a finite (n,) target vector."""
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if y.shape[0] != n:
        raise ValueError(f"y has {y.shape[0]} values for {n} rows of X")
    if n == 0:
        raise ValueError("cannot fit on zero observations")
    if not np.all(np.isfinite(y)):
        raise ValueError("y contains NaN or inf")
    return y


def target_standardisation(y: np.ndarray) -> tuple[float, float]:
    """(mean, std) of the targets, std falling back to 1 for constant or single targets."""
    std = float(y.std())
    return float(y.mean()), (std if std > 1e-12 * max(1.0, float(np.abs(y).max())) else 1.0)


def lbfgs_minimise(params: list[torch.Tensor], closure_loss, max_iter: int, tol_change: float) -> int:
    """Minimise ``closure_loss()`` over ``params`` with strong-Wolfe L-BFGS; returns iterations."""
    if max_iter <= 0:
        return 0
    opt = torch.optim.LBFGS(
        params,
        lr=1.0,
        max_iter=max_iter,
        max_eval=int(max_iter * 1.5) + 5,
        tolerance_grad=1e-4,
        tolerance_change=tol_change,
        history_size=10,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = closure_loss()
        loss.backward()
        return loss

    opt.step(closure)
    return int(opt.state[opt._params[0]].get("n_iter", 0))


class Counted:
    """A loss closure that counts its calls."""

    def __init__(self, fn: Callable[[], torch.Tensor]) -> None:
        self.fn, self.calls = fn, 0

    def __call__(self) -> torch.Tensor:
        self.calls += 1
        return self.fn()


class ExactGP(PosteriorModel):
    """Exact GP surrogate (``Surrogate`` protocol) with a Gaussian likelihood.

    ``max_iter`` bounds a cold fit, ``warm_iter`` a warm refit (L-BFGS iterations; both
    stop earlier on convergence). ``sample`` draws exact joint posterior samples for up
    to 1024 points and pathwise samples (random Fourier prior + exact data correction,
    still joint) beyond.

    With more than ``sparse_above`` observations (``None``: never) the fit maximises the
    sparse collapsed bound on at most ``inducing`` points chosen from the inputs under the
    current kernel (``learn_inducing``: then optimised with the hyperparameters); the
    ``FitReport`` says which head was used (``extra["sparse"]``, ``extra["inducing"]``).
    """

    def __init__(
        self,
        kernel: KernelKind = "matern52",
        ard: bool = True,
        dtype: torch.dtype = torch.float64,
        device: str = "auto",
        max_iter: int = 200,
        warm_iter: int = 30,
        seed: int = 0,
        sparse_above: int | None = SPARSE_ABOVE,
        inducing: int = INDUCING,
        learn_inducing: bool = False,
    ) -> None:
        if kernel not in ("rbf", "matern52"):
            raise ValueError(f"kernel must be 'rbf' or 'matern52', got {kernel!r}")
        if sparse_above is not None and sparse_above < 0:
            raise ValueError(f"sparse_above must be ≥ 0 or None, got {sparse_above}")
        if inducing < 1:
            raise ValueError(f"inducing must be ≥ 1, got {inducing}")
        self.sparse_above = sparse_above
        self.inducing = inducing
        self.learn_inducing = learn_inducing
        self.kernel: KernelKind = kernel
        self.ard = ard
        self.dtype = dtype
        self.device = resolve_device(device)
        self.max_iter = max_iter
        self.warm_iter = warm_iter
        self.seed = seed
        self._head: GPHead | None = None
        self._post: Posterior | SparsePosterior | None = None
        self._xs: Standardizer | None = None
        self._y_mean = 0.0
        self._y_std = 1.0
        self._inducing_x: np.ndarray | None = None
        self._inducing_at = 0

    # -- fitting -----------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the previous fit: the next ``fit`` starts cold."""
        self._head = self._post = self._xs = None
        self._inducing_x: np.ndarray | None = None  # inducing inputs in the units of X
        self._inducing_at = 0  # observations when they were chosen

    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(a, dtype=self.dtype, device=self.device)

    def _prepare_head(self, xs: Standardizer, y_mean: float, y_std: float) -> bool:
        """Create a new head or re-express the previous one in the new standardisation."""
        d = xs.mean.shape[0]
        warm = self._head is not None and self._xs is not None and self._xs.mean.shape[0] == d
        if not warm:
            self._head = GPHead(
                d,
                kernel=self.kernel,
                ard=self.ard,
                ls_init=math.sqrt(d),
                dtype=self.dtype,
                device=self.device,
            )
            return False
        assert self._head is not None and self._xs is not None
        ratio = self._xs.scale / xs.scale  # distances in new units = old · (s_old / s_new)
        shift = ratio if self.ard else np.exp(np.mean(np.log(ratio)))
        with torch.no_grad():
            self._head.log_lengthscale.add_(self._tensor(np.log(np.atleast_1d(shift))))
        self._head.rescale_targets(self._y_std / y_std, (self._y_mean - y_mean) / y_std)
        return True

    def fit(self, X: np.ndarray, y: np.ndarray) -> FitReport:
        """Fit hyperparameters on (X, y), warm-starting from the previous fit."""
        t0 = time.perf_counter()
        X = as_matrix(X)
        y = as_targets(y, X.shape[0])
        xs = Standardizer.fit(X)
        y_mean, y_std = target_standardisation(y)
        warm = self._prepare_head(xs, y_mean, y_std)
        self._xs, self._y_mean, self._y_std = xs, y_mean, y_std
        head = self._head
        assert head is not None
        Z = self._tensor(xs(X))
        yt = self._tensor((y - y_mean) / y_std)
        tol = 1e-9 if self.dtype == torch.float64 else 1e-6
        sparse = self.sparse_above is not None and len(y) > self.sparse_above
        with fit_threads(self.device, len(y)):
            if sparse:
                iters, evals, U = self._fit_sparse(head, Z, yt, warm, tol)
                with torch.no_grad():
                    nll = float(sparse_loss(head, Z, yt, U)) * Z.shape[0]
                self._post = SparsePosterior.build(head, Z, yt, U)
            else:
                loss = Counted(lambda: head.loss(Z, yt))
                iters = lbfgs_minimise(
                    list(head.parameters()), loss, self.warm_iter if warm else self.max_iter, tol
                )
                evals = loss.calls
                with torch.no_grad():
                    nll = float(head.loss(Z, yt)) * Z.shape[0]
                self._post = Posterior.build(head, Z, yt)
        fit_s = time.perf_counter() - t0
        log.debug("ExactGP fit n=%d warm=%s sparse=%s iters=%d in %.3f s", len(y), warm, sparse, iters, fit_s)
        return FitReport(
            n_observations=len(y),
            iterations=iters,
            fit_s=fit_s,
            neg_log_marginal_likelihood=nll,
            outputscale=float(head.outputscale.detach()),
            noise=float(head.noise.detach()),
            extra={
                "warm": warm,
                "lengthscale_min": float(head.lengthscale.detach().min()),
                "lengthscale_max": float(head.lengthscale.detach().max()),
                "mean": float(head.mean_const.detach()) * y_std + y_mean,
                "outputscale_y": float(head.outputscale.detach()) * y_std**2,
                "evaluations": evals,  # of the loss with its gradient (L-BFGS line searches included)
                "sparse": sparse,
                "inducing": self._post.n_inducing if isinstance(self._post, SparsePosterior) else len(y),
            },
        )

    def _fit_sparse(
        self, head: GPHead, Z: torch.Tensor, yt: torch.Tensor, warm: bool, tol: float
    ) -> tuple[int, int, torch.Tensor]:
        """L-BFGS on the collapsed bound; returns (iterations, loss evaluations, inducing inputs).

        A warm fit keeps the previous inducing inputs while ``keep_inducing`` says so. Else
        they are chosen under the kernel the fit starts from (the previous optimum when warm);
        a cold fit starts from the prior guess, so it chooses again under the fitted kernel
        and polishes for up to ``warm_iter`` iterations.
        """
        iters = evals = 0
        assert self._xs is not None
        keep = warm and keep_inducing(
            self._inducing_x, self._inducing_at, Z.shape[0], Z.shape[1], min(self.inducing, Z.shape[0])
        )
        for second in (False, True):
            if keep:
                assert self._inducing_x is not None
                U = self._tensor(self._xs(self._inducing_x))
            else:
                U = Z[select_inducing(head, Z, self.inducing, self.seed)].clone()
                self._inducing_x, self._inducing_at = (
                    self._xs.mean + U.cpu().numpy() * self._xs.scale,
                    Z.shape[0],
                )
            params = list(head.parameters())
            if self.learn_inducing and U.shape[0] < Z.shape[0]:
                U.requires_grad_(True)
                params.append(U)
            budget = self.warm_iter if warm or second else self.max_iter
            loss = Counted(lambda U=U: sparse_loss(head, Z, yt, U))
            iters += lbfgs_minimise(params, loss, budget, tol)
            evals += loss.calls
            if warm or self.learn_inducing:
                break
        if U.requires_grad:  # learned: kept where the optimiser left them
            self._inducing_x = self._xs.mean + U.detach().cpu().numpy() * self._xs.scale
        return iters, evals, U.detach()

    # -- prediction --------------------------------------------------------------------
    def _kernel_inputs(self, X: np.ndarray) -> torch.Tensor:
        if self._post is None or self._xs is None:
            raise RuntimeError("ExactGP: call fit before predict/sample")
        return self._tensor(self._xs(as_matrix(X, self._xs.mean.shape[0])))

    def embed(self, X: np.ndarray) -> np.ndarray:
        """The GP's kernel sees X itself (standardised inside)."""
        return as_matrix(X).copy()
