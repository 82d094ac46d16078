"""Figures a scientist would rather look at than read (PNG, matplotlib Agg)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from autoscope.instruments.records import ImageRecord, SpectrumRecord  # noqa: E402

if TYPE_CHECKING:
    from autoscope.tools.campaign import CampaignResult


def _save(fig, path: Path, title: str, dpi: int) -> Path:
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def survey_figure(image: ImageRecord, spectra: list[SpectrumRecord], path: Path, title: str = "") -> Path:
    """The overview image with numbered spectrum positions, and the spectra beside it."""
    fig, (ax_img, ax_sp) = plt.subplots(1, 2, figsize=(11, 5), gridspec_kw={"width_ratios": [1, 1.2]})
    h = image.fov_nm / 2
    extent = (image.center_x_nm - h, image.center_x_nm + h, image.center_y_nm + h, image.center_y_nm - h)
    ax_img.imshow(image.data, cmap="gray", extent=extent)
    ax_img.set_xlabel("x (nm)")
    ax_img.set_ylabel("y (nm)")
    ax_img.set_title(f"{image.detector.value.upper()} {image.pixels}² px, {image.dwell_s * 1e6:.1f} µs dwell")
    colors = plt.cm.tab10.colors
    for i, sp in enumerate(spectra):
        c = colors[i % len(colors)]
        ax_img.plot(sp.x_nm, sp.y_nm, "o", mfc="none", mec=c, ms=10, mew=2)
        ax_img.annotate(str(i), (sp.x_nm, sp.y_nm), color=c, xytext=(6, 6), textcoords="offset points")
        ax_sp.plot(sp.energy_eV, sp.counts, color=c, lw=1, label=f"{i}: ({sp.x_nm:.1f}, {sp.y_nm:.1f}) nm")
    ax_sp.set_xlabel("energy loss (eV)")
    ax_sp.set_ylabel("counts")
    ax_sp.set_yscale("symlog", linthresh=10)
    if spectra:
        ax_sp.legend(fontsize=8)
    ax_sp.set_title("EELS at the marked positions")
    return _save(fig, path, title, dpi=110)


def campaign_figure(
    result: CampaignResult, path: Path, *, recall: np.ndarray | None = None, title: str = ""
) -> Path:
    """Survey with the measured positions in order, the predicted map, and the curves over steps."""
    survey, grid = result.survey, result.grid
    fig, axes = plt.subplots(1, 3, figsize=(16, 5))
    h = survey.fov_nm / 2
    extent = (survey.center_x_nm - h, survey.center_x_nm + h, survey.center_y_nm + h, survey.center_y_nm - h)
    ax = axes[0]
    ax.imshow(survey.data, cmap="gray", extent=extent)
    if result.measured:
        xy = grid.xy_nm[np.asarray(result.measured)]
        sc = ax.scatter(xy[:, 0], xy[:, 1], c=np.arange(len(xy)), cmap="plasma", s=14, edgecolors="none")
        fig.colorbar(sc, ax=ax, label="measurement order")
    ax.set_title(f"{len(result.measured)} measurements")
    ax.set_xlabel("x (nm)")
    ax.set_ylabel("y (nm)")

    ax = axes[1]
    rows_u, cols_u = np.unique(grid.rows), np.unique(grid.cols)
    if result.mean is not None:
        img = np.full((rows_u.size, cols_u.size), np.nan)
        img[np.searchsorted(rows_u, grid.rows), np.searchsorted(cols_u, grid.cols)] = result.mean
        im = ax.imshow(img, cmap="viridis", extent=extent)
        fig.colorbar(im, ax=ax, label="predicted signal")
        ax.set_title("model prediction")
    else:
        ax.scatter(grid.xy_nm[result.measured, 0], grid.xy_nm[result.measured, 1], c=result.y, s=14)
        ax.set_xlim(extent[0], extent[1])
        ax.set_ylim(extent[2], extent[3])
        ax.set_title("measured signal (no model)")
    ax.set_xlabel("x (nm)")

    ax = axes[2]
    steps = np.arange(1, len(result.y) + 1)
    if recall is not None:
        ax.plot(steps, recall, color="C0", label="recall of target regions")
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("recall")
    else:
        best = np.maximum.accumulate(result.y) if result.y else np.array([])
        ax.plot(steps, best, color="C0", label="best signal so far")
        ax.set_ylabel("signal")
    std = [s.mean_std for s in result.steps]
    if any(v is not None for v in std):
        ax2 = ax.twinx()
        ax2.plot(
            steps, [np.nan if v is None else v for v in std], color="C3", lw=1, label="mean posterior std"
        )
        ax2.set_ylabel("mean posterior std (model units)", color="C3")
    for ev in result.events:
        ax.axvline(ev.step + 1, color="k", ls=":", lw=1)
        ax.annotate(ev.kind, (ev.step + 1, 0.02), rotation=90, fontsize=8)
    ax.set_xlabel("measurement")
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path, title, dpi=100)


def image_figure(
    data: np.ndarray, fov_nm: float, center_nm: tuple[float, float], path: Path, *, title: str = ""
) -> Path:
    """One image (rows = y) with a nanometre scale on both axes."""
    h = fov_nm / 2
    cx, cy = center_nm
    fig, ax = plt.subplots(figsize=(6, 5.4))
    im = ax.imshow(data, cmap="gray", extent=(cx - h, cx + h, cy + h, cy - h))
    fig.colorbar(im, ax=ax, shrink=0.85)
    ax.set_xlabel("x (nm)")
    ax.set_ylabel("y (nm)")
    if title:
        ax.set_title(title)
    return _save(fig, path, "", dpi=110)
