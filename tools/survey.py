"""The survey: an overview image and a few spectra at chosen positions.

A survey is the first thing every campaign does. It is resumable: each acquisition is
a named step (``survey-image``, ``survey-spectrum-00``...), so re-running a survey
into the same run directory reads finished steps back from the store and only
acquires what is missing. Spectrum positions are chosen deterministically from the
stored image, so a resumed survey picks the same positions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy import ndimage

from autoscope.instruments.errors import InvalidRequest
from autoscope.instruments.protocols import Microscope
from autoscope.instruments.records import MIN_FOV_NM, Capabilities, ImageField, ImageRecord, SpectrumRecord
from autoscope.tools.acquisition import Acquirer
from autoscope.tools.store import RunStore

log = logging.getLogger(__name__)

IMAGE_STEP = "survey-image"


def spectrum_step(i: int) -> str:
    return f"survey-spectrum-{i:02d}"


class SurveyPlan(ImageField, BaseModel):
    """What a survey acquires. Units in the names; every field validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fov_nm: float = Field(ge=MIN_FOV_NM, allow_inf_nan=False, description="width of the field (nm)")
    pixels: int = Field(ge=8, le=4096, description="pixels across")
    rows: int | None = Field(None, ge=1, le=4096, description="pixels down (default: pixels, a square field)")
    dwell_s: float = Field(gt=0, le=1.0)
    current_pA: float | None = Field(default=None, gt=0)
    spectra: int = Field(default=4, ge=0, le=256)
    spectrum_dwell_s: float = Field(gt=0, le=600.0)
    energy_min_eV: float
    energy_max_eV: float
    center_x_nm: float | None = None
    center_y_nm: float | None = None

    @model_validator(mode="after")
    def _window(self) -> SurveyPlan:
        if self.energy_max_eV <= self.energy_min_eV:
            raise ValueError("energy_max_eV must be greater than energy_min_eV")
        return self

    def check_against(self, caps: Capabilities, center_nm: tuple[float, float]) -> None:
        """Refuse a plan the instrument cannot carry out, naming the field."""
        if max(self.fov_nm, self.fov_y_nm) > caps.max_fov_nm * (1 + 1e-9):
            raise InvalidRequest(
                "fov_nm",
                f"{max(self.fov_nm, self.fov_y_nm)} nm exceeds the largest scan field {caps.max_fov_nm} nm",
            )
        cx, cy = center_nm
        w, h = self.fov_nm / 2, self.fov_y_nm / 2
        s = caps.stage
        tol = 1e-9 * max(self.fov_nm, 1.0)
        if (
            cx - w < s.x_min_nm - tol
            or cx + w > s.x_max_nm + tol
            or cy - h < s.y_min_nm - tol
            or cy + h > s.y_max_nm + tol
        ):
            raise InvalidRequest(
                "fov_nm",
                f"a {self.fov_nm:g} × {self.fov_y_nm:g} nm field centred at ({cx:.1f}, {cy:.1f}) nm leaves the stage "
                f"travel x {s.x_min_nm}..{s.x_max_nm}, y {s.y_min_nm}..{s.y_max_nm} nm",
            )
        if self.current_pA is not None and not caps.current_min_pA <= self.current_pA <= caps.current_max_pA:
            raise InvalidRequest(
                "current_pA", f"{self.current_pA} pA outside {caps.current_min_pA}..{caps.current_max_pA} pA"
            )


