"""Sparse Gaussian processes: Titsias' collapsed variational bound (SGPR) on inducing points.

The exact marginal likelihood costs O(n³) per evaluation and the exact posterior O(n²) per
predicted point; beyond a thousand or so observations the exact fit stops keeping up with
a campaign. SGPR (Titsias 2009) replaces the n training values by m ≪ n inducing values
u = f(U) and maximises a lower bound on the log marginal likelihood in closed form:

    log p(y) ≥ log N(y | m, Q + σ²I) − tr(K − Q) / (2σ²),    Q = K_fu K_uu⁻¹ K_uf,

at O(n m²) per evaluation; the posterior costs O(m) (mean) and O(m²) (variance) per point.
With U = all training inputs the bound *is* the exact marginal likelihood and the posterior
the exact one.

This module works on the same ``GPHead`` as the exact GP (same hyperparameters, same priors,
same re-expression when the standardisation moves), so a model can switch between the exact
and the sparse loss from one fit to the next and keep its warm start — DKL keeps its AdamW
state too. The inducing points are a subset of the training inputs chosen by greedy
variance selection (a pivoted Cholesky of the kernel matrix, Burt et al. 2020): each next
point is the one the previous ones explain worst under the current kernel. It is
deterministic (the first pivot from the seed) and stops early once every training point is
explained to within the precision's tolerance. ``ExactGP`` may additionally learn them. A
warm refit keeps the previous inducing inputs until the data have grown by
``RESELECT_GROWTH``: re-choosing them at every fit moves the bound being optimised, and the
refit then needs several times the iterations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from autoscope.tools.ml.kernels import (
    N_FOURIER_FEATURES,
    PREDICT_CHUNK,
    GPHead,
    JointOrPathwise,
    cholesky_jitter,
)

#: most inducing points per fit (O(n m²) per loss evaluation, O(m²) per predicted point)
INDUCING = 512
#: the exact head is used up to this many observations, the sparse head beyond: where the
#: sparse step (≤ INDUCING points) gets faster than the exact one (``autoscope bench growth``)
SPARSE_ABOVE = 1000
#: warm fits keep the previous inducing inputs (so the bound they optimise moves only by the
#: new points) until the observations have grown by this fraction since they were chosen
RESELECT_GROWTH = 0.1


def keep_inducing(previous: np.ndarray | None, chosen_at: int, n: int, d: int, m: int) -> bool:
    """Whether a warm fit on n observations of d features keeps the previous inducing inputs:
    a full set (m of them) on the same features, chosen at most ``RESELECT_GROWTH`` ago."""
    return previous is not None and previous.shape == (m, d) and n <= (1.0 + RESELECT_GROWTH) * chosen_at


def _jitter(dtype: torch.dtype) -> float:
    """Relative diagonal jitter of K_uu (keeps its Cholesky factor well defined)."""
    return 1e-8 if dtype == torch.float64 else 1e-5


def _select_tol(dtype: torch.dtype) -> float:
    """Residual prior variance (relative to the outputscale) below which a point counts as explained."""
    return 1e-10 if dtype == torch.float64 else 1e-4


@torch.no_grad()
def select_inducing(head: GPHead, Z: torch.Tensor, m: int, seed: int = 0) -> torch.Tensor:
    """Indices of at most ``m`` inducing points among the rows of Z (greedy variance selection).

    A pivoted Cholesky factorisation of the kernel matrix, stopped after ``m`` pivots or once
    the largest remaining conditional variance falls below the tolerance. O(n m²) time,
    O(n m) memory. With m ≥ n every row is returned, in order (the sparse GP is then exact).
    """
    n = Z.shape[0]
    if m >= n:
        return torch.arange(n, device=Z.device)
    os = head.outputscale
    resid = torch.full((n,), float(os), dtype=Z.dtype, device=Z.device)  # stationary: k(x, x) = os
    rows = torch.zeros((m, n), dtype=Z.dtype, device=Z.device)
    chosen: list[int] = []
    j = int(np.random.default_rng(seed).integers(n))
    tol = _select_tol(Z.dtype) * float(os)
    for i in range(m):
        kj = head.gram(Z[j : j + 1], Z)[0]
        e = (kj - rows[:i, j] @ rows[:i]) / torch.sqrt(resid[j])
        rows[i] = e
        resid = (resid - e * e).clamp_min(0.0)
        chosen.append(j)
        resid[chosen] = -1.0  # never picked twice (round-off can leave a positive residual)
        j = int(torch.argmax(resid))
        if float(resid[j]) <= tol:
            break
    return torch.as_tensor(chosen, device=Z.device)


def _factors(
    head: GPHead, Z: torch.Tensor, U: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(L_uu, A = L_uu⁻¹ K_uf / σ, L_B with B = I + A Aᵀ, σ²): the shared O(n m²) part."""
    m = U.shape[0]
    eye = torch.eye(m, dtype=Z.dtype, device=Z.device)
    noise = head.noise
    Luu = cholesky_jitter(head.gram(U, U) + (_jitter(Z.dtype) * head.outputscale) * eye)
    A = torch.linalg.solve_triangular(Luu, head.gram(U, Z), upper=False) / torch.sqrt(noise)
    LB = cholesky_jitter(eye + A @ A.T)
    return Luu, A, LB, noise


