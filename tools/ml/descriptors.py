"""Structural descriptors: one feature vector per candidate position of a survey image.

A campaign measures spectra only at candidate positions, a regular grid of pixels of
the survey image (``candidate_grid``). Each candidate is described by the image patch
around it (``extract_patches``), normalised, optionally turned into rotation-invariant ring
harmonics (``ring_harmonics``), and compressed by PCA (``PatchFeaturizer``). The surrogate
model learns descriptor → scalarized spectrum.

Coordinates: ``rows``/``cols`` index the survey image (row = y); ``xy_nm`` are
sample-frame positions where the probe goes. Drift correction moves ``xy_nm`` only
(``CandidateGrid.shifted``): the descriptors stay those of the survey features.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Literal

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from pydantic import BaseModel, ConfigDict, Field

from autoscope.instruments.records import ImageRecord

log = logging.getLogger(__name__)

_EPS = 1e-12


@dataclasses.dataclass(frozen=True)
class CandidateGrid:
    """Candidate positions: survey-image pixels (``rows``, ``cols``) and where to aim the probe (``xy_nm``)."""

    rows: np.ndarray  # (m,) int, survey-image row of each candidate
    cols: np.ndarray  # (m,) int, survey-image column of each candidate
    xy_nm: np.ndarray  # (m, 2) float64, sample-frame (x_nm, y_nm) to measure at
    stride_px: int

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def shifted(self, dx_nm: float, dy_nm: float) -> CandidateGrid:
        """The same candidates re-aimed after the content moved by (dx_nm, dy_nm) (drift correction)."""
        xy = self.xy_nm + np.array([float(dx_nm), float(dy_nm)])
        return dataclasses.replace(self, xy_nm=xy)

    def nearest(self, x_nm: float, y_nm: float) -> int:
        """Index of the candidate whose current ``xy_nm`` is closest to (x_nm, y_nm)."""
        d2 = (self.xy_nm[:, 0] - x_nm) ** 2 + (self.xy_nm[:, 1] - y_nm) ** 2
        return int(np.argmin(d2))


def candidate_grid(image: ImageRecord, stride_px: int, margin_px: int) -> CandidateGrid:
    """A regular grid of candidates every ``stride_px`` pixels, ``margin_px`` away from the image border.

    The grid is centred in the usable area of each axis, so every border keeps at least
    ``margin_px``; a rectangular image gets a rectangular grid, each candidate on a pixel centre.
    """
    if stride_px < 1:
        raise ValueError(f"stride_px must be >= 1, got {stride_px}")
    if margin_px < 0:
        raise ValueError(f"margin_px must be >= 0, got {margin_px}")
    n_rows, n_cols = image.data.shape

    def axis(size: int) -> np.ndarray:
        usable = size - 1 - 2 * margin_px
        if usable < 0:
            raise ValueError(f"margin_px={margin_px} leaves no pixels in a {n_rows}×{n_cols} image")
        n = usable // stride_px + 1
        return margin_px + (usable - (n - 1) * stride_px) // 2 + stride_px * np.arange(n)

    rr, cc = np.meshgrid(axis(n_rows), axis(n_cols), indexing="ij")
    rows, cols = rr.ravel().astype(np.int64), cc.ravel().astype(np.int64)
    p = image.pixel_size_nm
    x0, y0 = image.origin_nm
    x = x0 + (cols + 0.5) * p
    y = y0 + (rows + 0.5) * p
    return CandidateGrid(rows=rows, cols=cols, xy_nm=np.column_stack([x, y]), stride_px=int(stride_px))


def extract_patches(data: np.ndarray, rows: np.ndarray, cols: np.ndarray, window_px: int) -> np.ndarray:
    """(m, window_px²) float64 patches centred on (rows[i], cols[i]); reflect-padded at the borders.

    For an even window the centre pixel is at index ``window_px // 2`` of the patch.
    """
    img = np.asarray(data, dtype=np.float64)
    if img.ndim != 2:
        raise ValueError(f"data must be a 2-D image, got shape {img.shape}")
    if window_px < 1:
        raise ValueError(f"window_px must be >= 1, got {window_px}")
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    if rows.shape != cols.shape:
        raise ValueError("rows and cols must have the same shape")
    if rows.size and (
        rows.min() < 0 or rows.max() >= img.shape[0] or cols.min() < 0 or cols.max() >= img.shape[1]
    ):
        raise ValueError("a patch centre lies outside the image")
    half = window_px // 2
    pad_mode = "reflect" if half < min(img.shape) else "symmetric"
    padded = np.pad(img, ((half, window_px - 1 - half), (half, window_px - 1 - half)), mode=pad_mode)
    view = sliding_window_view(padded, (window_px, window_px))
    return view[rows.ravel(), cols.ravel()].reshape(rows.size, window_px * window_px).copy()


def in_field(image: ImageRecord, xy_nm: np.ndarray) -> np.ndarray:
    """Boolean mask: which sample-frame points fall on a pixel of ``image``."""
    rc = _nearest_pixels(image, xy_nm)
    n_rows, n_cols = image.data.shape
    return (rc[:, 0] >= 0) & (rc[:, 0] < n_rows) & (rc[:, 1] >= 0) & (rc[:, 1] < n_cols)


def _nearest_pixels(image: ImageRecord, xy_nm: np.ndarray) -> np.ndarray:
    xy = np.atleast_2d(np.asarray(xy_nm, dtype=np.float64))
    p = image.pixel_size_nm
    x0, y0 = image.origin_nm
    row = (xy[:, 1] - y0) / p - 0.5
    col = (xy[:, 0] - x0) / p - 0.5
    return np.column_stack([np.rint(row), np.rint(col)]).astype(np.int64)


def patches_at_nm(image: ImageRecord, xy_nm: np.ndarray, window_px: int) -> np.ndarray:
    """Patches of ``image`` centred on the pixel nearest to each sample-frame point (no interpolation).

    Raises ``ValueError`` when a point falls outside the image (see ``in_field``).
    """
    rc = _nearest_pixels(image, xy_nm)
    inside = in_field(image, xy_nm)
    if not inside.all():
        raise ValueError(f"{int((~inside).sum())} of {inside.size} points lie outside the image field")
    return extract_patches(image.data, rc[:, 0], rc[:, 1], window_px)


def _principal_axes(zc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(variances, axes as rows), largest first, of centred data ``zc`` (m, D).

    Symmetric eigendecomposition of the smaller of the covariance (D×D) and Gram (m×m)
    matrices: the same axes as an SVD at a fraction of the cost.
    """
    m, dim = zc.shape
    if m >= dim:
        w, v = np.linalg.eigh(zc.T @ zc)
        order = np.argsort(w)[::-1]
        return np.clip(w[order], 0.0, None), v[:, order].T
    w, u = np.linalg.eigh(zc @ zc.T)
    order = np.argsort(w)[::-1]
    w, u = np.clip(w[order], 0.0, None), u[:, order]
    keep = w > _EPS * max(float(w[0]), _EPS)
    axes = (zc.T @ u[:, keep]) / np.sqrt(w[keep])
    return w[keep], axes.T


