"""Figures a scientist would rather look at than read (PNG, matplotlib Agg).

pyplot keeps global state and is not thread-safe (two runs drawing at once in one process,
as the web workspace runs them, fail in ``tight_layout``): every figure here is drawn while
holding ``FIGURES``, a re-entrant lock, and code elsewhere that uses ``plt`` takes it too.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, ParamSpec, TypeVar

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from autoscope.instruments.records import ImageRecord, SpectrumRecord  # noqa: E402

if TYPE_CHECKING:
    from autoscope.tools.campaign import CampaignResult

#: held while pyplot draws (re-entrant: a figure function may call another)
FIGURES = threading.RLock()
_P = ParamSpec("_P")
_R = TypeVar("_R")


def serialised(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Draw ``fn``'s figure holding ``FIGURES``."""

    @functools.wraps(fn)
    def locked(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with FIGURES:
            return fn(*args, **kwargs)

    return locked


@serialised
def save_figure(fig, path: Path, title: str = "", dpi: int = 110) -> Path:
    """Title ``fig``, lay it out, write it to ``path`` (PNG) and close it."""
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


@serialised
def survey_figure(
    image: ImageRecord,
    spectra: list[SpectrumRecord],
    path: Path,
    title: str = "",
    *,
    signal: str = "EELS",
    energy_name: str = "energy loss",
    image_label: str = "",
) -> Path:
    """The overview image with numbered spectrum positions, and the spectra beside it; labelled
    with the signal, the spectral axis' name and the image's source (a replay's, from its file)."""
    fig, (ax_img, ax_sp) = plt.subplots(1, 2, figsize=(11, 5), gridspec_kw={"width_ratios": [1, 1.2]})
    ax_img.imshow(image.data, cmap="gray", extent=_extent(image))
    ax_img.set_xlabel("x (nm)")
    ax_img.set_ylabel("y (nm)")
    ax_img.set_title(
        f"{image_label or image.detector.value.upper()} {image.pixels} × {image.n_rows} px, "
        f"{image.dwell_s * 1e6:.3g} µs dwell",
        fontsize=9,
    )
    colors = plt.cm.tab10.colors
    for i, sp in enumerate(spectra):
        c = colors[i % len(colors)]
        ax_img.plot(sp.x_nm, sp.y_nm, "o", mfc="none", mec=c, ms=10, mew=2)
        ax_img.annotate(str(i), (sp.x_nm, sp.y_nm), color=c, xytext=(6, 6), textcoords="offset points")
        ax_sp.plot(sp.energy_eV, sp.counts, color=c, lw=1, label=f"{i}: ({sp.x_nm:.1f}, {sp.y_nm:.1f}) nm")
    ax_sp.set_xlabel(f"{energy_name} (eV)")
    ax_sp.set_ylabel("counts")
    ax_sp.set_yscale("symlog", linthresh=10)
    if spectra:
        ax_sp.legend(fontsize=8)
    ax_sp.set_title(f"{signal} at the marked positions")
    return save_figure(fig, path, title, dpi=110)


@serialised
def campaign_figure(
    result: CampaignResult, path: Path, *, recall: np.ndarray | None = None, title: str = ""
) -> Path:
    """Survey with the measured positions in order (failed measurements as red crosses), the
    predicted map, and the curves over steps."""
    survey, grid = result.survey, result.grid
    fig, axes = plt.subplots(1, 3, figsize=(16, 5))
    extent = _extent(survey)
    ax = axes[0]
    ax.imshow(survey.data, cmap="gray", extent=extent)
    if result.steps:
        xy = grid.xy_nm[np.asarray(result.visited)]
        sc = ax.scatter(xy[:, 0], xy[:, 1], c=np.arange(len(xy)), cmap="plasma", s=14, edgecolors="none")
        fig.colorbar(sc, ax=ax, label="measurement order")
    if result.failed:
        bad = grid.xy_nm[[s.candidate for s in result.failed]]
        ax.scatter(bad[:, 0], bad[:, 1], marker="x", c="red", s=22, label=f"{len(bad)} failed")
        ax.legend(loc="upper right", fontsize=8)
    ax.set_title(f"{len(result.steps)} measurements")
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
    steps = np.arange(1, len(result.steps) + 1)
    if recall is not None:
        ax.plot(steps, recall, color="C0", label="recall of target regions")
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("recall")
    else:  # failed measurements (NaN) leave the best so far where it was
        y = np.array([s.y for s in result.steps], dtype=float)
        best = np.fmax.accumulate(y) if y.size else y
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
    return save_figure(fig, path, title, dpi=100)


@serialised
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
    return save_figure(fig, path, "", dpi=110)


_CLASS_COLORS = {
    "rod_tip": "#d62728",
    "rod_side": "#ff9896",
    "triangle_corner": "#1f77b4",
    "triangle_edge": "#6baed6",
    "triangle_face": "#c6dbef",
    "cube_corner": "#2ca02c",
    "cube_edge": "#74c476",
    "cube_face": "#c7e9c0",
    "other_particle": "#9467bd",
    "bare_film": "#525252",
    "single_flake": "#fdae6b",
    "stacked_flakes": "#e6550d",
    "substrate": "#7f7f7f",
    "sublattice_bright": "#ffbb78",
    "sublattice_dim": "#aec7e8",
    "bright_site_brighter": "#d62728",
    "dim_site_dimmer": "#1f77b4",
    "dim_site_brighter": "#2ca02c",
    "bright_side": "#ff7f0e",
    "dim_side": "#17becf",
    "interface": "#e377c2",
}


def _extent(image: ImageRecord) -> tuple[float, float, float, float]:
    """imshow extent (left, right, bottom, top) of an image's field, row 0 at the top."""
    w, h = image.fov_nm / 2, image.fov_y_nm / 2
    return (image.center_x_nm - w, image.center_x_nm + w, image.center_y_nm + h, image.center_y_nm - h)


def _draw_map(ax, image: ImageRecord, smap, grid_nm: np.ndarray) -> None:
    """The survey image with the map's features outlined and its area classes as faint dots."""
    ax.imshow(image.data, cmap="gray", extent=_extent(image))
    if smap.particles or smap.interface is not None:
        cls = smap.area_class(grid_nm)
        for c in np.unique(cls):
            if c in _CLASS_COLORS and c != "substrate":
                sel = cls == c
                ax.scatter(grid_nm[sel, 0], grid_nm[sel, 1], s=2, color=_CLASS_COLORS[c], alpha=0.5, label=c)
    for p in smap.particles:
        poly = np.asarray(p.outline_nm + p.outline_nm[:1])
        ax.plot(poly[:, 0], poly[:, 1], color="yellow", lw=0.8)
        ax.annotate(f"{p.shape[0].upper()}{p.id}", p.center_nm, color="yellow", fontsize=6, ha="center")
    if smap.lattice is not None:
        for c in (
            "sublattice_bright",
            "sublattice_dim",
            "bright_site_brighter",
            "dim_site_dimmer",
            "dim_site_brighter",
        ):
            pts = smap.site_positions(c)
            if len(pts):
                big = not c.startswith("sublattice")
                ax.scatter(
                    pts[:, 0],
                    pts[:, 1],
                    s=18 if big else 3,
                    facecolors="none" if big else _CLASS_COLORS[c],
                    edgecolors=_CLASS_COLORS[c],
                    lw=1.0,
                    label=f"{c} ({len(pts)})",
                )
    if smap.interface is not None:
        pts = np.asarray(smap.interface.points_nm)
        ax.plot(pts[:, 0], pts[:, 1], color="#e377c2", lw=1.5)
    for i, s in enumerate(smap.spectra):
        ax.plot(s.x_nm, s.y_nm, "o", mfc="none", mec="white", ms=8, mew=1.5)
        ax.annotate(
            f"#{i}", (s.x_nm, s.y_nm), color="white", xytext=(5, 5), textcoords="offset points", fontsize=7
        )
    ax.set_xlabel("x (nm)")
    ax.set_ylabel("y (nm)")
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, fontsize=6, markerscale=3, loc="upper right", framealpha=0.6)


