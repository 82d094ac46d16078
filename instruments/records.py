"""Typed records: what an instrument is asked for and what comes back.

Requests are pydantic models, so the in-process twin, the replay backend and the
HTTP server validate them the same way (a bad field is an ``InvalidRequest`` naming
it, or a 422 on the wire). Results are frozen dataclasses holding a NumPy array plus
the acquisition parameters, the dose and the instrument-clock timestamps.

Coordinates are in the sample (stage) frame, in nanometres: ``x_nm`` grows with the
image column, ``y_nm`` with the image row. An image is centred on the stage position.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from enum import StrEnum
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from autoscope.instruments.errors import InvalidRequest, validation_field

ELEMENTARY_CHARGE_C = 1.602176634e-19
NM2_TO_A2 = 100.0
#: the spectral axis any request may span (eV): low-loss EELS starts below zero, EDS reaches 100 keV
ENERGY_MIN_EV, ENERGY_MAX_EV = -1000.0, 100_000.0


def electrons(current_pA: float, time_s: float) -> float:
    """Number of beam electrons delivered by ``current_pA`` during ``time_s``."""
    return current_pA * 1e-12 * time_s / ELEMENTARY_CHARGE_C


def spot_dose_e_per_A2(n_electrons: float, probe_fwhm_nm: float) -> float:
    """Areal dose of ``n_electrons`` delivered within a probe's FWHM disc (e/Å²)."""
    return n_electrons / (math.pi * (probe_fwhm_nm / 2.0) ** 2 * NM2_TO_A2)


class Detector(StrEnum):
    """Imaging detectors."""

    HAADF = "haadf"  # high-angle annular dark field: incoherent Z-contrast
    BF = "bf"  # bright field


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @classmethod
    def checked(cls, **values: Any):
        """Validate ``values``; raise ``InvalidRequest`` naming the first bad field."""
        try:
            return cls(**values)
        except ValidationError as exc:
            raise InvalidRequest(*validation_field(exc)) from None


#: the smallest field of view a request may ask for (nm): a picometre, far below any real scan,
#: so the dose arithmetic (electrons per field area) never divides by an area that underflows
MIN_FOV_NM = 1e-3


class ImageField:
    """The field of an image request or record: ``pixels`` across ``fov_nm``, ``rows`` down."""

    fov_nm: float
    pixels: int
    rows: int | None

    @property
    def n_rows(self) -> int:
        return self.rows or self.pixels

    @property
    def fov_y_nm(self) -> float:
        """Height of the field (nm): square pixels."""
        return self.fov_nm * self.n_rows / self.pixels

    def rows_kwargs(self) -> dict[str, int]:
        """``{"rows": rows}`` for a backend call when the field is not square, else nothing (so a
        backend that scans square fields only is called as before)."""
        return {} if self.rows is None or self.rows == self.pixels else {"rows": self.rows}


class ImageRequest(ImageField, _Request):
    """A scanned image centred on the current stage position: ``pixels`` across ``fov_nm``, and
    ``rows`` down (default ``pixels``: a square field), square pixels."""

    fov_nm: float = Field(
        ge=MIN_FOV_NM, allow_inf_nan=False, description="width of the field of view (nm), 1 pm or more"
    )
    pixels: int = Field(ge=8, le=4096, description="pixels across (per side of a square field)")
    dwell_s: float = Field(gt=0, le=1.0, description="dwell time per pixel (s)")
    detector: Detector = Detector.HAADF
    rows: int | None = Field(
        None,
        ge=1,
        le=4096,
        description="pixels down (default: pixels); the field is fov_nm · rows / pixels tall",
    )


class SpectrumRequest(_Request):
    """An EELS spectrum with the probe parked at (x_nm, y_nm)."""

    x_nm: float = Field(allow_inf_nan=False, description="probe x in the sample frame (nm)")
    y_nm: float = Field(allow_inf_nan=False, description="probe y in the sample frame (nm)")
    dwell_s: float = Field(gt=0, le=600.0, description="exposure time (s)")
    energy_min_eV: float = Field(ge=ENERGY_MIN_EV, description="lowest energy of the window (eV)")
    energy_max_eV: float = Field(le=ENERGY_MAX_EV, description="highest energy of the window (eV)")

    @model_validator(mode="after")
    def _window(self) -> SpectrumRequest:
        if self.energy_max_eV <= self.energy_min_eV:
            raise ValueError("energy_max_eV must be greater than energy_min_eV")
        return self