def collapsed_bound(head: GPHead, Z: torch.Tensor, y: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    """Titsias' collapsed lower bound on log p(y) (standardised targets) for inducing inputs U."""
    n = Z.shape[0]
    Luu, A, LB, noise = _factors(head, Z, U)
    r = y - head.mean_const
    c = torch.linalg.solve_triangular(LB, (A @ r).unsqueeze(-1), upper=False).squeeze(-1) / torch.sqrt(noise)
    # tr(K − Q) / σ² = n·os/σ² − ‖A‖²; ≥ 0 in exact arithmetic, clamped against round-off
    trace = (n * head.outputscale / noise - (A * A).sum()).clamp_min(0.0)
    return (
        -0.5 * n * math.log(2 * math.pi)
        - torch.log(LB.diagonal()).sum()
        - 0.5 * n * torch.log(noise)
        - 0.5 * (r @ r) / noise
        + 0.5 * (c @ c)
        - 0.5 * trace
    )


def sparse_loss(head: GPHead, Z: torch.Tensor, y: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    """Negative (collapsed bound + log prior), divided by n: ``GPHead.loss``'s sparse counterpart."""
    return -(collapsed_bound(head, Z, y, U) + head.log_prior()) / Z.shape[0]


@dataclass
class SparsePosterior(JointOrPathwise):
    """The SGPR posterior q(f) = ∫ p(f | u) q(u) du, cached for fast prediction.

    q(u) = N(K_uu w, L_uu L_B⁻ᵀ L_B⁻¹ L_uuᵀ); mean(x) = k(x, U) w and
    var(x) = k(x, x) − ‖L_uu⁻¹ k(U, x)‖² + ‖L_B⁻¹ L_uu⁻¹ k(U, x)‖².
    """

    head: GPHead
    U: torch.Tensor  # (m, f) inducing inputs
    Luu: torch.Tensor
    LB: torch.Tensor
    w: torch.Tensor  # (m,) K_uu⁻¹ E[u]

    @classmethod
    @torch.no_grad()
    def build(cls, head: GPHead, Z: torch.Tensor, y: torch.Tensor, U: torch.Tensor) -> SparsePosterior:
        Luu, A, LB, noise = _factors(head, Z, U)
        c = torch.linalg.solve_triangular(LB, (A @ (y - head.mean_const)).unsqueeze(-1), upper=False)
        v = torch.linalg.solve_triangular(LB.T, c / torch.sqrt(noise), upper=True)
        w = torch.linalg.solve_triangular(Luu.T, v, upper=True).squeeze(-1)
        return cls(head=head, U=U.detach(), Luu=Luu, LB=LB, w=w)

    @property
    def n_inducing(self) -> int:
        return int(self.U.shape[0])

    def _solves(self, Zs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        Kus = self.head.gram(self.U, Zs)
        T1 = torch.linalg.solve_triangular(self.Luu, Kus, upper=False)
        return Kus, T1, torch.linalg.solve_triangular(self.LB, T1, upper=False)

    @torch.no_grad()
    def mean_var(self, Zs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Latent posterior mean and variance (standardised units) at features Zs, chunked."""
        means, variances = [], []
        os = self.head.outputscale
        for start in range(0, Zs.shape[0], PREDICT_CHUNK):
            Kus, T1, T2 = self._solves(Zs[start : start + PREDICT_CHUNK])
            means.append(self.head.mean_const + Kus.T @ self.w)
            variances.append((os - (T1 * T1).sum(0) + (T2 * T2).sum(0)).clamp_min(1e-10 * float(os)))
        return torch.cat(means), torch.cat(variances)

    def _sample_joint(self, Zs: torch.Tensor, n_samples: int, rng: np.random.Generator) -> torch.Tensor:
        mean, _ = self.mean_var(Zs)
        _, T1, T2 = self._solves(Zs)
        cov = self.head.gram(Zs, Zs) - T1.T @ T1 + T2.T @ T2
        Lc = cholesky_jitter(0.5 * (cov + cov.T))
        eps = torch.as_tensor(rng.standard_normal((Zs.shape[0], n_samples)), dtype=Zs.dtype, device=Zs.device)
        return (mean.unsqueeze(-1) + Lc @ eps).T

    def _sample_pathwise(self, Zs: torch.Tensor, n_samples: int, rng: np.random.Generator) -> torch.Tensor:
        """Decoupled pathwise sampling (Wilson et al. 2020): a random-Fourier-feature prior
        sample f₀, an inducing sample u ~ q(u), and f = f₀ + k(·, U) K_uu⁻¹ (u − f₀(U))."""
        f, m = self.U.shape[1], self.U.shape[0]
        kw = {"dtype": Zs.dtype, "device": Zs.device}
        omega = rng.standard_normal((f, N_FOURIER_FEATURES))
        if self.head.kind == "matern52":  # spectral density of Matérn-5/2: Student-t, 5 dof
            omega = omega / np.sqrt(rng.chisquare(5.0, N_FOURIER_FEATURES) / 5.0)
        phase = rng.uniform(0.0, 2.0 * np.pi, N_FOURIER_FEATURES)
        w = rng.standard_normal((N_FOURIER_FEATURES, n_samples))
        eps = torch.as_tensor(rng.standard_normal((m, n_samples)), **kw)
        omega_t = torch.as_tensor(omega, **kw) / self.head.lengthscale.unsqueeze(-1)
        phase_t = torch.as_tensor(phase, **kw)
        w_t = torch.as_tensor(w, **kw) * torch.sqrt(2.0 * self.head.outputscale / N_FOURIER_FEATURES)

        def prior(Z: torch.Tensor) -> torch.Tensor:
            return torch.cos(Z @ omega_t + phase_t) @ w_t

        # u = E[u] + L_uu L_B⁻ᵀ ε, E[u] = K_uu w
        mean_u = self.Luu @ (self.Luu.T @ self.w)
        u = mean_u.unsqueeze(-1) + self.Luu @ torch.linalg.solve_triangular(self.LB.T, eps, upper=True)
        v = torch.cholesky_solve(u - prior(self.U), self.Luu)
        out = []
        for start in range(0, Zs.shape[0], PREDICT_CHUNK):
            chunk = Zs[start : start + PREDICT_CHUNK]
            out.append(self.head.mean_const + prior(chunk) + self.head.gram(chunk, self.U) @ v)
        return torch.cat(out).T
