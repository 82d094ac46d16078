"""Gaussian-process machinery shared by the exact GP and deep kernel learning.

Everything here works on *features* (the standardised inputs for the exact GP, the
network's latent output for DKL) and on standardised targets. ``GPHead`` holds the
kernel hyperparameters (log-parametrised, with log-normal priors so a fit never
collapses) and computes the negative log marginal likelihood; ``Posterior`` caches
the Cholesky factor after a fit and serves chunked predictions and posterior samples.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

log = logging.getLogger(__name__)

KernelKind = Literal["rbf", "matern52"]

#: candidates per prediction chunk: bounds memory at chunk × n_train (and × features)
PREDICT_CHUNK = 8192
#: up to this many points, ``sample`` draws exact joint samples; beyond, pathwise RFF
JOINT_SAMPLE_MAX = 1024
#: random Fourier features for pathwise posterior samples
N_FOURIER_FEATURES = 2048


def resolve_device(device: str) -> torch.device:
    """``"auto"`` → CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


#: fits on at most this many observations run their optimisation loop on one CPU thread
SINGLE_THREAD_MAX_N = 1024


@contextmanager
def fit_threads(device: torch.device, n: int) -> Iterator[None]:
    """One intra-op thread while optimising a small GP on the CPU, restored afterwards.

    The loop is hundreds of small (n × n) ops: extra threads only add synchronisation,
    and under CPU contention (other processes on a 2-core machine) they made DKL fits
    10–50× slower. Larger fits and all predictions keep torch's thread setting.
    """
    if device.type != "cpu" or n > SINGLE_THREAD_MAX_N or torch.get_num_threads() == 1:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def noise_floor(dtype: torch.dtype) -> float:
    """Smallest noise variance (standardised units) the fit may reach, per precision."""
    return 1e-6 if dtype == torch.float64 else 1e-4


