"""The digital twin: a seeded, physics-coupled STEM around a simulated ``Sample``.

On top of the sample's noise-free signals the twin models what the instrument does:

- shot noise: Poisson counts of the beam electrons reaching a detector (SNR ∝ √dose),
  plus Gaussian read noise; HAADF clipped at the ADC saturation;
- probe blur: the sample is evaluated with σ = FWHM / 2.3548;
- drift: d(t) = v·t + a Brownian random walk, evaluated per scan line (so drift shears
  an image) and at the middle of each spectrum; a feature at sample point s appears
  at s + d(t) in the instrument (stage) frame;
- scan noise: a Gaussian horizontal offset of every scan line;
- dose: a physical ``DoseMap`` fed to ``sample.apply_damage`` after every exposure,
  including the dose the parked probe deposits while the stage moves unblanked;
- a simulated clock, and injected faults from their own random stream.

Independent child streams of ``SeedSequence(seed)`` drive noise, drift, scan jitter,
faults and damage, so the same seed gives bit-identical results.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from autoscope.instruments.dose import DoseMap
from autoscope.instruments.errors import ConnectionLost, InstrumentTimeout, InvalidRequest
from autoscope.instruments.local import LocalBackend
from autoscope.instruments.records import (
    NM2_TO_A2,
    Capabilities,
    Detector,
    ImageRecord,
    ImageRequest,
    SpectrumRecord,
    SpectrumRequest,
    StageLimits,
    electrons,
    energy_axis,
    spot_dose_e_per_A2,
)
from autoscope.instruments.sim.config import SimConfig
from autoscope.instruments.sim.faults import Fault, FaultInjector, corrupt
from autoscope.instruments.sim.sample import Sample

log = logging.getLogger(__name__)

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))  # 2.3548
_STREAK_SPOTS_MAX = 200


class DriftProcess:
    """Specimen drift d(t) = v·t + W(t), W a seeded Brownian walk (nm, sample frame).

    The walk is sampled lazily at increasing times; earlier times are interpolated
    between stored knots (the mean of the Brownian bridge).
    """

    def __init__(self, velocity_nm_per_s: tuple[float, float], walk_nm_per_sqrt_s: float, rng) -> None:
        self._v = np.asarray(velocity_nm_per_s, dtype=np.float64)
        self._sigma = float(walk_nm_per_sqrt_s)
        self._rng = rng
        self._t_chunks: list[np.ndarray] = [np.zeros(1)]
        self._w_chunks: list[np.ndarray] = [np.zeros((1, 2))]

    @property
    def _t_last(self) -> float:
        return float(self._t_chunks[-1][-1])

    def sample(self, t_s: np.ndarray) -> np.ndarray:
        """Drift (n, 2) at non-decreasing times ``t_s`` at or after the last sampled time.

        Advances the random walk (consumes randomness).
        """
        t = np.atleast_1d(np.asarray(t_s, dtype=np.float64))
        t = np.maximum(t, self._t_last)
        dt = np.diff(np.concatenate([[self._t_last], t]))
        steps = self._rng.standard_normal((t.size, 2)) * (self._sigma * np.sqrt(dt))[:, None]
        w = self._w_chunks[-1][-1] + np.cumsum(steps, axis=0)
        self._t_chunks.append(t)
        self._w_chunks.append(w)
        return t[:, None] * self._v + w

    def peek(self, t_s: float) -> tuple[float, float]:
        """Drift at ``t_s`` without consuming randomness (after the last knot: its walk value)."""
        t = np.concatenate(self._t_chunks)
        w = np.concatenate(self._w_chunks)
        wx = np.interp(t_s, t, w[:, 0])
        wy = np.interp(t_s, t, w[:, 1])
        return float(t_s * self._v[0] + wx), float(t_s * self._v[1] + wy)


_F = TypeVar("_F", bound=Callable[..., Any])


def paced(method: _F) -> _F:
    """With ``SimConfig.real_time``, the call lasts at least the simulated time it advanced the clock
    by (an exception included: a timeout also costs its time)."""

    @functools.wraps(method)
    def call(self: SimMicroscope, *args: Any, **kwargs: Any) -> Any:
        if not self._config.real_time:
            return method(self, *args, **kwargs)
        clock0, wall0 = self._clock_s, time.perf_counter()
        try:
            return method(self, *args, **kwargs)
        finally:
            left = (self._clock_s - clock0) - (time.perf_counter() - wall0)
            if left > 0:
                time.sleep(left)

    return call  # type: ignore[return-value]


class SimMicroscope(LocalBackend):
    """A simulated STEM implementing every protocol of ``instruments/protocols.py``."""

    backend = "sim"

    def __init__(
        self, sample: Sample, *, seed: int, config: SimConfig | None = None, name: str | None = None
    ) -> None:
        self._sample = sample
        self._config = config or SimConfig()
        self.name = name or f"sim-{sample.name}"
        self.seed = int(seed)
        streams = np.random.SeedSequence(self.seed).spawn(5)
        noise, drift, jitter, faults, damage = (np.random.default_rng(s) for s in streams)
        self._rng_noise, self._rng_jitter, self._rng_damage = noise, jitter, damage
        self._drift = DriftProcess(
            self._config.drift_velocity_nm_per_s, self._config.drift_random_walk_nm_per_sqrt_s, drift
        )
        self._faults = FaultInjector(self._config, faults)
        x0, x1, y0, y1 = sample.extent_nm
        self._dose = DoseMap(x0, x1, y0, y1, sample.dose_cell_nm)
        self._stage = ((x0 + x1) / 2.0, (y0 + y1) / 2.0)
        self._probe_offset = (0.0, 0.0)
        self._blanked = True
        c = self._config
        self._current_pA = float(c.current_pA if c.current_pA is not None else sample.survey.current_pA)
        self._current_pA = min(max(self._current_pA, c.current_min_pA), c.current_max_pA)
        self._clock_s = 0.0
        self._acquisitions = 0
        self._total_dose_e = 0.0
        self._caps = Capabilities(
            max_fov_nm=c.max_fov_nm,
            detectors=(Detector.HAADF, Detector.BF),
            energy_min_eV=sample.spectrometer.energy_min_eV,
            energy_max_eV=sample.spectrometer.energy_max_eV,
            dispersion_eV=sample.spectrometer.dispersion_eV,
            current_min_pA=c.current_min_pA,
            current_max_pA=c.current_max_pA,
            probe_fwhm_nm=sample.probe_fwhm_nm,
            stage=StageLimits(x_min_nm=x0, x_max_nm=x1, y_min_nm=y0, y_max_nm=y1),
        )

    # ---------------------------------------------------------------- helpers
    @property
    def config(self) -> SimConfig:
        return self._config

    @property
    def _probe_sigma_nm(self) -> float:
        return self._sample.probe_fwhm_nm / FWHM_PER_SIGMA

    def _expose_path(self, x0: float, y0: float, x1: float, y1: float, time_s: float) -> None:
        """Dose from the unblanked probe sweeping (x0,y0)→(x1,y1) in the sample frame for ``time_s``."""
        n_e = electrons(self._current_pA, time_s)
        if n_e <= 0:
            return
        length = math.hypot(x1 - x0, y1 - y0)
        n = int(min(_STREAK_SPOTS_MAX, max(1, math.ceil(length / self._dose.cell_nm))))
        for f in (np.arange(n) + 0.5) / n:
            self._dose.add_spot(x0 + f * (x1 - x0), y0 + f * (y1 - y0), n_e / n, self._sample.probe_fwhm_nm)
        self._total_dose_e += n_e
        self._sample.apply_damage(self._dose, self._rng_damage)

    def _probe_on_sample(self, t_s: float) -> tuple[float, float]:
        """Where the parked probe hits the sample (sample frame, drift removed) at ``t_s``."""
        px, py = self.probe_position_nm()
        dx, dy = self._drift.sample(np.array([t_s]))[0]
        return px - dx, py - dy

    def _finish(self, fault: Fault) -> None:
        if fault is Fault.TIMEOUT:
            self._clock_s += self._config.timeout_s
            raise InstrumentTimeout(
                f"the instrument did not answer within {self._config.timeout_s:g} s; the dose was delivered"
            )
        if fault is Fault.DISCONNECT:
            raise ConnectionLost(
                "connection to the instrument dropped during acquisition; dose was delivered"
            )

    # ---------------------------------------------------------------- Imaging
    @paced
    def acquire_image(
        self,
        fov_nm: float,
        pixels: int,
        dwell_s: float,
        detector: Detector = Detector.HAADF,
        rows: int | None = None,
    ) -> ImageRecord:
        req = ImageRequest.checked(
            fov_nm=fov_nm, pixels=pixels, dwell_s=dwell_s, detector=detector, rows=rows
        )
        caps, c = self._caps, self._config
        if max(req.fov_nm, req.fov_y_nm) > caps.max_fov_nm:
            raise InvalidRequest(
                "fov_nm",
                f"{max(req.fov_nm, req.fov_y_nm)} nm exceeds the maximum scan field {caps.max_fov_nm} nm",
            )
        if req.detector not in caps.detectors:
            raise InvalidRequest("detector", f"{req.detector} is not installed")
        self._require_beam()
        fault, shape_u = self._faults.draw()
        n, ny, fov, fov_y, dwell = req.pixels, req.n_rows, req.fov_nm, req.fov_y_nm, req.dwell_s
        p = fov / n
        cx, cy = self._stage
        t0 = self._clock_s
        line_s = n * dwell + c.line_flyback_s
        t_lines = t0 + c.frame_overhead_s + np.arange(ny) * line_s + n * dwell / 2.0
        d = self._drift.sample(t_lines)  # (ny, 2) drift at the middle of each line
        jitter_nm = self._rng_jitter.standard_normal(ny) * c.line_jitter_px * p
        centres_x = (np.arange(n) + 0.5) * p - fov / 2.0
        centres_y = (np.arange(ny) + 0.5) * p - fov_y / 2.0
        xs = (cx + centres_x)[None, :] + (jitter_nm - d[:, 0])[:, None]
        ys = np.repeat((cy + centres_y - d[:, 1])[:, None], n, axis=1)
        if req.detector is Detector.HAADF:
            frac, eff = self._sample.haadf(xs, ys, self._probe_sigma_nm), c.haadf_efficiency
        else:
            frac, eff = self._sample.bright_field(xs, ys, self._probe_sigma_nm), c.bf_efficiency
        e_per_px = electrons(self._current_pA, dwell)
        expected = np.clip(e_per_px * eff * frac, 0.0, None)
        counts = self._rng_noise.poisson(expected).astype(np.float32)
        if c.read_noise_counts > 0:
            counts += (self._rng_noise.standard_normal((ny, n)) * c.read_noise_counts).astype(np.float32)
        data = np.clip(counts, 0.0, c.saturation_counts)

        dose_e = electrons(self._current_pA, dwell * n * ny)
        dose_A2 = dose_e / (fov * fov_y * NM2_TO_A2)
        mdx, mdy = d.mean(axis=0)
        self._dose.add_rect(
            cx - fov / 2 - mdx, cx + fov / 2 - mdx, cy - fov_y / 2 - mdy, cy + fov_y / 2 - mdy, dose_A2
        )
        self._total_dose_e += dose_e
        self._sample.apply_damage(self._dose, self._rng_damage)
        self._clock_s = t0 + c.frame_overhead_s + ny * line_s
        self._probe_offset = (0.0, 0.0)
        self._finish(fault)
        if fault is Fault.CORRUPT:
            log.debug("injected corrupt frame")
            data = corrupt(data, shape_u, c.saturation_counts)
        self._acquisitions += 1
        return ImageRecord(
            data=data,
            fov_nm=fov,
            pixels=n,
            dwell_s=dwell,
            detector=req.detector,
            center_x_nm=cx,
            center_y_nm=cy,
            current_pA=self._current_pA,
            dose_e=dose_e,
            dose_e_per_A2=dose_A2,
            t_start_s=t0,
            t_end_s=self._clock_s,
            rows=req.rows,
        )

    # ---------------------------------------------------------------- Spectroscopy
    @paced
    def acquire_spectrum(
        self, x_nm: float, y_nm: float, dwell_s: float, energy_min_eV: float, energy_max_eV: float
    ) -> SpectrumRecord:
        req = SpectrumRequest.checked(
            x_nm=x_nm, y_nm=y_nm, dwell_s=dwell_s, energy_min_eV=energy_min_eV, energy_max_eV=energy_max_eV
        )
        offset_eV, channels = energy_axis(req, self._caps)
        self._check_in_field(req.x_nm, req.y_nm)
        self._require_beam()
        c = self._config
        fault, shape_u = self._faults.draw()
        self.move_probe(req.x_nm, req.y_nm)
        t0 = self._clock_s
        sx, sy = self._probe_on_sample(t0 + req.dwell_s / 2.0)
        energy = offset_eV + self._caps.dispersion_eV * np.arange(channels)
        per_e = self._sample.spectrum(sx, sy, energy, self._probe_sigma_nm)
        n_e = electrons(self._current_pA, req.dwell_s)
        counts = self._rng_noise.poisson(np.clip(n_e * per_e, 0.0, None)).astype(np.float64)
        if c.spectrum_read_noise_counts > 0:
            counts += self._rng_noise.standard_normal(channels) * c.spectrum_read_noise_counts

        fwhm = self._sample.probe_fwhm_nm
        dose_A2 = spot_dose_e_per_A2(n_e, fwhm)
        self._dose.add_spot(sx, sy, n_e, fwhm)
        self._total_dose_e += n_e
        self._sample.apply_damage(self._dose, self._rng_damage)
        self._clock_s = t0 + req.dwell_s + c.spectrum_readout_s
        self._finish(fault)
        if fault is Fault.CORRUPT:
            log.debug("injected corrupt spectrum")
            counts = corrupt(counts, shape_u, c.saturation_counts)
        self._acquisitions += 1
        return SpectrumRecord(
            counts=counts,
            energy_offset_eV=offset_eV,
            dispersion_eV=self._caps.dispersion_eV,
            x_nm=req.x_nm,
            y_nm=req.y_nm,
            dwell_s=req.dwell_s,
            current_pA=self._current_pA,
            dose_e=n_e,
            dose_e_per_A2=dose_A2,
            t_start_s=t0,
            t_end_s=self._clock_s,
        )

    # ---------------------------------------------------------------- Beam
    def probe_position_nm(self) -> tuple[float, float]:
        return self._stage[0] + self._probe_offset[0], self._stage[1] + self._probe_offset[1]

    def move_probe(self, x_nm: float, y_nm: float) -> None:
        self._check_in_field(float(x_nm), float(y_nm))
        self._probe_offset = (float(x_nm) - self._stage[0], float(y_nm) - self._stage[1])

    # ---------------------------------------------------------------- Stage
    @paced
    def move_stage(self, x_nm: float, y_nm: float) -> None:
        x_nm, y_nm = self._check_stage_target(x_nm, y_nm)
        dist = math.hypot(x_nm - self._stage[0], y_nm - self._stage[1])
        if dist == 0.0:
            return
        c = self._config
        travel_s = dist / c.stage_speed_nm_per_s
        if not self._blanked:
            # the beam stays on the optical axis (+ probe offset) while the sample slides under it
            ax, ay = self._probe_on_sample(self._clock_s)
            bx, by = ax + (x_nm - self._stage[0]), ay + (y_nm - self._stage[1])
            self._expose_path(ax, ay, bx, by, travel_s)
            self._expose_path(bx, by, bx, by, c.stage_settle_s)
        self._stage = (x_nm, y_nm)
        self._advance_clock(travel_s + c.stage_settle_s)

    @paced
    def wait(self, duration_s: float) -> None:
        """Let ``duration_s`` of instrument time pass; an unblanked, parked probe keeps exposing."""
        if not (math.isfinite(duration_s) and duration_s >= 0):
            raise InvalidRequest("duration_s", f"{duration_s} s is not a non-negative duration")
        if not self._blanked and duration_s > 0:
            x, y = self._probe_on_sample(self._clock_s + duration_s / 2.0)
            self._expose_path(x, y, x, y, duration_s)
        self._advance_clock(duration_s)

    def _advance_clock(self, dt_s: float) -> None:
        """Idle time: the drift walk is sampled at the new time, so the oracle's drift is exact now."""
        self._clock_s += dt_s
        self._drift.sample(np.array([self._clock_s]))

        return self._clock_s
