"""Library references for the step-latency benchmark: gpytorch and BoTorch, warm-started.

Each reference does what ours does in one active-learning step — refit on the
observations, starting from the previous step's fit; predict over every candidate; take
the acquisition argmax — but built the way each library documents it:

- ``GpytorchExactGP``: ``gpytorch.models.ExactGP`` with ``ConstantMean`` +
  ``ScaleKernel(MaternKernel(nu=2.5, ard_num_dims=d))`` and a ``GaussianLikelihood``,
  float64, inputs and targets standardised like ours. A refit keeps the model,
  ``set_train_data`` with the new point, and runs the same torch L-BFGS ours runs
  (strong Wolfe, at most ``warm_iter`` = 30 iterations, same tolerances) on the negative
  exact marginal log likelihood; prediction under ``gpytorch.settings.fast_pred_var()``;
  EI argmax with our ``expected_improvement``.
- ``GpytorchDKL``: gpytorch's deep-kernel-learning recipe — an MLP feature extractor
  (d → 64 → 32 → 8, SiLU, as ours) feeding ``ScaleKernel(MaternKernel(nu=2.5, ARD))``
  in an ``ExactGP`` — trained with Adam (lr 0.01) over all parameters, float32. A refit
  keeps model and optimiser, ``set_train_data``, and takes ``warm_iter`` = 10 Adam steps
  (ours: 10 AdamW steps). The tutorial's ``GridInterpolationKernel``/``ScaleToBounds``
  are left out: KISS-GP grids are for 1–3 latent dimensions, not 8.
- ``BotorchSingleTaskGP``: ``botorch.models.SingleTaskGP`` with ``Normalize(d)`` inputs
  and ``Standardize(1)`` outcomes and BoTorch's default kernel and priors, fitted by
  ``botorch.fit.fit_gpytorch_mll`` with its default optimiser (scipy L-BFGS-B, run to
  scipy's convergence). A refit builds the model on the new data and loads the previous
  step's hyperparameters (the state dict without the transforms' data-derived buffers,
  which would otherwise undo the new outcome standardisation) before fitting. The
  acquisition is ``LogExpectedImprovement`` over all candidates as one (m, 1, d) batch.

Every fit's optimisation loop runs under ours' thread policy (``fit_threads``: one
intra-op thread on the CPU up to 1024 observations), so the comparison is between the
libraries, not between thread settings: with torch's default threads on a busy 2-core
machine a BoTorch fit on 20 points took 7× longer. All run under the same pinned
gpytorch numerics (``exact_numerics``). ``fit`` returns the optimiser iterations it
used; ``predict`` the latent mean and variance in units of y; ``pick`` the acquisition
argmax over the candidates.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any, Protocol, TypeVar

import numpy as np
import torch

from autoscope.tools.ml.acquisition import expected_improvement
from autoscope.tools.ml.gp import lbfgs_minimise, target_standardisation
from autoscope.tools.ml.kernels import Standardizer, fit_threads

T = TypeVar("T")

#: EI margin, in units of y, as the benchmark's own step uses
XI = 0.01


@contextmanager
def exact_numerics() -> Iterator[None]:
    """gpytorch/linear_operator numerics pinned to what ``import botorch`` sets globally.

    Importing BoTorch switches off linear_operator's "fast computations" and raises
    the Cholesky and eager-kernel sizes for the whole process, which changes gpytorch's
    marginal likelihood path — and so how many L-BFGS iterations a warm gpytorch refit
    takes (at 200 × 64: 8–20 with these settings, 18–30 with gpytorch's defaults). All
    references run under these settings explicitly, whatever was imported first.
    """
    import gpytorch
    import linear_operator

    with ExitStack() as stack:
        stack.enter_context(
            linear_operator.settings.fast_computations(
                covar_root_decomposition=False, log_prob=False, solves=False
            )
        )
        stack.enter_context(linear_operator.settings.max_cholesky_size(4096))
        stack.enter_context(linear_operator.settings.cholesky_max_tries(6))
        stack.enter_context(gpytorch.settings.max_eager_kernel_size(4096))
        yield


def _pinned(method: Callable[..., T]) -> Callable[..., T]:
    """Run a reference's method under ``exact_numerics``."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        with exact_numerics():
            return method(*args, **kwargs)

    return wrapper


class Reference(Protocol):
    """One library's model in the benchmark step."""

    #: what the optimiser is, for the table
    optimizer: str

    def fit(self, X: np.ndarray, y: np.ndarray) -> int: ...

    def predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def pick(self, X: np.ndarray, best: float) -> int: ...


def reference_step(ref: Reference, X: np.ndarray, y: np.ndarray, obs: np.ndarray) -> int:
    """Fit on ``obs`` (warm), predict over all of X, acquisition argmax; returns iterations."""
    iters = ref.fit(X[obs], y[obs])
    ref.pick(X, float(y[obs].max()))
    return iters


class _Standardised:
    """Inputs and targets standardised per fit, as ours does (column z-score, target z-score)."""

    dtype: torch.dtype
    device: torch.device

    def _standardise(self, X: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        self._xs = Standardizer.fit(X)
        self._y_mean, self._y_std = target_standardisation(y)
        return self._tensor(self._xs(X)), self._tensor((y - self._y_mean) / self._y_std)

    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(a, dtype=self.dtype, device=self.device)

    def _posterior(self, model: Any, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import gpytorch

        model.eval()
        with torch.no_grad(), gpytorch.settings.fast_pred_var():
            f = model(self._tensor(self._xs(X)))
            mean, var = f.mean, f.variance
        return (
            mean.double().cpu().numpy() * self._y_std + self._y_mean,
            var.double().cpu().numpy() * self._y_std**2,
        )

    @_pinned
    def predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._posterior(self._model, X)

    @_pinned
    def pick(self, X: np.ndarray, best: float) -> int:
        mean, var = self.predict(X)
        return int(np.argmax(expected_improvement(mean, var, best, XI)))


def _exact_gp_class() -> type:
    import gpytorch

    class MaternExactGP(gpytorch.models.ExactGP):
        def __init__(self, x: torch.Tensor, y: torch.Tensor, likelihood: Any, extractor: Any = None) -> None:
            super().__init__(x, y, likelihood)
            self.feature_extractor = extractor
            d = x.shape[-1] if extractor is None else extractor[-1].out_features
            self.mean_module = gpytorch.means.ConstantMean()
            self.covar_module = gpytorch.kernels.ScaleKernel(
                gpytorch.kernels.MaternKernel(nu=2.5, ard_num_dims=d)
            )

        def forward(self, x: torch.Tensor) -> Any:
            z = x if self.feature_extractor is None else self.feature_extractor(x)
            return gpytorch.distributions.MultivariateNormal(self.mean_module(z), self.covar_module(z))

    return MaternExactGP


class GpytorchExactGP(_Standardised):
    """gpytorch ExactGP, Matérn-5/2 ARD, warm-started torch L-BFGS (ours' settings)."""

    def __init__(
        self,
        device: str = "cpu",
        dtype: torch.dtype = torch.float64,
        max_iter: int = 200,
        warm_iter: int = 30,
    ) -> None:
        self.device, self.dtype = torch.device(device), dtype
        self.max_iter, self.warm_iter = max_iter, warm_iter
        self.optimizer = f"torch L-BFGS (strong Wolfe), ≤{warm_iter} warm iterations, as ours"
        self._model: Any = None

    @_pinned
    def fit(self, X: np.ndarray, y: np.ndarray) -> int:
        import gpytorch

        Z, yt = self._standardise(X, y)
        warm = self._model is not None
        if warm:
            self._model.set_train_data(Z, yt, strict=False)
        else:
            likelihood = gpytorch.likelihoods.GaussianLikelihood()
            self._model = _exact_gp_class()(Z, yt, likelihood).to(device=self.device, dtype=self.dtype)
            self._model.covar_module.base_kernel.lengthscale = math.sqrt(X.shape[1])  # as ours starts
        model = self._model
        model.train()
        mll = gpytorch.mlls.ExactMarginalLogLikelihood(model.likelihood, model)
        tol = 1e-9 if self.dtype == torch.float64 else 1e-6
        with fit_threads(self.device, len(y)):
            return lbfgs_minimise(
                list(model.parameters()),
                lambda: -mll(model(Z), yt),
                self.warm_iter if warm else self.max_iter,
                tol,
            )


class GpytorchDKL(_Standardised):
    """gpytorch deep kernel learning: MLP → Matérn-5/2 ARD ExactGP, Adam over everything."""

    def __init__(
        self,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
        hidden: tuple[int, ...] = (64, 32),
        latent_dim: int = 8,
        lr: float = 0.01,
        max_iter: int = 300,
        warm_iter: int = 10,
        seed: int = 0,
    ) -> None:
        self.device, self.dtype = torch.device(device), dtype
        self.hidden, self.latent_dim, self.lr = hidden, latent_dim, lr
        self.max_iter, self.warm_iter, self.seed = max_iter, warm_iter, seed
        self.optimizer = f"Adam lr {lr}, {warm_iter} warm steps"
        self._model: Any = None
        self._opt: torch.optim.Optimizer | None = None

    def _extractor(self, d: int) -> torch.nn.Sequential:
        sizes = [d, *self.hidden, self.latent_dim]
        layers: list[torch.nn.Module] = []
        with torch.random.fork_rng(devices=[]):  # seeded default init, global RNG untouched
            torch.manual_seed(self.seed)
            for a, b in zip(sizes[:-1], sizes[1:], strict=True):
                layers += [torch.nn.Linear(a, b), torch.nn.SiLU()]
        return torch.nn.Sequential(*layers[:-1])

    @_pinned
    def fit(self, X: np.ndarray, y: np.ndarray) -> int:
        import gpytorch

        Z, yt = self._standardise(X, y)
        warm = self._model is not None
        if warm:
            self._model.set_train_data(Z, yt, strict=False)
        else:
            likelihood = gpytorch.likelihoods.GaussianLikelihood()
            self._model = _exact_gp_class()(Z, yt, likelihood, self._extractor(X.shape[1]))
            self._model = self._model.to(device=self.device, dtype=self.dtype)
            self._opt = torch.optim.Adam(self._model.parameters(), lr=self.lr)
        model, opt = self._model, self._opt
        assert opt is not None
        model.train()
        mll = gpytorch.mlls.ExactMarginalLogLikelihood(model.likelihood, model)
        steps = self.warm_iter if warm else self.max_iter
        with fit_threads(self.device, len(y)):
            for _ in range(steps):
                opt.zero_grad(set_to_none=True)
                loss = -mll(model(Z), yt)
                loss.backward()
                opt.step()
        return steps


#: state-dict entries that are statistics of the training data, not hyperparameters
_DATA_BUFFERS = ("outcome_transform.", "input_transform.")


class BotorchSingleTaskGP:
    """BoTorch SingleTaskGP + fit_gpytorch_mll (scipy L-BFGS-B), LogEI over all candidates."""

    optimizer = "scipy L-BFGS-B (fit_gpytorch_mll default), to convergence"

    def __init__(self, device: str = "cpu", dtype: torch.dtype = torch.float64) -> None:
        self.device, self.dtype = torch.device(device), dtype
        self._model: Any = None
        self._state: dict[str, torch.Tensor] | None = None

    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(a, dtype=self.dtype, device=self.device)

    @_pinned
    def fit(self, X: np.ndarray, y: np.ndarray) -> int:
        from botorch.fit import fit_gpytorch_mll
        from botorch.models import SingleTaskGP
        from botorch.models.transforms import Normalize, Standardize
        from botorch.optim.fit import fit_gpytorch_mll_scipy
        from gpytorch.mlls import ExactMarginalLogLikelihood

        train_X, train_Y = self._tensor(X), self._tensor(y).unsqueeze(-1)
        model = SingleTaskGP(
            train_X,
            train_Y,
            input_transform=Normalize(d=X.shape[1]),
            outcome_transform=Standardize(m=1),
        )
        if self._state is not None:
            model.load_state_dict(self._state, strict=False)
        iterations = 0

        def lbfgsb(mll: Any, **kwargs: Any) -> Any:
            """The default optimizer, counting L-BFGS-B iterations over all fit attempts (a
            ``callback`` would not do: BoTorch re-evaluates the loss for each callback)."""
            nonlocal iterations
            result = fit_gpytorch_mll_scipy(mll, **kwargs)
            iterations += int(result.step)
            return result

        mll = ExactMarginalLogLikelihood(model.likelihood, model)
        with fit_threads(self.device, len(y)):
            fit_gpytorch_mll(mll, optimizer=lbfgsb)
        self._model = model
        self._state = {k: v for k, v in model.state_dict().items() if not k.startswith(_DATA_BUFFERS)}
        return iterations

    @_pinned
    def predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            post = self._model.posterior(self._tensor(X))
            return (
                post.mean.squeeze(-1).double().cpu().numpy(),
                post.variance.squeeze(-1).double().cpu().numpy(),
            )

    @_pinned
    def pick(self, X: np.ndarray, best: float) -> int:
        from botorch.acquisition.analytic import LogExpectedImprovement

        with torch.no_grad():
            acq = LogExpectedImprovement(self._model, best_f=best)
            values = acq(self._tensor(X).unsqueeze(-2))  # (m, 1, d) → (m,)
        return int(values.argmax())


def make_references(device: str, seed: int) -> dict[str, Reference]:
    """The library references, by the names the benchmark reports them under."""
    return {
        "gpytorch_exact_gp": GpytorchExactGP(device=device),
        "gpytorch_dkl": GpytorchDKL(device=device, seed=seed),
        "botorch_stgp_logei": BotorchSingleTaskGP(device=device),
    }
