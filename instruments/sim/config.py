"""Settings of the simulated microscope (the digital twin), separate from the sample.

Defaults describe a well-behaved aberration-corrected STEM: slow thermal drift
(a few tenths of a nanometre per minute), a small random walk on top, sub-pixel
scan jitter, a 16-bit HAADF ADC and no injected faults.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class SimConfig(BaseModel):
    """Everything the twin adds on top of the sample physics. Frozen; unknown keys are an error."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # drift: d(t) = v t + random walk, in the sample frame
    drift_velocity_nm_per_s: tuple[float, float] = (0.005, -0.003)  # 0.30 and 0.18 nm/min
    drift_random_walk_nm_per_sqrt_s: float = Field(0.002, ge=0)

    # scan noise: Gaussian horizontal offset of each scan line, in pixels
    line_jitter_px: float = Field(0.05, ge=0)

    # detectors (counts = detected electrons; HAADF ADC is 16 bit)
    read_noise_counts: float = Field(0.5, ge=0)
    saturation_counts: float = Field(65535.0, gt=0)
    haadf_efficiency: float = Field(0.9, gt=0, le=1)
    bf_efficiency: float = Field(0.9, gt=0, le=1)
    spectrum_read_noise_counts: float = Field(1.0, ge=0)

    # optics and limits
    current_pA: float | None = Field(None, gt=0, description="initial beam current; None: the scenario's")
    current_min_pA: float = Field(0.5, gt=0)
    current_max_pA: float = Field(500.0, gt=0)
    max_fov_nm: float = Field(2000.0, gt=0)

    # timing (simulated clock)
    line_flyback_s: float = Field(2e-4, ge=0)
    frame_overhead_s: float = Field(0.05, ge=0)
    spectrum_readout_s: float = Field(0.005, ge=0)
    stage_speed_nm_per_s: float = Field(1000.0, gt=0)
    stage_settle_s: float = Field(0.5, ge=0)
    timeout_s: float = Field(5.0, ge=0, description="time lost by an acquisition that times out")
    real_time: bool = Field(
        False,
        description="each acquisition, stage move and wait lasts its simulated time on the wall clock "
        "(the call sleeps for what the simulation did not use), as a real detector's exposure does: "
        "for measuring how long the column waits for the software",
    )

    # injected faults: probability per acquisition
    timeout_rate: float = Field(0.0, ge=0, le=1)
    disconnect_rate: float = Field(0.0, ge=0, le=1)
    corrupt_frame_rate: float = Field(0.0, ge=0, le=1)
