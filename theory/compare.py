"""Model against measurement: rank simulated images against a measured patch; check spectra.

``rank_candidates`` aligns each simulated patch to the measured one (integer search of the
normalised cross-correlation over ±``max_shift_px``, then sub-pixel by a parabola through
the peak and cubic-spline resampling) and scores it by the zero-mean, unit-variance
normalised cross-correlation (NCC) on a region common to all candidates. Two
uncertainties, both paired (every candidate scored on the same draw), so the margin of the
best over the runner-up is their score difference over the spread of that difference:

- ``noise="poisson"`` (default; ``measured`` in detected counts): shot noise of the
  measurement, var = counts + read noise², propagated through the NCC's gradient
  (exact covariance to first order; draws for ``p_best``). How well the data separate
  the models.
- ``noise="blocks"``: block bootstrap; the region is cut into blocks of ``block_px``
  (bigger than the probe), resampled with replacement. Also counts model mismatch that
  varies over the field (unmodelled defects, drift), so it is more conservative: a lone
  point defect lives in a few blocks.

``check_edge_energy`` compares a measured core-loss edge onset with literature values;
``check_plasmon_scaling`` tests the longitudinal dipole red-shift of rods with aspect
ratio against the quasi-static Gans/Drude law, which makes 1/E² linear in (1/L − 1).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict
from scipy import ndimage, signal, stats

log = logging.getLogger(__name__)


class RankResult(BaseModel):
    """Candidate models scored against one measured patch, best first by ``best_index``."""

    model_config = ConfigDict(frozen=True)

    labels: list[str]
    scores: list[float]  # NCC (−1..1)
    uncertainties: list[float]  # bootstrap standard deviation of each score
    shifts_px: list[tuple[float, float]]  # (row, col) shift that aligned each candidate
    best_index: int
    runner_up_index: int | None
    margin_sigma: float | None  # (best − runner-up) / σ(best − runner-up); None for one candidate
    p_best: float  # fraction of bootstrap draws in which the best candidate stays best
    n_boot: int
    noise: Literal["poisson", "blocks"]
    statement: str

    @property
    def best_label(self) -> str:
        return self.labels[self.best_index]


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else 0.0


def _parabola_peak(fm: float, f0: float, fp: float) -> float:
    den = fm - 2 * f0 + fp
    return 0.0 if den >= 0 else float(np.clip(0.5 * (fm - fp) / den, -0.5, 0.5))


def _align(measured_roi: np.ndarray, cand: np.ndarray, origin: int, s: int) -> tuple[np.ndarray, tuple]:
    """Best (row, col) shift of ``cand`` onto the ROI, whose pixel (0, 0) is candidate pixel
    (origin, origin) unshifted, and the candidate resampled there."""
    h, w = measured_roi.shape
    sub = cand[origin - s : origin + s + h, origin - s : origin + s + w]
    r = measured_roi - measured_roi.mean()
    num = signal.correlate(sub, r, mode="valid", method="fft")  # (2s+1)²: Σ r · window
    csum = np.pad(sub, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    csq = np.pad(sub * sub, ((1, 0), (1, 0))).cumsum(0).cumsum(1)

    def window(c: np.ndarray) -> np.ndarray:
        return c[h:, w:] - c[:-h, w:] - c[h:, :-w] + c[:-h, :-w]

    var = window(csq) - window(csum) ** 2 / (h * w)
    grid = num / np.sqrt(np.maximum(var, 1e-300) * float((r * r).sum()))
    i, j = np.unravel_index(int(np.argmax(grid)), grid.shape)
    fy = _parabola_peak(grid[i - 1, j], grid[i, j], grid[i + 1, j]) if 0 < i < 2 * s else 0.0
    fx = _parabola_peak(grid[i, j - 1], grid[i, j], grid[i, j + 1]) if 0 < j < 2 * s else 0.0
    dy, dx = i - s + fy, j - s + fx
    rows = origin + dy + np.arange(h)[:, None] + np.zeros((1, w))
    cols = origin + dx + np.arange(w)[None, :] + np.zeros((h, 1))
    aligned = ndimage.map_coordinates(cand.astype(float), [rows, cols], order=3, mode="nearest")
    return aligned, (float(dy), float(dx))


def rank_candidates(
    measured: np.ndarray,
    candidates: Sequence[np.ndarray],
    *,
    labels: Sequence[str] | None = None,
    max_shift_px: int | None = None,
    n_boot: int = 200,
    noise: Literal["poisson", "blocks"] = "poisson",
    read_noise_counts: float = 0.0,
    block_px: int | None = None,
    seed: int = 0,
) -> RankResult:
    """Rank simulated patches against ``measured`` (same pixel size) by aligned NCC.

    A candidate is the measured shape or larger by the same even amount on every side
    (centred on it); it is shifted by at most ``max_shift_px`` (default 1/16 of the patch
    side; keep it below half the nearest column spacing, so no candidate can slide a
    defect onto another column). ``noise``: how the uncertainty is estimated (above);
    ``read_noise_counts`` adds to the Poisson variance. ``seed`` drives the draws.
    """
    m = np.asarray(measured, float)
    if m.ndim != 2 or min(m.shape) < 8:
        raise ValueError(f"measured must be a 2D patch of at least 8 × 8 pixels, got {m.shape}")
    if not candidates:
        raise ValueError("no candidates to rank")
    labels = list(labels) if labels is not None else [f"candidate {i}" for i in range(len(candidates))]
    if len(labels) != len(candidates):
        raise ValueError("one label per candidate")
    s = int(max_shift_px) if max_shift_px is not None else max(1, min(m.shape) // 16)
    pads = []
    for c in candidates:
        extra = np.subtract(np.shape(c), m.shape)
        if np.ndim(c) != 2 or extra[0] != extra[1] or extra[0] < 0 or extra[0] % 2:
            raise ValueError(f"candidate of shape {np.shape(c)} is not {m.shape} grown evenly on all sides")
        pads.append(int(extra[0]) // 2)
    border = max(0, s + 2 - min(pads))  # measured pixels every candidate can reach after shifting
    roi = m[border : m.shape[0] - border, border : m.shape[1] - border]
    if min(roi.shape) < 8:
        raise ValueError(f"max_shift_px={s} leaves too small a region to compare")
    aligned, shifts = [], []
    for c, pad in zip(candidates, pads, strict=True):
        a, sh = _align(roi, np.asarray(c, float), pad + border, s)
        aligned.append(a)
        shifts.append(sh)
    scores = np.array([_ncc(roi, a) for a in aligned])
    if noise == "poisson":
        boot, cov = _poisson_draws(roi, aligned, scores, n_boot, read_noise_counts, seed)
    elif noise == "blocks":
        boot = _block_bootstrap(roi, aligned, n_boot, block_px or max(4, min(roi.shape) // 8), seed)
        cov = np.atleast_2d(np.cov(boot, rowvar=False))
    else:
        raise ValueError(f"noise must be 'poisson' or 'blocks', not {noise!r}")
    order = np.argsort(-scores, kind="stable")
    best = int(order[0])
    runner = int(order[1]) if len(order) > 1 else None
    margin = None
    if runner is not None:
        spread = math.sqrt(max(float(cov[best, best] + cov[runner, runner] - 2 * cov[best, runner]), 0.0))
        diff = float(scores[best] - scores[runner])
        margin = diff / spread if spread > 0 else (1e9 if diff > 0 else 0.0)
    p_best = float(np.mean(np.argmax(boot, axis=1) == best))
    unc = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    result = RankResult(
        labels=labels,
        scores=[float(v) for v in scores],
        uncertainties=[float(v) for v in unc],
        shifts_px=shifts,
        best_index=best,
        runner_up_index=runner,
        margin_sigma=margin,
        p_best=p_best,
        n_boot=n_boot,
        noise=noise,
        statement=_rank_statement(labels, scores, unc, best, runner, margin, p_best, n_boot, noise),
    )
    log.debug("%s", result.statement)
    return result


def _poisson_draws(
    roi: np.ndarray, aligned: list[np.ndarray], scores: np.ndarray, n_boot: int, read: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Shot-noise covariance of the NCCs to first order, and (n_boot, K) Gaussian draws from it.

    With u = (m − m̄)/‖m − m̄‖ and v_k likewise, NCC_k = u·v_k and ∂NCC_k/∂m_i =
    (v_ki − NCC_k u_i)/‖m − m̄‖.
    """
    m = roi.ravel()
    dm = m - m.mean()
    norm_m = float(np.linalg.norm(dm))
    if norm_m == 0:
        raise ValueError("the measured patch is flat")
    u = dm / norm_m
    grads = []
    for a, score in zip(aligned, scores, strict=True):
        da = a.ravel() - a.mean()
        v = da / max(float(np.linalg.norm(da)), 1e-300)
        grads.append((v - score * u) / norm_m)
    g = np.array(grads)  # (K, N)
    sd = np.sqrt(np.clip(m, 0.0, None) + read**2)
    gs = g * sd
    cov = gs @ gs.T
    xi = np.random.default_rng(seed).standard_normal((max(n_boot, 2), len(m)))
    return scores + (xi @ gs.T), cov


