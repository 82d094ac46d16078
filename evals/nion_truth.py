"""Ground truth on Nion's simulator: what usim's own sample and spectrum model say is there.

usim draws its flake sample from a fixed seed (``nion.usim_device.SampleSimulator``: 100
axis-aligned rectangles, every third one Ni, then Ge, then Si) and builds the spectrum at the
probe from the flakes that contain it (``EELSCameraSimulator``: a ZLP, each flake's edges as
power laws under an error-function onset and its plasmons, scaled so that the counts add up
to the beam's and ln(total / ZLP) is the thickness over the mean free path, 30 nm a flake
over 100 nm). Here both come from usim's own objects and functions, never from our survey
map or our estimator: the true class of a point is the number of flakes that contain it (the
rule of ``tools/grounding/classes.py``: 0 ``bare_film``, 1 ``single_flake``, 2 or more
``stacked_flakes``), the true signal the hypothesis' scalarizer applied to the noise-free
spectrum, and the effect θ the same function of class means (``tools/predictions.effect``)
the verdict estimates. A band whose noise-free spectrum holds no counts (the bare film far
above the ZLP) has no edge: its signal is 0.
"""

from __future__ import annotations

import logging
import math
import zlib
from typing import Any

import numpy as np
from pydantic import BaseModel

from autoscope.evals.truth import HypothesisTruth
from autoscope.instruments.records import ImageRecord, SpectrumRecord
from autoscope.tools.grounding import population_grid
from autoscope.tools.grounding.classes import members
from autoscope.tools.plan import Hypothesis
from autoscope.tools.predictions import LocalizedAt, Trend, effect

log = logging.getLogger(__name__)

#: usim's constants (EELSCameraSimulator.get_frame_data)
MEAN_FREE_PATH_NM = 100.0
THICKNESS_PER_LAYER_NM = 30.0
ELEMENTS = ("Ni", "Ge", "Si")  # usim's flake i carries the edges of ELEMENTS[i % 3]


def usim_features(stack: Any) -> list[Any]:
    """The flakes of a running usim (``NionStack``): its controller's sample features."""
    return list(stack.controller.scan_data_generator.sample.features)


def layers_at(features: list[Any], xy_nm: np.ndarray) -> np.ndarray:
    """How many flakes contain each sample-frame point (the stage at 0, as our runs leave it)."""
    xy = np.atleast_2d(np.asarray(xy_nm, dtype=np.float64))
    n = np.zeros(len(xy), dtype=int)
    for f in features:
        r = f.get_feature_rect_m()
        x0, y0 = r.left * 1e9, r.top * 1e9
        n += (
            (xy[:, 0] >= x0)
            & (xy[:, 0] <= x0 + r.width * 1e9)
            & (xy[:, 1] >= y0)
            & (xy[:, 1] <= y0 + r.height * 1e9)
        )
    return n


def true_classes(features: list[Any], xy_nm: np.ndarray) -> np.ndarray:
    n = layers_at(features, xy_nm)
    return np.where(n == 0, "bare_film", np.where(n == 1, "single_flake", "stacked_flakes")).astype(str)


def true_spectrum(features: list[Any], x_nm: float, y_nm: float, energy_eV: np.ndarray) -> np.ndarray:
    """Noise-free counts per incident electron on ``energy_eV`` (a uniform axis), by usim's model."""
    from nion.data import Calibration
    from nion.usim_device.EELSCameraSimulator import plot_norm, plot_spectrum

    scale = float(energy_eV[1] - energy_eV[0])
    cal = Calibration.Calibration(offset=float(energy_eV[0]), scale=scale)
    ref_cal = Calibration.Calibration(offset=-20.0, scale=scale)
    n_ref = int(1000.0 / scale)
    xy = np.array([[x_nm, y_nm]])
    on = [f for f in features if layers_at([f], xy)[0]]
    zlp_ref = np.zeros(n_ref)
    plot_norm(zlp_ref, 1.0, ref_cal, 0, 0.5)
    spectrum, spectrum_ref = np.zeros(len(energy_eV)), np.zeros(n_ref)
    for f in on:
        plot_spectrum(f, spectrum, 1.0, cal)
        plot_spectrum(f, spectrum_ref, 1.0, ref_cal)
    # usim's scaling: the ZLP keeps exp(-t/λ) of the counts, the flakes' shapes the rest
    total = 1.0 / n_ref  # counts per channel (a reference axis of n_ref channels) per electron
    t = len(on) * THICKNESS_PER_LAYER_NM / MEAN_FREE_PATH_NM
    zlp_scale = total / math.exp(t) / float(zlp_ref.sum())
    feature_scale = (total - total / math.exp(t)) / max(float(spectrum_ref.sum()), 0.01)
    spectrum *= feature_scale
    plot_norm(spectrum, zlp_scale, cal, 0, 0.5)
    return spectrum * n_ref  # per electron over the whole spectrum, as the detector sums it