@serialised
def map_figure(image: ImageRecord, smap, grid_nm: np.ndarray, path: Path, *, title: str = "") -> Path:
    """The survey map: particles outlined with their shape, lattice sites by class, the interface,
    and the survey spectra numbered as in the summary."""
    fig, ax = plt.subplots(figsize=(7.5, 7))
    _draw_map(ax, image, smap, np.asarray(grid_nm))
    return save_figure(fig, path, title, dpi=110)


@serialised
def evidence_figure(
    image: ImageRecord,
    smap,
    grid_nm: np.ndarray,
    strata: dict[str, list],
    verdict,
    path: Path,
    *,
    signal_label: str,
    features: list[tuple[float, float]] | None = None,
    covariate: str = "",
    title: str = "",
) -> Path:
    """The evidence of a verdict: where the unbiased spectra were taken (by class) on the map, the
    signal by class with each mean's interval, and for a trend the features against the covariate."""
    ncols = 3 if features else 2
    fig, axes = plt.subplots(1, ncols, figsize=(6.2 * ncols, 5.6))
    _draw_map(axes[0], image, smap, np.asarray(grid_nm))
    for k, (cls, vals) in enumerate(strata.items()):
        xy = np.array([(v.x_nm, v.y_nm) for v in vals])
        if len(xy):
            axes[0].scatter(xy[:, 0], xy[:, 1], s=22, marker="x", color=f"C{k % 10}", label=f"{cls} spectra")
    axes[0].legend(fontsize=6, loc="upper right", framealpha=0.6)
    axes[0].set_title("unbiased spectra on the survey map")
    ax = axes[1]
    names = list(strata)
    for k, cls in enumerate(names):
        y = np.array([v.value for v in strata[cls]], dtype=float)
        y = y[np.isfinite(y)]
        jitter = (np.arange(len(y)) % 7 - 3) * 0.04
        ax.scatter(np.full(len(y), k) + jitter, y, s=12, color=f"C{k % 10}", alpha=0.7)
    for est in verdict.by_class:
        if est.cls in names and est.mean is not None:
            k = names.index(est.cls)
            lo = est.ci_low if est.ci_low is not None else est.mean
            hi = est.ci_high if est.ci_high is not None else est.mean
            ax.errorbar(
                [k + 0.25], [est.mean], yerr=[[est.mean - lo], [hi - est.mean]], fmt="s", color="k", capsize=4
            )
    ax.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
    ax.set_ylabel(signal_label)
    ax.set_title(f"{verdict.outcome}: {verdict.readable or verdict.statistic}"[:90], fontsize=9)
    if features:
        ax = axes[2]
        x, y = np.array(features, dtype=float).T
        ax.scatter(x, y, color="C0")
        if len(x) >= 2 and np.ptp(x) > 0:
            a, b = np.polyfit(x, y, 1)
            xs = np.linspace(x.min(), x.max(), 50)
            ax.plot(xs, a * xs + b, color="C3", lw=1, label=f"linear fit, slope {a:.3g}")
            ax.legend(fontsize=8)
        ax.set_xlabel(covariate)
        ax.set_ylabel(signal_label)
        ax.set_title("trend over features")
    return save_figure(fig, path, title, dpi=100)