def _block_bootstrap(
    roi: np.ndarray, aligned: list[np.ndarray], n_boot: int, block: int, seed: int
) -> np.ndarray:
    """(n_boot, n_candidates) NCCs recomputed on block-resampled pixels (same draw for all)."""
    h, w = roi.shape
    by, bx = np.arange(h) // block, np.arange(w) // block
    label = (by[:, None] * (bx.max() + 1) + bx[None, :]).ravel()
    nb = int(label.max()) + 1
    x = roi.ravel()

    def sums(v: np.ndarray) -> np.ndarray:
        return np.bincount(label, v, minlength=nb)

    n, sx, sxx = sums(np.ones_like(x)), sums(x), sums(x * x)
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(nb, np.full(nb, 1.0 / nb), size=max(n_boot, 2)).astype(float)
    N, SX, SXX = weights @ n, weights @ sx, weights @ sxx
    out = np.empty((len(weights), len(aligned)))
    for k, a in enumerate(aligned):
        y = a.ravel()
        SY, SYY, SXY = weights @ sums(y), weights @ sums(y * y), weights @ sums(x * y)
        cov = SXY - SX * SY / N
        var = (SXX - SX**2 / N) * (SYY - SY**2 / N)
        out[:, k] = cov / np.sqrt(np.maximum(var, 1e-300))
    return out


