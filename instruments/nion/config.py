"""What the Nion backend needs to know about one Nion column: its hardware sources and controls.

The defaults are Nion's simulator (``nionswift-usim``). On a microscope the hardware source ids
and the control names are the site's (Swift's Hardware Source and Instrument panels show
them); give them in a YAML/TOML/JSON file (``--nion-config``). Controls are named once here,
never as strings deep in the driver.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class NionControls(BaseModel):
    """STEM-controller controls (``GetVal``/``SetVal``/``SetVal2D``) and their units."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    beam_current: str = Field("BeamCurrent", description="probe current control, in amperes")
    blank: str = Field("C_Blank", description="beam blanker: 1 blanked, 0 unblanked")
    stage: str = Field("stage_position_m", description="2-D stage position control, in metres")
    energy_offset: str = Field(
        "EELS_MagneticShift_Offset", description="energy of the spectrometer's first channel, in eV"
    )


class NionConfig(BaseModel):
    """One Nion column. Defaults: Nion's simulator, whose sample spans about ±200 nm."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "nion-usim"
    start: Literal["auto", "simulator", "attach"] = Field(
        "auto",
        description="simulator: start nionswift-usim here; attach: use the hardware sources a running "
        "Nion Swift registered; auto: attach when Swift has registered any, else start the simulator",
    )
    scan: str = Field("usim_scan_device", description="hardware source id of the scan")
    eels: str = Field("usim_eels_camera", description="hardware source id of the EELS camera")
    haadf_channel: str = Field("HAADF", description="the scan channel that is the HAADF detector")
    controls: NionControls = NionControls()
    #: the stage reading's sign relative to the sample frame: moving the stage by +d brings the
    #: sample point at -d under the beam (usim: measured, the image content moves by +d)
    stage_sign: float = Field(-1.0, description="+1 or -1: stage control = sign × sample position")
    stage_half_range_nm: float = Field(500.0, gt=0, description="stage travel: ± this around 0 (nm)")
    max_fov_nm: float | None = Field(
        None, gt=0, description="largest scan field (nm); default: what the scan device reports"
    )
    current_min_pA: float = Field(1.0, gt=0)
    current_max_pA: float = Field(1000.0, gt=0)
    probe_fwhm_nm: float = Field(0.1, gt=0, description="probe FWHM (nm), for the areal dose of a spectrum")
    energy_min_eV: float = Field(
        -20.0, description="lowest first-channel energy (eV): usim's own default offset"
    )
    energy_max_eV: float = Field(4000.0, description="highest energy a window may reach (eV)")
    eels_binning: int = Field(1, ge=1, description="camera binning (1: the full energy resolution)")
    timeout_s: float = Field(60.0, gt=0, description="longest wait for one frame beyond its exposure")