class PatchSpec(BaseModel):
    """How candidate patches become descriptors."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    window_px: int = Field(16, ge=2, le=256, description="side of the square patch (pixels)")
    normalize: Literal["global", "per_patch"] = Field(
        "global",
        description="global: z-score with the fit image's mean/std (keeps brightness); "
        "per_patch: each patch to zero mean, unit std (shape only)",
    )
    descriptor: Literal["pixels", "rings"] = Field(
        "pixels",
        description="pixels: the normalised patch itself; rings: rotation-invariant angular-harmonic "
        "magnitudes on rings around the patch centre (see ring_harmonics)",
    )
    pca_components: int | None = Field(32, ge=1, description="PCA dimensions; None keeps all features")


RING_ANGLES = 24
RING_HARMONICS = 6


def ring_harmonics(
    z: np.ndarray, window_px: int, n_angles: int = RING_ANGLES, harmonics: int = RING_HARMONICS
) -> np.ndarray:
    """Rotation-invariant descriptors of (m, window_px²) patches: (m, 1 + n_rings·(harmonics+1)).

    The patch is sampled (bilinear) on rings of radius 1, 2, … px around its centre pixel
    (index ``window_px // 2``), as far as the patch reaches, at ``n_angles`` angles; each
    ring contributes the magnitudes of its angular Fourier harmonics 0…``harmonics``
    (mean level, then one-, two-, …-fold angular structure), the centre its value. A
    rotation of the sample about the centre only shifts the phases, so a rod tip or a
    prism corner looks the same in any orientation — what sets a plasmon hot spot is the
    local shape, not its angle in the image.
    """
    x = np.asarray(z, dtype=np.float64).reshape(-1, window_px, window_px)
    c = window_px // 2
    radii = np.arange(1, min(c, window_px - 1 - c) + 1, dtype=np.float64)
    theta = 2 * np.pi * np.arange(n_angles) / n_angles
    r = c + radii[:, None] * np.sin(theta)[None, :]  # (n_rings, n_angles), row coordinate
    q = c + radii[:, None] * np.cos(theta)[None, :]
    r0 = np.clip(np.floor(r).astype(np.int64), 0, window_px - 2)
    q0 = np.clip(np.floor(q).astype(np.int64), 0, window_px - 2)
    fr, fq = r - r0, q - q0
    ring = (
        x[:, r0, q0] * (1 - fr) * (1 - fq)
        + x[:, r0 + 1, q0] * fr * (1 - fq)
        + x[:, r0, q0 + 1] * (1 - fr) * fq
        + x[:, r0 + 1, q0 + 1] * fr * fq
    )  # (m, n_rings, n_angles)
    mags = np.abs(np.fft.rfft(ring, axis=2))[:, :, : harmonics + 1] / n_angles
    return np.concatenate([x[:, c, c][:, None], mags.reshape(x.shape[0], -1)], axis=1)


class PatchFeaturizer:
    """Normalise patches and project them on the principal components of the fit set.

    The normalisation statistics and components come from ``fit`` only, so patches of a
    later image of the same sample taken with the same dose per pixel land in the same
    feature space. Counts are not rescaled by dose: a different dwell or current gives
    different features (which the OOD monitor is meant to notice).
    Deterministic: exact eigendecomposition, component signs fixed so the largest loading is positive.
    """

    def __init__(self, spec: PatchSpec | None = None) -> None:
        self.spec = spec or PatchSpec()
        self._mean_px: float | None = None
        self._std_px: float | None = None
        self._center: np.ndarray | None = None
        self.components_: np.ndarray | None = None  # (d, window²)
        self.explained_variance_ratio_: np.ndarray | None = None

    @property
    def n_features(self) -> int:
        if self._center is None:
            raise RuntimeError("PatchFeaturizer is not fitted")
        return self._center.size if self.components_ is None else self.components_.shape[0]

    def _check(self, patches: np.ndarray) -> np.ndarray:
        x = np.asarray(patches, dtype=np.float64)
        w2 = self.spec.window_px**2
        if x.ndim != 2 or x.shape[1] != w2:
            raise ValueError(f"patches must be (m, {w2}) for window_px={self.spec.window_px}, got {x.shape}")
        return x

    def _normalise(self, x: np.ndarray) -> np.ndarray:
        """Normalised patches, as ring harmonics when the spec asks for them."""
        if self.spec.normalize == "per_patch":
            mu = x.mean(axis=1, keepdims=True)
            sd = x.std(axis=1, keepdims=True)
            z = (x - mu) / np.maximum(sd, _EPS)
        else:
            z = (x - self._mean_px) / self._std_px
        return ring_harmonics(z, self.spec.window_px) if self.spec.descriptor == "rings" else z

    def fit(self, patches: np.ndarray) -> PatchFeaturizer:
        x = self._check(patches)
        if x.shape[0] < 2:
            raise ValueError("fit needs at least 2 patches")
        self._mean_px = float(x.mean())
        self._std_px = float(max(x.std(), _EPS))
        z = self._normalise(x)
        self._center = z.mean(axis=0)
        k = self.spec.pca_components
        if k is None:
            self.components_ = None
            self.explained_variance_ratio_ = None
            return self
        zc = z - self._center
        var, comps = _principal_axes(zc)
        k = min(k, comps.shape[0])
        comps = comps[:k]
        signs = np.sign(comps[np.arange(k), np.argmax(np.abs(comps), axis=1)])
        self.components_ = comps * np.where(signs == 0, 1.0, signs)[:, None]
        self.explained_variance_ratio_ = var[:k] / max(var.sum(), _EPS)
        log.debug(
            "patch PCA: %d components keep %.1f%% of the variance",
            k,
            100 * self.explained_variance_ratio_.sum(),
        )
        return self

    def transform(self, patches: np.ndarray) -> np.ndarray:
        """(m, d) float64 descriptors."""
        if self._center is None:
            raise RuntimeError("PatchFeaturizer is not fitted")
        z = self._normalise(self._check(patches)) - self._center
        return z if self.components_ is None else z @ self.components_.T

    def fit_transform(self, patches: np.ndarray) -> np.ndarray:
        return self.fit(patches).transform(patches)