def _rank_statement(labels, scores, unc, best, runner, margin, p_best, n_boot, noise) -> str:
    head = f"'{labels[best]}' matches the measured patch best (NCC {scores[best]:.3f} ± {unc[best]:.3f})"
    if runner is None:
        return head + "; it was the only candidate."
    return (
        f"{head}, {margin:.1f} σ above the runner-up '{labels[runner]}' (NCC {scores[runner]:.3f} ± "
        f"{unc[runner]:.3f}); it stays best in {100 * p_best:.0f}% of {n_boot} "
        f"{'shot-noise' if noise == 'poisson' else 'block-bootstrap'} draws among {len(labels)} candidates."
    )


# ----------------------------------------------------------------------------- spectra
class SpectralCheck(BaseModel):
    """A spectral hypothesis checked against physics: pass/fail, residuals and a citable sentence."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["edge_onset", "plasmon_scaling"]
    passed: bool
    measured: list[float]
    expected: list[float]
    residuals: list[float]  # measured − expected (eV)
    tolerance_eV: float
    details: dict[str, float]
    statement: str
    source: str


class EdgeReference(BaseModel):
    model_config = ConfigDict(frozen=True)

    element: str
    edge: str
    onset_eV: float
    state: str = ""  # valence or compound the value refers to
    source: str


_ATLAS = "Ahn & Krivanek, EELS Atlas (Gatan/ASU, 1983)"
_OHTOMO = "Ohtomo, Muller, Grazul & Hwang, Nature 419, 378 (2002); Ti3+ ~1.5–2 eV below Ti4+"
#: literature edge onsets (eV): EELS Atlas values; Ti valences from the LaTiO3/SrTiO3 literature
EDGE_TABLE: tuple[EdgeReference, ...] = (
    EdgeReference(element="B", edge="K", onset_eV=188.0, source=_ATLAS),
    EdgeReference(element="C", edge="K", onset_eV=284.0, source=_ATLAS),
    EdgeReference(element="N", edge="K", onset_eV=401.0, source=_ATLAS),
    EdgeReference(element="O", edge="K", onset_eV=532.0, source=_ATLAS),
    EdgeReference(element="Si", edge="L2,3", onset_eV=99.0, source=_ATLAS),
    EdgeReference(element="S", edge="L2,3", onset_eV=165.0, source=_ATLAS),
    EdgeReference(element="Se", edge="M2,3", onset_eV=162.0, source=_ATLAS),
    EdgeReference(element="Ca", edge="L2,3", onset_eV=346.0, source=_ATLAS),
    EdgeReference(element="Ag", edge="M4,5", onset_eV=367.0, source=_ATLAS + " (delayed)"),
    EdgeReference(element="Mo", edge="M4,5", onset_eV=227.0, source=_ATLAS + " (delayed)"),
    EdgeReference(element="Mo", edge="M3", onset_eV=392.0, source=_ATLAS),
    EdgeReference(element="W", edge="N4,5", onset_eV=245.0, source=_ATLAS + " (delayed)"),
    EdgeReference(element="Ti", edge="L3", onset_eV=456.0, state="Ti4+", source=_ATLAS + "; SrTiO3"),
    EdgeReference(element="Ti", edge="L3", onset_eV=455.0, state="Ti3+", source=_OHTOMO),
    EdgeReference(element="Ti", edge="L2", onset_eV=462.0, state="Ti4+", source=_ATLAS),
    EdgeReference(element="Mn", edge="L3", onset_eV=640.0, source=_ATLAS),
    EdgeReference(element="Fe", edge="L3", onset_eV=708.0, source=_ATLAS),
    EdgeReference(element="Co", edge="L3", onset_eV=779.0, source=_ATLAS),
    EdgeReference(element="Ni", edge="L3", onset_eV=855.0, source=_ATLAS),
    EdgeReference(element="La", edge="M5", onset_eV=832.0, source=_ATLAS),
    EdgeReference(element="La", edge="M4", onset_eV=849.0, source=_ATLAS),
    EdgeReference(element="Sr", edge="L3", onset_eV=1940.0, source=_ATLAS),
)


def _norm_edge(edge: str) -> str:
    return edge.replace(" ", "").replace("_", "").upper()


def edge_references(element: str, edge: str) -> list[EdgeReference]:
    """Table entries for ``element`` and ``edge`` (``"L2,3"``, ``"L23"``, ``"m45"`` all match);
    ``L3``/``M5`` also match their ``L2,3``/``M4,5`` entry and vice versa."""
    want = _norm_edge(edge).replace(",", "")
    out = []
    for ref in EDGE_TABLE:
        if ref.element.lower() != element.lower():
            continue
        have = _norm_edge(ref.edge).replace(",", "")
        shell, sub = have[0], have[1:]
        if want == have or (want[0] == shell and (want[1:] in sub or sub in want[1:])):
            out.append(ref)
    return out


def check_edge_energy(
    measured_onset_eV: float,
    element: str,
    edge: str,
    *,
    state: str | None = None,
    tolerance_eV: float = 2.0,
) -> SpectralCheck:
    """Is a measured edge onset where ``element``'s ``edge`` should be (within ``tolerance_eV``)?

    ``state`` (e.g. ``"Ti3+"``) picks one valence; otherwise the nearest table entry is used
    and named. Raises ``KeyError`` for an edge the table does not hold.
    """
    refs = edge_references(element, edge)
    if state is not None:
        refs = [r for r in refs if r.state == state]
    if not refs:
        raise KeyError(f"no literature onset for {element} {edge}{f' ({state})' if state else ''}")
    ref = min(refs, key=lambda r: abs(measured_onset_eV - r.onset_eV))
    resid = float(measured_onset_eV - ref.onset_eV)
    passed = abs(resid) <= tolerance_eV
    name = f"{ref.element} {ref.edge}" + (f" ({ref.state})" if ref.state else "")
    verdict = "consistent with" if passed else "inconsistent with"
    statement = (
        f"The onset at {measured_onset_eV:.1f} eV is {verdict} {name} at {ref.onset_eV:.1f} eV "
        f"(residual {resid:+.1f} eV, tolerance ±{tolerance_eV:.1f} eV; {ref.source})."
    )
    others = {f"alt_{r.state or r.edge}_eV": r.onset_eV for r in refs if r is not ref}
    return SpectralCheck(
        kind="edge_onset",
        passed=passed,
        measured=[float(measured_onset_eV)],
        expected=[ref.onset_eV],
        residuals=[resid],
        tolerance_eV=tolerance_eV,
        details=others,
        statement=statement,
        source=ref.source,
    )


def depolarisation_prolate(aspect_ratio: float) -> float:
    """Depolarisation factor L along the long axis of a prolate spheroid (Bohren & Huffman eq. 5.33)."""
    if aspect_ratio <= 1.0 + 1e-9:
        return 1.0 / 3.0
    e = math.sqrt(1.0 - 1.0 / aspect_ratio**2)
    return (1 - e**2) / e**2 * (-1 + math.log((1 + e) / (1 - e)) / (2 * e))


def check_plasmon_scaling(
    aspect_ratios: Sequence[float],
    energies_eV: Sequence[float],
    *,
    tolerance_eV: float = 0.1,
    min_sigma: float = 3.0,
) -> SpectralCheck:
    """Do rod longitudinal-dipole energies red-shift with aspect ratio as Gans/Drude predicts?

    Quasi-static Drude metal (ε = ε∞ − ωp²/ω²) in a medium ε_m: E = ωp / √(ε∞ + ε_m (1/L − 1)),
    so 1/E² = ε∞/ωp² + (ε_m/ωp²)(1/L − 1) with L the prolate depolarisation factor (Gans
    1912; Bohren & Huffman, Absorption and Scattering of Light by Small Particles, §5.3).
    Passes when the fitted slope is positive by ``min_sigma`` standard errors (exact data:
    positive), energies fall monotonically with aspect ratio (Spearman ρ < 0) and the fit's
    RMS energy residual is within ``tolerance_eV``. Needs at least three rods.
    """
    ar = np.asarray(aspect_ratios, float)
    e = np.asarray(energies_eV, float)
    if ar.shape != e.shape or ar.size < 3:
        raise ValueError("need at least three (aspect ratio, energy) pairs")
    if np.any(ar < 1) or np.any(e <= 0):
        raise ValueError("aspect ratios must be ≥ 1 and energies positive")
    x = np.array([1.0 / depolarisation_prolate(a) - 1.0 for a in ar])
    y = 1.0 / e**2
    design = np.column_stack([np.ones_like(x), x])
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    intercept, slope = (float(v) for v in coef)
    fit_y = design @ coef
    dof = ar.size - 2
    if dof > 0:
        s2 = float(np.sum((y - fit_y) ** 2) / dof)
        cov = s2 * np.linalg.inv(design.T @ design)
        slope_se = math.sqrt(max(float(cov[1, 1]), 0.0))
    else:
        slope_se = 0.0
    slope_sigma = slope / slope_se if slope_se > 0 else (math.inf if slope > 0 else -math.inf)
    expected = 1.0 / np.sqrt(np.clip(fit_y, 1e-12, None))
    resid = e - expected
    rms = float(np.sqrt(np.mean(resid**2)))
    rho = float(stats.spearmanr(ar, e).statistic) if np.ptp(ar) > 0 else 0.0
    passed = slope > 0 and slope_sigma >= min_sigma and rho < 0 and rms <= tolerance_eV
    why = (
        "red-shifts with aspect ratio as the Gans/Drude law predicts"
        if passed
        else "does not follow the Gans/Drude red-shift"
    )
    statement = (
        f"The rod dipole energy {why}: 1/E² vs (1/L − 1) has slope {slope:.4f} eV⁻² "
        f"({slope_sigma:.1f} σ), Spearman ρ = {rho:.2f}, RMS residual {rms:.3f} eV "
        f"(tolerance {tolerance_eV:.2f} eV) over {ar.size} rods."
    )
    return SpectralCheck(
        kind="plasmon_scaling",
        passed=bool(passed),
        measured=[float(v) for v in e],
        expected=[float(v) for v in expected],
        residuals=[float(v) for v in resid],
        tolerance_eV=tolerance_eV,
        details={
            "slope_per_eV2": slope,
            "slope_sigma": float(slope_sigma) if math.isfinite(slope_sigma) else 1e9,
            "intercept_per_eV2": intercept,
            "eps_inf_over_wp2_per_eV2": intercept,
            "spearman_rho": rho,
            "rms_residual_eV": rms,
        },
        statement=statement,
        source="Gans, Ann. Phys. 342, 881 (1912); Bohren & Huffman (1983) §5.3",
    )
