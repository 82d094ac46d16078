"""Figures a scientist would rather look at than read (PNG, matplotlib Agg)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from autoscope.instruments.records import ImageRecord, SpectrumRecord  # noqa: E402


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
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