@serialised
def recording_figure(rec, path: Path) -> Path:
    """A read recording (``instruments.readers.Recording``): its survey image over the scan field
    (nm) and its mean spectrum over the energy axis, labelled with the axis name and provenance."""
    c = {k: v.value for k, v in rec.conditions.items()}
    h, w, e = rec.spectra.shape
    energy = c["energy_offset_eV"] + c["dispersion_eV"] * np.arange(e)
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    x0, y0, px = c["origin_x_nm"], c["origin_y_nm"], c["pixel_size_nm"]
    a.imshow(rec.image, cmap="gray", origin="upper", extent=(x0, x0 + w * px, y0 + h * px, y0))
    a.set_xlabel("x (nm)")
    a.set_ylabel("y (nm)")
    a.set_title(f"{rec.image_source or 'no image'} — {h} × {w}", fontsize=8)
    b.plot(energy, np.nanmean(rec.spectra, axis=(0, 1)), lw=0.8)
    b.set_xlabel(f"{rec.energy_name} (eV)")
    b.set_ylabel("mean counts per pixel")
    assumed = ", ".join(rec.assumed()) or "none"
    b.set_title(f"{rec.signal_type or 'spectrum'}; assumed: {assumed}", fontsize=8)
    return save_figure(fig, path, rec.path.name, 110)


@serialised
def discovery_figure(result: dict, path: Path) -> Path:
    """Information per dose: median recall against the cumulative areal dose, per method, for the
    raw and the robust region definitions (``autoscope bench discovery --figure``)."""
    defs = ("raw", "robust")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, d in zip(axes, defs, strict=True):
        survey = None
        for m, r in result["methods"].items():
            curve = np.asarray(r[d]["recall_vs_dose"], dtype=float)
            if curve.size:
                # the spectra's dose after the survey (the survey's own is the same for every method)
                step = curve[1, 0] - curve[0, 0] if len(curve) > 1 else 0.0
                survey = curve[0, 0] - step
                ax.plot(curve[:, 0] - survey, curve[:, 1], lw=1.5, label=m)
        regions = result.get(f"regions_{d}", 0)
        ax.set_title(f"{d} regions (median {regions:g})", fontsize=10)
        note = "" if survey is None else f"; the survey's: {survey:.3g}"
        ax.set_xlabel(f"spectra's dose (e/Å², field mean{note})")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("recall (median over seeds)")
    axes[0].legend(fontsize=8)
    title = (
        f"discovery on {Path(str(result['scenario'])).name}: {result['seeds']} seeds, "
        f"{result.get('candidates', 0)} candidates, top {result['top_fraction']:.0%}"
    )
    return save_figure(fig, path, title, dpi=110)
