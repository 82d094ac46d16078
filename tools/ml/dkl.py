"""Deep kernel learning: an MLP feature extractor feeding an exact GP, trained jointly.

The network maps standardised descriptors to a low-dimensional latent space and an
ARD kernel acts there (Wilson et al. 2016). Network weights and kernel hyperparameters
maximise the exact marginal likelihood (plus the kernel priors) with AdamW — weight
decay on the network only — and training stops when the loss plateaus. Refits keep the
weights, the kernel and the optimiser state; the first layer is re-expressed exactly
when the input standardisation moves, so a warm refit only has to absorb the new point.
Against overfitting on few points: a small latent space, weight decay, early stopping,
and the kernel priors (the noise cannot collapse below its floor).

Beyond ``sparse_above`` observations the head is trained on Titsias' collapsed bound
instead (``tools/ml/sparse.py``), its inducing points a subset of the training inputs
(chosen in the latent space at the start of each fit, then carried through the network as
it trains): O(n m²) per step instead of O(n³); weights, kernel and optimiser state carry
over the switch unchanged.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence

import numpy as np
import torch

from autoscope.tools.ml.base import FitReport
from autoscope.tools.ml.gp import as_targets, target_standardisation
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


class FeatureExtractor(torch.nn.Module):
    """MLP d → hidden… → latent_dim with SiLU activations, initialised from a private generator."""

    def __init__(
        self,
        d: int,
        hidden: Sequence[int],
        latent_dim: int,
        *,
        generator: torch.Generator,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        super().__init__()
        sizes = [d, *hidden, latent_dim]
        layers: list[torch.nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            lin = torch.nn.utils.skip_init(torch.nn.Linear, a, b, dtype=dtype)  # no global-RNG draw
            with torch.no_grad():  # Kaiming-uniform-like init from our own generator
                bound = math.sqrt(3.0 / a)
                lin.weight.copy_((torch.rand(b, a, generator=generator, dtype=dtype) * 2 - 1) * bound)
                lin.bias.zero_()
            layers.append(lin)
            if i < len(sizes) - 2:
                layers.append(torch.nn.SiLU())
        self.net = torch.nn.Sequential(*layers).to(device)

    @property
    def first(self) -> torch.nn.Linear:
        layer = self.net[0]
        assert isinstance(layer, torch.nn.Linear)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class DKL(PosteriorModel):
    """Deep-kernel-learning surrogate (``Surrogate`` protocol).

    ``max_iter`` bounds a cold fit and ``warm_iter`` a warm refit (AdamW steps at
    learning rate ``lr``); both stop early when the loss has not improved by
    ``tol`` (per observation) for ``patience`` steps. ``embed`` returns the latent
    features. ``sample`` is joint: exact up to 1024 points, pathwise beyond. With more than
    ``sparse_above`` observations (``None``: never) the GP head is the sparse one on at most
    ``inducing`` points (``FitReport.extra["sparse"]`` says which).
    """

    def __init__(
        self,
        hidden: tuple[int, ...] = (64, 32),
        latent_dim: int = 8,
        kernel: KernelKind = "matern52",
        dtype: torch.dtype = torch.float32,
        device: str = "auto",
        lr: float = 0.01,
        max_iter: int = 300,
        warm_iter: int = 10,
        weight_decay: float = 1e-3,
        patience: int = 15,
        tol: float = 1e-4,
        seed: int = 0,
        sparse_above: int | None = SPARSE_ABOVE,
        inducing: int = INDUCING,
    ) -> None:
        if kernel not in ("rbf", "matern52"):
            raise ValueError(f"kernel must be 'rbf' or 'matern52', got {kernel!r}")
        if latent_dim < 1:
            raise ValueError(f"latent_dim must be ≥ 1, got {latent_dim}")
        if sparse_above is not None and sparse_above < 0:
            raise ValueError(f"sparse_above must be ≥ 0 or None, got {sparse_above}")
        if inducing < 1:
            raise ValueError(f"inducing must be ≥ 1, got {inducing}")
        self.sparse_above = sparse_above
        self.inducing = inducing
        self.hidden = tuple(hidden)
        self.latent_dim = latent_dim
        self.kernel: KernelKind = kernel
        self.dtype = dtype
        self.device = resolve_device(device)
        self.lr = lr
        self.max_iter = max_iter
        self.warm_iter = warm_iter
        self.weight_decay = weight_decay
        self.patience = patience
        self.tol = tol
        self.seed = seed
        self.reset()

    def reset(self) -> None:
        """Forget the previous fit: the next ``fit`` re-initialises from the seed."""
        self._net: FeatureExtractor | None = None
        self._head: GPHead | None = None
        self._opt: torch.optim.Optimizer | None = None
        self._post: Posterior | SparsePosterior | None = None
        self._xs: Standardizer | None = None
        self._y_mean = 0.0
        self._y_std = 1.0
        self._inducing_x: np.ndarray | None = None  # inducing inputs in the units of X
        self._inducing_at = 0  # observations when they were chosen

    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(a, dtype=self.dtype, device=self.device)

    def _build(self, d: int) -> None:
        gen = torch.Generator().manual_seed(self.seed)
        self._net = FeatureExtractor(
            d, self.hidden, self.latent_dim, generator=gen, dtype=self.dtype, device=self.device
        )
        self._head = GPHead(
            self.latent_dim,
            kernel=self.kernel,
            ard=True,
            ls_init=1.0,
            dtype=self.dtype,
            device=self.device,
        )
        self._opt = torch.optim.AdamW(
            [
                {"params": list(self._net.parameters()), "weight_decay": self.weight_decay},
                {"params": list(self._head.parameters()), "weight_decay": 0.0},
            ],
            lr=self.lr,
        )

    def _restandardise(self, xs: Standardizer, y_mean: float, y_std: float) -> None:
        """Re-express the first layer and the head so the model is unchanged in raw units."""
        assert self._net is not None and self._head is not None and self._xs is not None
        ratio = self._tensor(xs.scale / self._xs.scale)  # (d,)
        offset = self._tensor((xs.mean - self._xs.mean) / self._xs.scale)
        lin = self._net.first
        with torch.no_grad():
            lin.bias.add_(lin.weight @ offset)
            lin.weight.mul_(ratio)
        self._head.rescale_targets(self._y_std / y_std, (self._y_mean - y_mean) / y_std)

    def _loss(self, Z: torch.Tensor, y: torch.Tensor, inducing: torch.Tensor | None) -> torch.Tensor:
        """The exact loss, or the sparse one on the latent features of the (standardised)
        inducing inputs: they move with the network as it trains."""
        assert self._net is not None and self._head is not None
        F = self._net(Z)
        if inducing is None:
            return self._head.loss(F, y)
        return sparse_loss(self._head, F, y, self._net(inducing))

    def _train(
        self, Z: torch.Tensor, y: torch.Tensor, max_steps: int, inducing: torch.Tensor | None = None
    ) -> tuple[int, float]:
        """AdamW on the joint loss until it plateaus; returns (steps, best loss)."""
        assert self._net is not None and self._head is not None and self._opt is not None
        net, opt = self._net, self._opt
        net.train()
        best, since_best, steps = math.inf, 0, 0
        for steps in range(1, max_steps + 1):  # noqa: B007 - steps is reported
            opt.zero_grad(set_to_none=True)
            loss = self._loss(Z, y, inducing)
            loss.backward()
            opt.step()
            value = float(loss.detach())
            if value < best - self.tol:
                best, since_best = value, 0
            else:
                since_best += 1
                if since_best >= self.patience:
                    break
        return steps, best

    def fit(self, X: np.ndarray, y: np.ndarray) -> FitReport:
        """Train network and kernel on (X, y), warm-starting from the previous fit."""
        t0 = time.perf_counter()
        X = as_matrix(X)
        y = as_targets(y, X.shape[0])
        xs = Standardizer.fit(X)
        y_mean, y_std = target_standardisation(y)
        warm = self._net is not None and self._xs is not None and self._xs.mean.shape[0] == X.shape[1]
        if warm:
            self._restandardise(xs, y_mean, y_std)
        else:
            self._build(X.shape[1])
        self._xs, self._y_mean, self._y_std = xs, y_mean, y_std
        assert self._net is not None and self._head is not None
        Z = self._tensor(xs(X))
        yt = self._tensor((y - y_mean) / y_std)
        sparse = self.sparse_above is not None and len(y) > self.sparse_above
        with fit_threads(self.device, len(y)):
            inducing = self._inducing(Z, warm) if sparse else None
            steps, _ = self._train(Z, yt, self.warm_iter if warm else self.max_iter, inducing)
            if sparse and not warm:  # chosen on the untrained network: choose again on the trained one
                inducing = self._inducing(Z, False)
                steps += self._train(Z, yt, self.warm_iter, inducing)[0]
            self._net.eval()
            with torch.no_grad():
                F = self._net(Z)
                if inducing is None:
                    nll = float(self._head.loss(F, yt)) * len(y)
                    self._post = Posterior.build(self._head, F, yt)
                else:
                    U = self._net(inducing)
                    nll = float(sparse_loss(self._head, F, yt, U)) * len(y)
                    self._post = SparsePosterior.build(self._head, F, yt, U)
        fit_s = time.perf_counter() - t0
        log.debug("DKL fit n=%d warm=%s sparse=%s steps=%d in %.3f s", len(y), warm, sparse, steps, fit_s)
        head = self._head
        return FitReport(
            n_observations=len(y),
            iterations=steps,
            fit_s=fit_s,
            neg_log_marginal_likelihood=nll,
            outputscale=float(head.outputscale.detach()),
            noise=float(head.noise.detach()),
            extra={
                "warm": warm,
                "lengthscale": head.lengthscale.detach().cpu().tolist(),
                "evaluations": steps,  # of the loss with its gradient, one per AdamW step
                "sparse": sparse,
                "inducing": len(y) if inducing is None else int(inducing.shape[0]),
            },
        )

    def _inducing(self, Z: torch.Tensor, warm: bool) -> torch.Tensor:
        """Standardised inducing inputs: the previous ones while ``keep_inducing`` says so on a warm
        fit, else rows of Z chosen by greedy variance selection on their latent features."""
        assert self._net is not None and self._head is not None and self._xs is not None
        n, d = Z.shape
        if warm and keep_inducing(self._inducing_x, self._inducing_at, n, d, min(self.inducing, n)):
            assert self._inducing_x is not None
            return self._tensor(self._xs(self._inducing_x))
        with torch.no_grad():
            chosen = Z[select_inducing(self._head, self._net(Z), self.inducing, self.seed)]
        self._inducing_x = self._xs.mean + chosen.double().cpu().numpy() * self._xs.scale
        self._inducing_at = n
        return chosen

    def _latent(self, X: np.ndarray) -> torch.Tensor:
        if self._post is None or self._xs is None or self._net is None:
            raise RuntimeError("DKL: call fit before predict/sample/embed")
        Zs = self._tensor(self._xs(as_matrix(X, self._xs.mean.shape[0])))
        with torch.no_grad():
            return self._net(Zs)

    def _kernel_inputs(self, X: np.ndarray) -> torch.Tensor:
        return self._latent(X)

    def embed(self, X: np.ndarray) -> np.ndarray:
        """(m, latent_dim) learned features the kernel sees."""
        return self._latent(X).double().cpu().numpy()