def _signal(
    scalarizer: Any, counts_per_e: np.ndarray, energy: np.ndarray, x: float, y: float, dwell_s: float
) -> float:
    n_e = 1e6  # electrons: the scale cancels in every ratio the predictions take
    rec = SpectrumRecord(
        counts=counts_per_e * n_e,
        energy_offset_eV=float(energy[0]),
        dispersion_eV=float(energy[1] - energy[0]),
        x_nm=x,
        y_nm=y,
        dwell_s=dwell_s,
        current_pA=1.0,
        dose_e=n_e,
        dose_e_per_A2=0.0,
        t_start_s=0.0,
        t_end_s=dwell_s,
    )
    lo, hi = getattr(scalarizer, "lo_eV", None), getattr(scalarizer, "hi_eV", None)
    if lo is not None and hi is not None:
        band = (energy >= lo) & (energy <= hi)
        if not np.any(counts_per_e[band] > 1e-12 * counts_per_e.max()):
            return 0.0  # no counts in the band: no edge there
    try:
        return float(scalarizer(rec))
    except ValueError:
        return math.nan


def hypothesis_truth_usim(
    h: Hypothesis,
    features: list[Any],
    survey: ImageRecord,
    *,
    energy_eV: np.ndarray,
    spectrum_dwell_s: float,
    max_points: int = 300,
    seed: int = 0,
) -> HypothesisTruth:
    """The hypothesis's effect θ on usim's noise-free signal over the true classes of the survey field."""
    p = h.prediction
    if isinstance(p, Trend):
        raise ValueError("trend hypotheses have no usim ground truth here (the flakes have no covariate)")
    grid = population_grid(survey).xy_nm
    cls = true_classes(features, grid)
    means: dict[str, float] = {}
    pop: dict[str, int] = {}
    done: dict[str, int] = {}
    names = list(p.classes())
    if isinstance(p, LocalizedAt) and p.versus == "elsewhere":
        names.append("elsewhere")
    for name in names:
        pts = grid[np.isin(cls, members(name))]
        if isinstance(p, LocalizedAt) and name == "elsewhere":
            pts = grid[~np.isin(cls, members(p.at))]
        pop[name] = len(pts)
        if len(pts) > max_points:
            pick = np.random.default_rng(seed + zlib.crc32(name.encode())).choice(
                len(pts), max_points, replace=False
            )
            pts = pts[np.sort(pick)]
        done[name] = len(pts)
        v = np.array(
            [
                _signal(h.signal, true_spectrum(features, x, y, energy_eV), energy_eV, x, y, spectrum_dwell_s)
                for x, y in pts
            ]
        )
        means[name] = float(np.nanmean(v)) if np.isfinite(v).any() else math.nan
    theta = float(effect(p, means, energy=h.energy_signal))
    holds = bool(math.isfinite(theta) and theta > 0)
    log.info("usim truth %s: %s (effect %.4g, means %s)", h.id, holds, theta, means)
    return HypothesisTruth(
        hypothesis_id=h.id,
        holds=holds,
        effect=theta,
        means=means,
        members=pop,
        evaluated=done,
        rule=f"claim: {p.claim(h.signal.describe())}; θ from usim's noise-free spectra over the flakes that "
        f"contain each point (≤ {max_points} points a class); holds when θ > 0",
    )


class VerdictScore(BaseModel):
    """One verdict of a run on usim beside usim's own answer."""

    hypothesis_id: str
    statement: str
    outcome: str  # supported | refuted | inconclusive
    truth: HypothesisTruth

    @property
    def wrong(self) -> bool:
        """A decided verdict that contradicts the truth (inconclusive is undecided, not wrong)."""
        return (self.outcome == "supported" and not self.truth.holds) or (
            self.outcome == "refuted" and self.truth.holds
        )


def score_run(run_dir: Any, features: list[Any], *, max_points: int = 300) -> list[VerdictScore]:
    """Every verdict of a usim run scored against usim's truth on the run's own survey field and
    spectrometer window (read from its store)."""
    from autoscope.tools.store import RunStore
    from autoscope.tools.survey import IMAGE_STEP

    store = RunStore.open(run_dir, read_only=True)
    try:
        survey = store.load(IMAGE_STEP)
        verdicts = {e["hypothesis_id"]: e for e in store.events("verdict")}
        out = []
        for e in store.events("hypothesis"):
            h = Hypothesis.model_validate(
                {k: v for k, v in e.items() if k not in ("kind", "seq", "time_utc")}
            )
            v = verdicts.get(h.id)
            if v is None:
                continue
            spectra = [a for a in store.events("acquisition") if a["step_id"].startswith(f"{h.id}-")]
            rec = store.load(spectra[0]["step_id"])
            truth = hypothesis_truth_usim(
                h,
                features,
                survey,
                energy_eV=rec.energy_eV,
                spectrum_dwell_s=rec.dwell_s,
                max_points=max_points,
            )
            out.append(
                VerdictScore(hypothesis_id=h.id, statement=h.statement, outcome=v["outcome"], truth=truth)
            )
        return out
    finally:
        store.close()
