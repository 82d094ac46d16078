"""Replay of a recorded spectrum image through the microscope protocols.

A dataset holds a survey image ``image`` (H, W) and ``spectra`` (H, W, E) with the
conditions they were recorded at. New acquisitions are served from the recording: an
image is the recording over the requested field (pixel for pixel on the recorded grid,
bilinear elsewhere), a spectrum the one at the nearest recorded pixel, cut to the
requested window. Both scale with the electrons per pixel (current × dwell) relative to
the recording, ``s``; how the counts are resampled is a ``NoiseModel`` per stream:

- ``poisson``: detector counts, ``value = offset + gain · N``. At ``s ≤ 1`` the recorded
  counts are thinned binomially (each recorded electron kept with probability ``s``),
  which is exactly Poisson at the lower dose and does not count the recorded noise
  twice. At ``s > 1`` the counts are scaled, ``s · N``, nothing drawn: no replay can be
  less noisy than its recording, and drawing more would add noise on top of it (the
  relative noise stays the recording's, ``1/√N``, above a real acquisition's). Counts that
  are not whole numbers (a resampled field, a recording of expectations) are drawn as
  Poisson about their scaled expectation.
- ``none``: ``offset + s · (value − offset)``, nothing drawn; signed (dark-subtracted)
  data keep their sign.

``choose_noise`` picks the model a recording supports when none is given: ``poisson``
for non-negative whole counts, else ``none``, with the reason. When a ``poisson``
acquisition's scale leaves it mostly shot noise (the expected correlation with the
recording below ``SHOT_NOISE_CORR``), the replay warns, naming the scale factor and the
dwell that would reach it. Counts scale with the electrons per pixel, not with the pixel
area: a scanned probe samples a point. Parts of a field beyond the recording repeat its
edge values.

Files: HDF5 (``.h5``/``.hdf5``: datasets ``image``, ``spectra``, scalars as root
attributes or 0-d datasets) or NumPy ``.npz``. Pycroscopy/sidpy NSID files are not
read: NSID keeps the arrays and their dimension scales, but the recording conditions
(dwell, beam current) have no fixed place in its metadata, so a replay of one would
have to guess the dose; convert with ``save_spectrum_image`` giving them explicitly.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path
from typing import Literal

import h5py
import numpy as np
from scipy import ndimage

from autoscope.instruments.errors import InvalidRequest
from autoscope.instruments.local import LocalBackend
from autoscope.instruments.records import (
    NM2_TO_A2,
    Capabilities,
    Detector,
    ImageRecord,
    ImageRequest,
    RecordedScan,
    SpectrumRecord,
    SpectrumRequest,
    StageLimits,
    electrons,
    energy_axis,
    spot_dose_e_per_A2,
)

log = logging.getLogger(__name__)

FORMAT = "autoscope.spectrum_image/1"
SCALARS = (
    "pixel_size_nm",
    "energy_offset_eV",
    "dispersion_eV",
    "dwell_s",
    "spectrum_dwell_s",
    "current_pA",
    "origin_x_nm",
    "origin_y_nm",
)
_OPTIONAL = {"origin_x_nm": 0.0, "origin_y_nm": 0.0}

#: simulated overheads of the instrument clock (s)
LINE_FLYBACK_S = 100e-6
SPECTRUM_READOUT_S = 5e-3
STAGE_SETTLE_S = 0.5
STAGE_SPEED_NM_PER_S = 2000.0
PROBE_SETTLE_S = 1e-3


#: below this expected correlation of a replayed image with its recording the replay warns
SHOT_NOISE_CORR = 0.9


@dataclasses.dataclass(frozen=True)
class NoiseModel:
    """How a replayed stream is resampled (see the module doc); ``why`` says who chose it."""

    kind: Literal["poisson", "none"]
    gain: float = 1.0  # recorded value per detected count
    offset: float = 0.0  # black level, not scaled with the dose
    why: str = "given"

    def __post_init__(self) -> None:
        if self.kind not in ("poisson", "none"):
            raise InvalidRequest("noise", f"{self.kind!r}: choose poisson or none")
        if not (self.gain > 0 and math.isfinite(self.gain)) or not math.isfinite(self.offset):
            raise InvalidRequest(
                "noise", f"gain must be positive and offset finite, got {self.gain}, {self.offset}"
            )

    def counts(self, values: np.ndarray) -> np.ndarray:
        """Detected counts behind recorded ``values``."""
        return (np.asarray(values, dtype=np.float64) - self.offset) / self.gain

    def resample(self, values: np.ndarray, scale: float, rng: np.random.Generator) -> np.ndarray:
        """``values`` as recorded at dose 1, replayed at dose ``scale``."""
        n = self.counts(values)
        if self.kind == "none":
            return self.offset + self.gain * scale * n
        bad = ~np.isfinite(n)
        if bad.any():  # a NaN read-out is replayed as one; the rest is resampled
            out = self.resample(np.where(bad, self.offset, values), scale, rng)
            return np.where(bad, np.nan, out)
        whole = np.round(n)
        if np.all(np.abs(n - whole) < 1e-6) and np.all(whole >= 0):
            if scale > 1.0:
                return self.offset + self.gain * scale * whole
            drawn = rng.binomial(whole.astype(np.int64), scale)
        else:
            drawn = rng.poisson(np.clip(scale * n, 0.0, None))
        return self.offset + self.gain * drawn.astype(np.float64)

    def expected_correlation(self, values: np.ndarray, scale: float) -> float:
        """Correlation of a thinned replay with the recording itself: √(sV / (sV + (1 − s)μ)),
        V and μ the variance and mean of the recorded counts (1 for ``none``, or ``s ≥ 1``)."""
        if self.kind == "none" or scale >= 1.0:
            return 1.0
        n = self.counts(values)
        v, mu = float(np.var(n)), float(np.mean(np.clip(n, 0.0, None)))
        if v <= 0:
            return 0.0
        return math.sqrt(scale * v / (scale * v + (1.0 - scale) * mu))

    def scale_for_correlation(self, values: np.ndarray, corr: float = SHOT_NOISE_CORR) -> float:
        """The smallest dose scale whose expected correlation reaches ``corr``."""
        n = self.counts(values)
        v, mu, c2 = float(np.var(n)), float(np.mean(np.clip(n, 0.0, None))), corr**2
        return 1.0 if v <= 0 else c2 * mu / ((1 - c2) * v + c2 * mu)


def choose_noise(values: np.ndarray, what: str) -> NoiseModel:
    """The resampling a recording supports: ``poisson`` for non-negative whole counts, else ``none``."""
    raw = np.asarray(values)
    counts = np.issubdtype(raw.dtype, np.integer)  # stored as integers: finite and whole, no pass needed
    a = raw if counts else raw.astype(np.float64)
    if not counts and not np.all(np.isfinite(a)):
        return NoiseModel("none", why=f"the {what} values include NaN or inf: replayed as recorded, scaled")
    if (not counts or raw.dtype.kind == "i") and np.any(a < 0):
        frac = float(np.mean(a < 0))
        return NoiseModel(
            "none",
            why=f"{frac:.1%} of the {what} values are negative (dark-subtracted or signed): replayed as "
            "recorded, scaled, not resampled",
        )
    if not counts and not np.allclose(a, np.round(a), atol=1e-6):
        return NoiseModel(
            "none",
            why=f"the {what} values are not whole counts: replayed scaled, not resampled (give a gain and offset "
            "to resample them as detector counts)",
        )
    lo, med = float(np.min(a)), float(np.median(a))
    if med > 0 and lo > 0.5 * med and np.ptp(a) > 0:  # one value (a single pixel) is no pedestal
        return NoiseModel(
            "none",
            why=f"the {what} sit on a pedestal ({lo:.6g}, median {med:.6g}: a detector black level?): replayed "
            "scaled, not resampled; give its gain and offset to resample it as counts",
        )
    return NoiseModel("poisson", why=f"the {what} values are non-negative whole counts")


@dataclasses.dataclass(frozen=True)
class SpectrumImage:
    """A recorded spectrum image. Pixel (row, col) is centred at
    (origin_x_nm + (col + 0.5) · pixel_size_nm, origin_y_nm + (row + 0.5) · pixel_size_nm);
    spectrum channel i is at energy_offset_eV + i · dispersion_eV.
    """

    image: np.ndarray  # (H, W) HAADF counts at dwell_s, current_pA
    spectra: np.ndarray  # (H, W, E) EELS counts at spectrum_dwell_s, current_pA
    pixel_size_nm: float
    energy_offset_eV: float
    dispersion_eV: float
    dwell_s: float
    spectrum_dwell_s: float
    current_pA: float
    origin_x_nm: float = 0.0
    origin_y_nm: float = 0.0
    image_noise: NoiseModel | None = None  # None: choose_noise decides
    spectrum_noise: NoiseModel | None = None
    signal: str = ""  # labels for figures: the signal, the spectral axis, the image's source
    energy_name: str = ""
    image_source: str = ""

    def __post_init__(self) -> None:
        if self.image.ndim != 2 or self.spectra.ndim != 3 or self.spectra.shape[:2] != self.image.shape:
            raise ValueError(
                f"need image (H, W) and spectra (H, W, E); got {self.image.shape} and {self.spectra.shape}"
            )
        for name in ("pixel_size_nm", "dispersion_eV", "dwell_s", "spectrum_dwell_s", "current_pA"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @property
    def extent_nm(self) -> tuple[float, float, float, float]:
        """(x_min, x_max, y_min, y_max) covered by the recording."""
        h, w = self.image.shape
        return (
            self.origin_x_nm,
            self.origin_x_nm + w * self.pixel_size_nm,
            self.origin_y_nm,
            self.origin_y_nm + h * self.pixel_size_nm,
        )

    @property
    def energy_eV(self) -> np.ndarray:
        return self.energy_offset_eV + self.dispersion_eV * np.arange(self.spectra.shape[2])

    def recorded_spectrum(
        self, x_nm: float, y_nm: float, offset_eV: float, channels: int
    ) -> tuple[float, np.ndarray]:
        """(offset_eV, counts) as recorded at the pixel nearest (x, y), over the ``channels``
        recorded channels starting nearest ``offset_eV`` (both clamped to the recording)."""
        h, w = self.image.shape
        col = min(max(int(math.floor((x_nm - self.origin_x_nm) / self.pixel_size_nm)), 0), w - 1)
        row = min(max(int(math.floor((y_nm - self.origin_y_nm) / self.pixel_size_nm)), 0), h - 1)
        first = int(round((offset_eV - self.energy_offset_eV) / self.dispersion_eV))
        first = min(max(first, 0), self.spectra.shape[2] - channels)
        counts = self.spectra[row, col, first : first + channels].astype(np.float64)
        return self.energy_offset_eV + first * self.dispersion_eV, counts


def save_spectrum_image(
    path: str | Path,
    image: np.ndarray,
    spectra: np.ndarray,
    *,
    pixel_size_nm: float,
    energy_offset_eV: float,
    dispersion_eV: float,
    dwell_s: float,
    spectrum_dwell_s: float,
    current_pA: float,
    origin_x_nm: float = 0.0,
    origin_y_nm: float = 0.0,
    image_noise: NoiseModel | None = None,
    spectrum_noise: NoiseModel | None = None,
) -> Path:
    """Write a spectrum image as HDF5 (``.h5``/``.hdf5``) or NumPy (``.npz``); returns the path.

    ``image_noise``/``spectrum_noise``: how a replay resamples each (stored when given; a
    recording of expectations, such as a twin's, says ``NoiseModel("poisson")``)."""
    path = Path(path)
    si = SpectrumImage(
        np.asarray(image),
        np.asarray(spectra),
        float(pixel_size_nm),
        float(energy_offset_eV),
        float(dispersion_eV),
        float(dwell_s),
        float(spectrum_dwell_s),
        float(current_pA),
        float(origin_x_nm),
        float(origin_y_nm),
    )
    scalars: dict[str, object] = {k: getattr(si, k) for k in SCALARS}
    for k, m in (("image_noise", image_noise), ("spectrum_noise", spectrum_noise)):
        if m is not None:
            scalars[k] = json.dumps({"kind": m.kind, "gain": m.gain, "offset": m.offset})
    if path.suffix in (".h5", ".hdf5"):
        with h5py.File(path, "w") as f:
            f.attrs["format"] = FORMAT
            f.create_dataset("image", data=si.image, compression="gzip")
            f.create_dataset("spectra", data=si.spectra, compression="gzip", chunks=True)
            for k, v in scalars.items():
                f.attrs[k] = v
    elif path.suffix == ".npz":
        np.savez_compressed(path, image=si.image, spectra=si.spectra, **scalars)
    else:
        raise ValueError(f"unknown spectrum-image format {path.suffix!r}: use .h5 or .npz")
    return path


def load_spectrum_image(path: str | Path) -> SpectrumImage:
    """Read a spectrum image written by ``save_spectrum_image`` (or laid out the same way)."""
    path = Path(path)
    values: dict[str, float] = {}
    noise: dict[str, NoiseModel] = {}
    if path.suffix in (".h5", ".hdf5"):
        with h5py.File(path, "r") as f:
            if "image" not in f or "spectra" not in f:
                raise ValueError(
                    f"{path}: needs datasets 'image' and 'spectra' (NSID files are not supported)"
                )
            image, spectra = f["image"][()], f["spectra"][()]
            for k in SCALARS:
                if k in f.attrs:
                    values[k] = float(f.attrs[k])
                elif k in f:
                    values[k] = float(f[k][()])
            noise = {k: _noise(f.attrs[k], path) for k in _NOISE if k in f.attrs}
    elif path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            image, spectra = z["image"], z["spectra"]
            values = {k: float(z[k]) for k in SCALARS if k in z.files}
            noise = {k: _noise(str(z[k]), path) for k in _NOISE if k in z.files}
    else:
        raise ValueError(f"unknown spectrum-image format {path.suffix!r}: use .h5 or .npz")
    missing = [k for k in SCALARS if k not in values and k not in _OPTIONAL]
    if missing:
        raise ValueError(f"{path}: missing recording conditions {missing}")
    return SpectrumImage(
        image=np.asarray(image), spectra=np.asarray(spectra), **{**_OPTIONAL, **values}, **noise
    )


_NOISE = ("image_noise", "spectrum_noise")


def _noise(text: str | bytes, path: Path) -> NoiseModel:
    try:
        d = json.loads(text)
        return NoiseModel(
            d["kind"], float(d.get("gain", 1.0)), float(d.get("offset", 0.0)), why=f"stored in {path.name}"
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: unreadable noise model {text!r}") from exc


class ReplayMicroscope(LocalBackend):
    """A microscope that replays a recorded spectrum image (HAADF only).

    The stage travels over the recorded extent, the largest field is the extent, the
    clock is simulated. Each stream is resampled by the recording's ``NoiseModel``
    (``choose_noise`` when it has none); ``poisson=False`` replays both as ``none``.
    """

    backend = "replay"

    def __init__(
        self,
        path: str | Path | SpectrumImage,
        *,
        seed: int = 0,
        poisson: bool = True,
        name: str | None = None,
    ) -> None:
        self.data = path if isinstance(path, SpectrumImage) else load_spectrum_image(path)
        self.name = name or (Path(path).stem if not isinstance(path, SpectrumImage) else "replay")
        d = self.data
        if poisson:
            self.image_noise = d.image_noise or choose_noise(d.image, "image")
            self.spectrum_noise = d.spectrum_noise or choose_noise(d.spectra, "spectra")
        else:
            self.image_noise = dataclasses.replace(
                d.image_noise or NoiseModel("none"), kind="none", why="asked"
            )
            self.spectrum_noise = dataclasses.replace(
                d.spectrum_noise or NoiseModel("none"), kind="none", why="asked"
            )
        for what, m in (("image", self.image_noise), ("spectra", self.spectrum_noise)):
            log.info("replay %s: %s (gain %g, offset %g): %s", what, m.kind, m.gain, m.offset, m.why)
        self._warned: set[tuple[float, int]] = set()
        self._rng = np.random.default_rng(seed)
        x0, x1, y0, y1 = d.extent_nm
        self._stage = ((x0 + x1) / 2, (y0 + y1) / 2)
        self._probe = self._stage
        self._blanked = True
        self._current_pA = d.current_pA
        self._clock_s = 0.0
        self._acquisitions = 0
        self._total_dose_e = 0.0
        n_e = d.spectra.shape[2]
        self._caps = Capabilities(
            max_fov_nm=max(x1 - x0, y1 - y0),
            detectors=(Detector.HAADF,),
            energy_min_eV=d.energy_offset_eV,
            energy_max_eV=d.energy_offset_eV + n_e * d.dispersion_eV,
            dispersion_eV=d.dispersion_eV,
            max_channels=n_e,
            current_min_pA=min(0.1, d.current_pA),
            current_max_pA=max(1000.0, d.current_pA),
            probe_fwhm_nm=d.pixel_size_nm,
            stage=StageLimits(x_min_nm=x0, x_max_nm=x1, y_min_nm=y0, y_max_nm=y1),
            recorded=RecordedScan(
                columns=d.image.shape[1],
                rows=d.image.shape[0],
                pixel_size_nm=d.pixel_size_nm,
                dwell_s=d.dwell_s,
                spectrum_dwell_s=d.spectrum_dwell_s,
                current_pA=d.current_pA,
                signal=d.signal,
                energy_name=d.energy_name,
                image=d.image_source,
            ),
        )
        log.info("replaying %s: %s spectrum image, %.3g nm/px", self.name, d.spectra.shape, d.pixel_size_nm)

    # -- helpers ------------------------------------------------------------------------------

    def _warn_shot_noise(self, recorded: np.ndarray, scale: float, dwell_s: float, pixels: int) -> None:
        """Warn (once per dwell and size) when an image at ``scale`` would be mostly shot noise."""
        m = self.image_noise
        corr = m.expected_correlation(recorded, scale)
        if corr >= SHOT_NOISE_CORR or (dwell_s, pixels) in self._warned:
            return
        self._warned.add((dwell_s, pixels))
        need = m.scale_for_correlation(recorded)
        log.warning(
            "replay: an image at %.3g s dwell is %.3g× the recorded electrons per pixel; at that scale the "
            "replay is mostly shot noise (expected correlation with the recording %.2f < %.2f). A dwell of "
            "%.3g s (scale %.3g) would reach it.",
            dwell_s,
            scale,
            corr,
            SHOT_NOISE_CORR,
            dwell_s * need / scale,
            need,
        )

    def _check_in_field(self, x_nm: float, y_nm: float) -> None:
        """Raise InvalidRequest unless (x, y) lies on the data and in the scan field."""
        super()._check_in_field(x_nm, y_nm)
        x0, x1, y0, y1 = self.data.extent_nm
        for field, v, lo, hi in (("x_nm", x_nm, x0, x1), ("y_nm", y_nm, y0, y1)):
            if not lo <= v <= hi:
                raise InvalidRequest(field, f"{v} nm lies outside the recorded data [{lo}, {hi}] nm")

    # -- Imaging, Spectroscopy ----------------------------------------------------------------

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
        caps = self._caps
        if req.detector not in caps.detectors:
            raise InvalidRequest(
                "detector", f"{req.detector.value} was not recorded; this replay has HAADF only"
            )
        x0, x1, y0, y1 = self.data.extent_nm
        for field, size, extent in (("fov_nm", req.fov_nm, x1 - x0), ("rows", req.fov_y_nm, y1 - y0)):
            if size > extent * (1 + 1e-9):
                raise InvalidRequest(
                    field,
                    f"a field {req.fov_nm:g} × {req.fov_y_nm:g} nm exceeds the recorded {x1 - x0:g} × {y1 - y0:g} nm",
                )
        self._require_beam()
        d = self.data
        cx, cy = self._stage
        p = req.fov_nm / req.pixels
        cols = (
            cx + (np.arange(req.pixels) + 0.5) * p - req.fov_nm / 2 - d.origin_x_nm
        ) / d.pixel_size_nm - 0.5
        rows = (
            cy + (np.arange(req.n_rows) + 0.5) * p - req.fov_y_nm / 2 - d.origin_y_nm
        ) / d.pixel_size_nm - 0.5
        rr, cc = np.meshgrid(rows, cols, indexing="ij")
        on_grid = np.allclose(rr, np.round(rr), atol=1e-6) and np.allclose(cc, np.round(cc), atol=1e-6)
        # on the recorded grid the pixels are the recorded ones, exactly (whole counts stay whole)
        recorded = ndimage.map_coordinates(
            d.image.astype(np.float64), [rr, cc], order=0 if on_grid else 1, mode="nearest"
        )
        scale = (self._current_pA * req.dwell_s) / (d.current_pA * d.dwell_s)
        self._warn_shot_noise(recorded, scale, req.dwell_s, req.pixels)
        data = self.image_noise.resample(recorded, scale, self._rng)

        scan_s = req.pixels * req.n_rows * req.dwell_s
        dose_e = electrons(self._current_pA, scan_s)
        t0 = self._clock_s
        self._clock_s += scan_s + req.n_rows * LINE_FLYBACK_S
        self._acquisitions += 1
        self._total_dose_e += dose_e
        return ImageRecord(
            data=data,
            fov_nm=req.fov_nm,
            pixels=req.pixels,
            dwell_s=req.dwell_s,
            detector=req.detector,
            center_x_nm=cx,
            center_y_nm=cy,
            current_pA=self._current_pA,
            dose_e=dose_e,
            dose_e_per_A2=dose_e / (req.fov_nm * req.fov_y_nm * NM2_TO_A2),
            t_start_s=t0,
            t_end_s=self._clock_s,
            rows=req.rows,
        )

    def acquire_spectrum(
        self, x_nm: float, y_nm: float, dwell_s: float, energy_min_eV: float, energy_max_eV: float
    ) -> SpectrumRecord:
        req = SpectrumRequest.checked(
            x_nm=x_nm, y_nm=y_nm, dwell_s=dwell_s, energy_min_eV=energy_min_eV, energy_max_eV=energy_max_eV
        )
        d = self.data
        offset_eV, channels = energy_axis(req, self._caps)
        self._check_in_field(req.x_nm, req.y_nm)
        self._require_beam()
        offset_eV, recorded = d.recorded_spectrum(req.x_nm, req.y_nm, offset_eV, channels)
        scale = (self._current_pA * req.dwell_s) / (d.current_pA * d.spectrum_dwell_s)
        counts = self.spectrum_noise.resample(recorded, scale, self._rng)

        dose_e = electrons(self._current_pA, req.dwell_s)
        self._probe = (req.x_nm, req.y_nm)
        t0 = self._clock_s
        self._clock_s += PROBE_SETTLE_S + req.dwell_s + SPECTRUM_READOUT_S
        self._acquisitions += 1
        self._total_dose_e += dose_e
        return SpectrumRecord(
            counts=counts,
            energy_offset_eV=offset_eV,
            dispersion_eV=d.dispersion_eV,
            x_nm=req.x_nm,
            y_nm=req.y_nm,
            dwell_s=req.dwell_s,
            current_pA=self._current_pA,
            dose_e=dose_e,
            dose_e_per_A2=spot_dose_e_per_A2(dose_e, self._caps.probe_fwhm_nm),
            t_start_s=t0,
            t_end_s=self._clock_s,
        )

    # -- Beam ---------------------------------------------------------------------------------

    def probe_position_nm(self) -> tuple[float, float]:
        return self._probe

    def move_probe(self, x_nm: float, y_nm: float) -> None:
        self._check_in_field(x_nm, y_nm)
        self._probe = (float(x_nm), float(y_nm))
        self._clock_s += PROBE_SETTLE_S

    # -- Stage, Status, Clock -----------------------------------------------------------------

    def move_stage(self, x_nm: float, y_nm: float) -> None:
        x_nm, y_nm = self._check_stage_target(x_nm, y_nm)
        dx_nm, dy_nm = x_nm - self._stage[0], y_nm - self._stage[1]
        self._stage = (float(x_nm), float(y_nm))
        # the scan deflection is kept: the probe moves with the stage in the sample frame
        self._probe = (self._probe[0] + dx_nm, self._probe[1] + dy_nm)
        self._clock_s += STAGE_SETTLE_S + math.hypot(dx_nm, dy_nm) / STAGE_SPEED_NM_PER_S