class StageLimits(BaseModel):
    """Travel box of the stage in the sample frame (nm)."""

    model_config = ConfigDict(frozen=True)

    x_min_nm: float
    x_max_nm: float
    y_min_nm: float
    y_max_nm: float

    def contains(self, x_nm: float, y_nm: float) -> bool:
        return self.x_min_nm <= x_nm <= self.x_max_nm and self.y_min_nm <= y_nm <= self.y_max_nm


class RecordedScan(BaseModel):
    """The scan a replayed recording was made with (replay backends only): a survey of
    ``columns`` × ``rows`` pixels at this dwell and current reproduces it pixel for pixel."""

    model_config = ConfigDict(frozen=True)

    columns: int
    rows: int
    pixel_size_nm: float
    dwell_s: float
    spectrum_dwell_s: float
    current_pA: float
    signal: str = ""  # what the spectra are (EELS, EDS_TEM...), as the file says
    energy_name: str = ""  # the spectral axis' name in the file
    image: str = ""  # where the survey image came from


class Capabilities(BaseModel):
    """What a backend can do; fixed for the lifetime of a session."""

    model_config = ConfigDict(frozen=True)

    max_fov_nm: float
    min_pixels: int = 8
    max_pixels: int = 4096
    detectors: tuple[Detector, ...] = (Detector.HAADF,)
    energy_min_eV: float
    energy_max_eV: float
    dispersion_eV: float
    max_channels: int = 4096
    current_min_pA: float
    current_max_pA: float
    probe_fwhm_nm: float
    stage: StageLimits
    recorded: RecordedScan | None = None
    #: the spectra's noise is their counts' own shot noise (Poisson in detected electrons), so a
    #: value's uncertainty can be drawn from its counts; False where the backend's noise does not
    #: follow the signal (Nion's simulator adds a constant-level term), and a verdict then takes
    #: a class's spread from the observed values alone
    shot_noise_limited: bool = True


class InstrumentStatus(BaseModel):
    """A snapshot of the instrument state (JSON-serialisable)."""

    name: str
    backend: str
    stage_x_nm: float
    stage_y_nm: float
    probe_x_nm: float
    probe_y_nm: float
    beam_blanked: bool
    current_pA: float
    clock_s: float
    acquisitions: int
    total_dose_e: float
    capabilities: Capabilities


def _meta(obj: Any, skip: str) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(obj):
        if f.name == skip:
            continue
        v = getattr(obj, f.name)
        out[f.name] = v.value if isinstance(v, Detector) else v
    return out