def scaled_sqdist(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances (a, b) between rows of already-scaled A and B."""
    a2 = (A * A).sum(-1, keepdim=True)
    b2 = (B * B).sum(-1, keepdim=True)
    return (a2 - 2.0 * A @ B.transpose(-1, -2) + b2.transpose(-1, -2)).clamp_min(0.0)


def kernel_from_sqdist(kind: KernelKind, d2: torch.Tensor, outputscale: torch.Tensor) -> torch.Tensor:
    """Stationary kernel value from squared scaled distances."""
    # exponents are capped so tiny values never become subnormal floats (slow on CPUs)
    if kind == "rbf":
        return outputscale * torch.exp(-0.5 * d2.clamp_max(160.0))
    r = torch.sqrt(d2.clamp(1e-12, 256.0)) * math.sqrt(5.0)
    return outputscale * (1.0 + r + r * r / 3.0) * torch.exp(-r)


def cholesky_jitter(K: torch.Tensor, max_tries: int = 6) -> torch.Tensor:
    """Cholesky factor of K, adding escalating diagonal jitter when K is not positive definite."""
    L, info = torch.linalg.cholesky_ex(K)
    if int(info) == 0:
        return L
    eye = torch.eye(K.shape[-1], dtype=K.dtype, device=K.device)
    jitter = 1e-8 if K.dtype == torch.float64 else 1e-6
    scale = float(K.diagonal().mean().detach().abs()) or 1.0
    for _ in range(max_tries):
        L, info = torch.linalg.cholesky_ex(K + (jitter * scale) * eye)
        if int(info) == 0:
            log.debug("cholesky needed jitter %.1e", jitter * scale)
            return L
        jitter *= 10.0
    raise torch.linalg.LinAlgError(f"kernel matrix not positive definite even with jitter {jitter:.1e}")


class GPHead(torch.nn.Module):
    """Kernel hyperparameters on ``n_features`` inputs and the exact marginal likelihood.

    Lengthscales, outputscale and noise are stored as logs. Priors (log-normal) keep the
    optimum away from degenerate corners: lengthscales centred on ``ls_init`` (for
    standardised inputs ~ sqrt(dim)), outputscale around 1 (targets are standardised),
    noise around 1e-2 with a hard floor per precision.
    """

    def __init__(
        self,
        n_features: int,
        *,
        kernel: KernelKind,
        ard: bool,
        ls_init: float,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        super().__init__()
        self.kind: KernelKind = kernel
        self.ard = ard
        n_ls = n_features if ard else 1
        kw = {"dtype": dtype, "device": device}
        self.log_lengthscale = torch.nn.Parameter(torch.full((n_ls,), math.log(ls_init), **kw))
        self.log_outputscale = torch.nn.Parameter(torch.zeros((), **kw))
        self.log_noise = torch.nn.Parameter(torch.full((), math.log(0.05), **kw))
        self.mean_const = torch.nn.Parameter(torch.zeros((), **kw))
        self.ls_prior_loc = math.log(ls_init)
        self.floor = noise_floor(dtype)

    @property
    def lengthscale(self) -> torch.Tensor:
        return torch.exp(self.log_lengthscale.clamp(-10.0, 12.0))

    @property
    def outputscale(self) -> torch.Tensor:
        return torch.exp(self.log_outputscale.clamp(-12.0, 8.0))

    @property
    def noise(self) -> torch.Tensor:
        return self.floor + torch.exp(self.log_noise.clamp(-25.0, 5.0))

    def log_prior(self) -> torch.Tensor:
        """Sum of the log-normal prior log densities (up to constants)."""
        lp = -0.5 * ((self.log_lengthscale - self.ls_prior_loc) / 1.5).pow(2).sum()
        lp = lp - 0.5 * (self.log_outputscale / 1.5).pow(2)
        lp = lp - 0.5 * ((self.log_noise - math.log(1e-2)) / 2.5).pow(2)
        return lp

    def gram(self, A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
        ls = self.lengthscale
        return kernel_from_sqdist(self.kind, scaled_sqdist(A / ls, B / ls), self.outputscale)

    def loss(self, Z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Negative (log marginal likelihood + log prior), divided by n."""
        n = Z.shape[0]
        K = self.gram(Z, Z) + self.noise * torch.eye(n, dtype=Z.dtype, device=Z.device)
        L = cholesky_jitter(K)
        r = (y - self.mean_const).unsqueeze(-1)
        a = torch.linalg.solve_triangular(L, r, upper=False)
        nll = 0.5 * (a * a).sum() + torch.log(L.diagonal()).sum() + 0.5 * n * math.log(2 * math.pi)
        return (nll - self.log_prior()) / n

    def rescale_targets(self, ratio: float, shift: float) -> None:
        """Re-express the head for new target standardisation: f_new = ratio · f_old + shift."""
        with torch.no_grad():
            self.mean_const.mul_(ratio).add_(shift)
            self.log_outputscale.add_(2.0 * math.log(ratio))
            noise_excess = max(float(self.noise) * ratio**2 - self.floor, self.floor * 1e-3)
            self.log_noise.fill_(math.log(noise_excess))


class JointOrPathwise:
    """Posterior samples: exact joint for at most ``JOINT_SAMPLE_MAX`` points, pathwise beyond
    (``Posterior`` and the sparse one each define the two samplers)."""

    @torch.no_grad()
    def sample(self, Zs: torch.Tensor, n_samples: int, rng: np.random.Generator) -> torch.Tensor:
        """(n_samples, m) joint posterior samples at features Zs."""
        if Zs.shape[0] <= JOINT_SAMPLE_MAX:
            return self._sample_joint(Zs, n_samples, rng)
        return self._sample_pathwise(Zs, n_samples, rng)

    def _sample_joint(self, Zs: torch.Tensor, n_samples: int, rng: np.random.Generator) -> torch.Tensor:
        raise NotImplementedError

    def _sample_pathwise(self, Zs: torch.Tensor, n_samples: int, rng: np.random.Generator) -> torch.Tensor:
        raise NotImplementedError


@dataclass
class Posterior(JointOrPathwise):
    """The fitted GP conditioned on the training features, ready for fast prediction."""

    head: GPHead
    Z: torch.Tensor  # (n, f) training features
    y: torch.Tensor  # (n,) standardised targets
    L: torch.Tensor  # Cholesky factor of K + noise I
    alpha: torch.Tensor  # (K + noise I)^-1 (y - mean)

    @classmethod
    @torch.no_grad()
    def build(cls, head: GPHead, Z: torch.Tensor, y: torch.Tensor) -> Posterior:
        n = Z.shape[0]
        K = head.gram(Z, Z) + head.noise * torch.eye(n, dtype=Z.dtype, device=Z.device)
        L = cholesky_jitter(K)
        alpha = torch.cholesky_solve((y - head.mean_const).unsqueeze(-1), L).squeeze(-1)
        return cls(head=head, Z=Z, y=y, L=L, alpha=alpha)

    @torch.no_grad()
    def mean_var(self, Zs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Latent posterior mean and variance (standardised units) at features Zs, chunked."""
        means, variances = [], []
        os = self.head.outputscale
        for start in range(0, Zs.shape[0], PREDICT_CHUNK):
            Ks = self.head.gram(Zs[start : start + PREDICT_CHUNK], self.Z)
            means.append(self.head.mean_const + Ks @ self.alpha)
            V = torch.linalg.solve_triangular(self.L, Ks.T, upper=False)
            variances.append((os - (V * V).sum(0)).clamp_min(1e-10 * float(os)))
        return torch.cat(means), torch.cat(variances)

    def _sample_joint(self, Zs: torch.Tensor, n_samples: int, rng: np.random.Generator) -> torch.Tensor:
        mean, _ = self.mean_var(Zs)
        Ks = self.head.gram(Zs, self.Z)
        V = torch.linalg.solve_triangular(self.L, Ks.T, upper=False)
        cov = self.head.gram(Zs, Zs) - V.T @ V
        Lc = cholesky_jitter(0.5 * (cov + cov.T))
        eps = torch.as_tensor(rng.standard_normal((Zs.shape[0], n_samples)), dtype=Zs.dtype, device=Zs.device)
        return (mean.unsqueeze(-1) + Lc @ eps).T

    def _sample_pathwise(self, Zs: torch.Tensor, n_samples: int, rng: np.random.Generator) -> torch.Tensor:
        """Matheron's rule (Wilson et al. 2020): a random-Fourier-feature prior sample,
        corrected by the exact data term. Joint across all m points at O(m · features)."""
        f = self.Z.shape[1]
        kw = {"dtype": Zs.dtype, "device": Zs.device}
        omega = rng.standard_normal((f, N_FOURIER_FEATURES))
        if self.head.kind == "matern52":  # spectral density of Matérn-5/2: Student-t, 5 dof
            omega = omega / np.sqrt(rng.chisquare(5.0, N_FOURIER_FEATURES) / 5.0)
        phase = rng.uniform(0.0, 2.0 * np.pi, N_FOURIER_FEATURES)
        w = rng.standard_normal((N_FOURIER_FEATURES, n_samples))
        eps = rng.standard_normal((self.Z.shape[0], n_samples))
        omega_t = torch.as_tensor(omega, **kw) / self.head.lengthscale.unsqueeze(-1)
        phase_t = torch.as_tensor(phase, **kw)
        amp = torch.sqrt(2.0 * self.head.outputscale / N_FOURIER_FEATURES)
        w_t = torch.as_tensor(w, **kw) * amp

        def prior(Z: torch.Tensor) -> torch.Tensor:
            return torch.cos(Z @ omega_t + phase_t) @ w_t

        resid = (self.y - self.head.mean_const).unsqueeze(-1) - prior(self.Z)
        resid = resid - torch.sqrt(self.head.noise) * torch.as_tensor(eps, **kw)
        v = torch.cholesky_solve(resid, self.L)
        out = []
        for start in range(0, Zs.shape[0], PREDICT_CHUNK):
            chunk = Zs[start : start + PREDICT_CHUNK]
            out.append(self.head.mean_const + prior(chunk) + self.head.gram(chunk, self.Z) @ v)
        return torch.cat(out).T


@dataclass
class Standardizer:
    """Column-wise affine standardisation, x_std = (x - mean) / scale."""

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, X: np.ndarray) -> Standardizer:
        scale = X.std(axis=0)
        scale = np.where(scale > 1e-12 * max(1.0, float(np.abs(X).max(initial=0.0))), scale, 1.0)
        return cls(mean=X.mean(axis=0), scale=scale)

    def __call__(self, X: np.ndarray) -> np.ndarray:
        return (X - self.mean) / self.scale


def as_matrix(X: np.ndarray, n_features: int | None = None) -> np.ndarray:
    """Validate a (n, d) float array; raises ValueError naming the problem."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (n, d), got shape {X.shape}")
    if n_features is not None and X.shape[1] != n_features:
        raise ValueError(f"X has {X.shape[1]} features, the model was fitted on {n_features}")
    if not np.all(np.isfinite(X)):
        raise ValueError("X contains NaN or inf")
    return X


class PosteriorModel:
    """Prediction, sampling and target units shared by ``ExactGP`` and ``DKL``.

    Subclasses fit ``_head`` and ``_post`` on standardised targets (``_y_mean``,
    ``_y_std``) and say what the kernel sees in ``_kernel_inputs``.
    """

    _head: GPHead | None
    _post: Posterior | None
    _y_mean: float
    _y_std: float

    def _kernel_inputs(self, X: np.ndarray) -> torch.Tensor:
        raise NotImplementedError

    def predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and latent variance at X, in the units of y."""
        Z = self._kernel_inputs(X)
        assert self._post is not None
        mean, var = self._post.mean_var(Z)
        return (
            mean.double().cpu().numpy() * self._y_std + self._y_mean,
            var.double().cpu().numpy() * self._y_std**2,
        )

    def sample(self, X: np.ndarray, n_samples: int, rng: np.random.Generator) -> np.ndarray:
        """(n_samples, m) joint posterior samples of the latent function at X."""
        Z = self._kernel_inputs(X)
        assert self._post is not None
        return self._post.sample(Z, n_samples, rng).double().cpu().numpy() * self._y_std + self._y_mean

    @property
    def target_scale(self) -> float:
        """Standard deviation of the training targets: one standardised unit, in y units."""
        return self._y_std

    @property
    def noise_variance(self) -> float:
        """Fitted observation-noise variance in the units of y²."""
        if self._head is None:
            raise RuntimeError(f"{type(self).__name__}: not fitted")
        return float(self._head.noise.detach()) * self._y_std**2