def choose_spectrum_positions(image: ImageRecord, n: int) -> list[tuple[float, float]]:
    """``n`` sample-frame positions: one on each of the largest distinct features, plus a dark reference.

    Deterministic in the image. Features are connected regions of the smoothed image
    standing out of the background (median) by six robust noise deviations and a tenth
    of the image's contrast;
    each contributes its brightest point, largest regions first. The last position is
    the darkest smoothed pixel (substrate or vacuum) as a background reference. When
    there are too few features, the rest come from a coarse grid, each point moved to the
    brightest pixel near it.
    """
    if n <= 0:
        return []
    n_rows, n_cols = image.data.shape
    side_px = min(n_rows, n_cols)
    smooth = ndimage.gaussian_filter(image.data.astype(np.float64), sigma=max(1.0, side_px / 256))
    border = max(2, side_px // 32)
    inner = np.zeros_like(smooth, dtype=bool)
    inner[border:-border, border:-border] = True
    background, top = np.median(smooth), np.percentile(smooth, 99.5)
    noise = 1.4826 * np.median(np.abs(smooth - background))
    labels, count = ndimage.label((smooth > background + max(6 * noise, 0.1 * (top - background))) & inner)
    picks: list[tuple[int, int]] = []
    if count:
        sizes = ndimage.sum_labels(np.ones_like(smooth), labels, index=np.arange(1, count + 1))
        brightest = ndimage.maximum_position(smooth, labels, index=np.arange(1, count + 1))
        for i in np.argsort(-sizes, kind="stable")[: max(n - 1, 0)]:
            picks.append((int(brightest[i][0]), int(brightest[i][1])))
    dark = np.unravel_index(int(np.argmin(np.where(inner, smooth, np.inf))), smooth.shape)
    picks.append((int(dark[0]), int(dark[1])))
    side = max(4, int(np.ceil(np.sqrt(n))) + 1)
    grid_r = np.unique(np.linspace(border, n_rows - 1 - border, side).astype(int))
    grid_c = np.unique(np.linspace(border, n_cols - 1 - border, side).astype(int))
    half = max(1, side_px // 32)
    for r in grid_r:
        for c in grid_c:
            # snap to the brightest pixel nearby, so lattice images put the probe on a column
            r0, c0 = max(r - half, border), max(c - half, border)
            win = smooth[r0 : min(r + half + 1, n_rows - border), c0 : min(c + half + 1, n_cols - border)]
            dr, dc = np.unravel_index(int(np.argmax(win)), win.shape)
            spot = (int(r0 + dr), int(c0 + dc))
            if len(picks) < n and spot not in picks:
                picks.append(spot)
    return [image.pixel_to_nm(r, c) for r, c in picks[:n]]


@dataclass
class SurveyResult:
    image: ImageRecord
    spectra: list[SpectrumRecord]
    reused_steps: int


def run_survey(
    microscope: Microscope,
    store: RunStore,
    plan: SurveyPlan,
    *,
    progress: Callable[[int, int], None] | None = None,
    positions: Callable[[ImageRecord, int], list[tuple[float, float]]] = choose_spectrum_positions,
) -> SurveyResult:
    """Acquire the overview image and spectra of ``plan`` into ``store`` (resumable).

    The beam is on only while each acquisition runs (``Acquirer``).
    ``progress(done, total)`` is called after each step. ``positions(image, n)`` chooses where
    the spectra go, deterministically from the stored image (so a resumed survey picks the same).
    """
    stage = microscope.stage_position_nm()
    center = (
        stage[0] if plan.center_x_nm is None else plan.center_x_nm,
        stage[1] if plan.center_y_nm is None else plan.center_y_nm,
    )
    plan.check_against(microscope.capabilities(), center)
    done_before = store.completed_steps()
    total = 1 + plan.spectra
    acq = Acquirer(microscope, store)
    if center != stage:
        microscope.move_stage(*center)
    if plan.current_pA is not None:
        microscope.set_beam_current(plan.current_pA)
    store.append_event("survey_started", plan=plan.model_dump(), resumed=bool(done_before))
    image = acq.image(
        IMAGE_STEP, fov_nm=plan.fov_nm, pixels=plan.pixels, dwell_s=plan.dwell_s, rows=plan.rows
    )
    if progress:
        progress(1, total)
    spectra = []
    for i, (x, y) in enumerate(positions(image, plan.spectra)):
        spectra.append(
            acq.spectrum(
                spectrum_step(i),
                x_nm=x,
                y_nm=y,
                dwell_s=plan.spectrum_dwell_s,
                energy_min_eV=plan.energy_min_eV,
                energy_max_eV=plan.energy_max_eV,
            )
        )
        if progress:
            progress(2 + i, total)
    reused = len(done_before & ({IMAGE_STEP} | {spectrum_step(i) for i in range(plan.spectra)}))
    store.append_event("survey_complete", steps=total, reused_steps=reused)
    return SurveyResult(image=image, spectra=spectra, reused_steps=reused)