@dataclasses.dataclass(frozen=True)
class ImageRecord(ImageField):
    """A scanned image. ``data`` is (rows, pixels) detector counts, row = y, column = x; the field is
    ``fov_nm`` wide and ``fov_y_nm`` tall (square pixels; ``rows`` None: a square field)."""

    data: np.ndarray
    fov_nm: float
    pixels: int
    dwell_s: float
    detector: Detector
    center_x_nm: float
    center_y_nm: float
    current_pA: float
    dose_e: float  # electrons delivered to the sample
    dose_e_per_A2: float  # mean areal dose over the field of view
    t_start_s: float  # instrument clock at scan start
    t_end_s: float  # instrument clock at scan end
    rows: int | None = None  # pixels down; None: pixels (a square field)

    @property
    def area_nm2(self) -> float:
        return self.fov_nm * self.fov_y_nm

    @property
    def pixel_size_nm(self) -> float:
        return self.fov_nm / self.pixels

    @property
    def origin_nm(self) -> tuple[float, float]:
        """Sample-frame (x, y) of the field's corner at pixel (0, 0)'s outer edge."""
        return self.center_x_nm - self.fov_nm / 2, self.center_y_nm - self.fov_y_nm / 2

    def pixel_to_nm(self, row: float, col: float) -> tuple[float, float]:
        """Sample-frame (x_nm, y_nm) of the centre of pixel (row, col)."""
        p = self.pixel_size_nm
        x0, y0 = self.origin_nm
        return x0 + (col + 0.5) * p, y0 + (row + 0.5) * p

    def nm_to_pixel(self, x_nm: float, y_nm: float) -> tuple[float, float]:
        """Fractional (row, col) of a sample-frame point."""
        p = self.pixel_size_nm
        x0, y0 = self.origin_nm
        return (y_nm - y0) / p - 0.5, (x_nm - x0) / p - 0.5

    def metadata(self) -> dict[str, Any]:
        """JSON-serialisable parameters (everything but the array; ``rows`` only when set)."""
        meta = _meta(self, "data")
        if meta["rows"] is None:
            del meta["rows"]
        return meta

    @classmethod
    def from_metadata(cls, data: np.ndarray, meta: dict[str, Any]) -> ImageRecord:
        fields = {f.name for f in dataclasses.fields(cls)} - {"data"}
        kw = {k: meta[k] for k in fields if k in meta or k != "rows"}  # stores from before rows
        kw["detector"] = Detector(kw["detector"])
        return cls(data=np.asarray(data), **kw)


@dataclasses.dataclass(frozen=True)
class SpectrumRecord:
    """An EELS spectrum: ``counts`` per channel, channel i at ``energy_offset_eV + i * dispersion_eV``."""

    counts: np.ndarray
    energy_offset_eV: float
    dispersion_eV: float
    x_nm: float
    y_nm: float
    dwell_s: float
    current_pA: float
    dose_e: float  # electrons delivered at the probe position
    dose_e_per_A2: float  # areal dose within the probe (FWHM disc)
    t_start_s: float
    t_end_s: float

    @property
    def energy_eV(self) -> np.ndarray:
        return self.energy_offset_eV + self.dispersion_eV * np.arange(self.counts.shape[-1])

    def metadata(self) -> dict[str, Any]:
        return _meta(self, "counts")

    @classmethod
    def from_metadata(cls, counts: np.ndarray, meta: dict[str, Any]) -> SpectrumRecord:
        fields = {f.name for f in dataclasses.fields(cls)} - {"counts"}
        return cls(counts=np.asarray(counts), **{k: meta[k] for k in fields})


def energy_axis(req: SpectrumRequest, caps: Capabilities) -> tuple[float, int]:
    """(offset_eV, channels) of the spectrometer window for ``req`` on a backend with ``caps``.

    Raises ``InvalidRequest`` when the window lies outside what the spectrometer covers.
    """
    if req.energy_min_eV < caps.energy_min_eV:
        raise InvalidRequest(
            "energy_min_eV", f"{req.energy_min_eV} eV is below the spectrometer's {caps.energy_min_eV} eV"
        )
    if req.energy_max_eV > caps.energy_max_eV:
        raise InvalidRequest(
            "energy_max_eV", f"{req.energy_max_eV} eV is above the spectrometer's {caps.energy_max_eV} eV"
        )
    channels = int(round((req.energy_max_eV - req.energy_min_eV) / caps.dispersion_eV))
    if channels > caps.max_channels:
        raise InvalidRequest(
            "energy_max_eV",
            f"window of {channels} channels exceeds {caps.max_channels} at {caps.dispersion_eV} eV/channel",
        )
    return req.energy_min_eV, max(channels, 1)


def request_sha256(request: dict[str, Any]) -> str:
    """The fingerprint of a request: SHA-256 of its canonical JSON (floats to 12 significant digits,
    so a value that went through JSON and back hashes the same)."""

    def canon(v: Any) -> Any:
        if isinstance(v, float):
            return float(f"{v:.12g}")
        if isinstance(v, dict):
            return {k: canon(x) for k, x in sorted(v.items())}
        if isinstance(v, list | tuple):
            return [canon(x) for x in v]
        return v

    return hashlib.sha256(json.dumps(canon(request), sort_keys=True).encode()).hexdigest()
