"""``NionMicroscope``: the imaging, spectroscopy, beam, stage, status and clock protocols over
``nion.instrumentation``.

- Image: the scan hardware source's ``record_immediate`` with frame parameters of the request
  (``size`` rows × pixels, ``fov_nm`` the width: square pixels, ``pixel_time_us``), centred on
  the optical axis; the HAADF channel's data.
- Spectrum: the probe parked through the scan context (``probe_position`` is a fraction of the
  field that ``set_current_frame_parameters`` last set; the context used here is the largest
  field, centred), the spectrometer's first channel set by the energy-offset control, then one
  unprocessed ``start_recording(...).grab_xdatas()`` of the EELS camera; its summed channel
  cut to the window. Counts are detected electrons: the camera's counts over its gain
  (``counts_per_electron``). (A ``sum_project`` recording loses the energy calibration.)
- Beam current, blanking and stage through the STEM controller's ``GetVal``/``SetVal``/
  ``SetVal2D`` controls named in ``NionConfig``; every state read comes from the instrument.
- Dose: current × beam-on time (the scan's pixels × dwell; the exposure); the clock is wall
  time since the session opened (a real column has no simulated clock).

What usim cannot show physically (the conformance suite marks it): HAADF noise is additive
Gaussian scaled with the dwell, not shot noise; blanking changes neither HAADF nor EELS (this
backend refuses to acquire while blanked, as the protocols promise); drift is off.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from autoscope.instruments.errors import AcquisitionFailed, InvalidRequest
from autoscope.instruments.local import LocalBackend
from autoscope.instruments.nion.config import NionConfig
from autoscope.instruments.nion.stack import NionStack
from autoscope.instruments.protocols import ClosesOnExit
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

_SPECTRUM_CONTEXT_PIXELS = 1024  # the probe-position context: the largest field at this sampling


class NionMicroscope(ClosesOnExit, LocalBackend):
    """A Nion column (or Nion's simulator) behind the microscope protocols."""

    backend = "nion"

    def __init__(self, stack: NionStack, config: NionConfig | None = None) -> None:
        from nion.utils import Geometry

        self._geo = Geometry
        self.config = config or NionConfig()
        self.name = self.config.name
        self._stack = stack
        self._t0 = time.monotonic()
        self._acquisitions = 0
        self._total_dose_e = 0.0
        scan_fp = stack.scan.get_current_frame_parameters()
        device_max = _max_fov(stack.scan, scan_fp)
        max_fov = self.config.max_fov_nm or device_max
        dispersion, channels, self._gain = self._camera_facts()
        half = self.config.stage_half_range_nm
        self._caps = Capabilities(
            max_fov_nm=max_fov,
            detectors=(Detector.HAADF,),
            energy_min_eV=self.config.energy_min_eV,
            energy_max_eV=self.config.energy_max_eV,
            dispersion_eV=dispersion,
            max_channels=channels,
            current_min_pA=self.config.current_min_pA,
            current_max_pA=self.config.current_max_pA,
            probe_fwhm_nm=self.config.probe_fwhm_nm,
            stage=StageLimits(x_min_nm=-half, x_max_nm=half, y_min_nm=-half, y_max_nm=half),
            # usim's EELS noise is a constant-level Poisson term added to every channel
            # (nion.usim_device.Noise), not the counts' shot noise; a real camera's counts over its
            # gain are shot-noise limited
            shot_noise_limited=not stack.simulated,
        )
        self._haadf = self._channel_index(self.config.haadf_channel)
        self.blank_beam()  # a session starts blanked, like every backend

    # ---------------------------------------------------------------- set-up
    def _camera_facts(self) -> tuple[float, int, float]:
        """(eV per channel at the configured binning, channels, counts per electron) of the EELS
        camera, read through its calibration controls (Nion's way of naming them)."""
        eels, ctl = self._stack.eels, self._stack.controller
        cal = dict(getattr(eels.camera, "calibration_controls", {}) or {})
        binning = self.config.eels_binning
        scale = ctl.GetVal(cal["x_scale_control"]) if "x_scale_control" in cal else None
        if scale is None:
            raise AcquisitionFailed("the EELS camera has no energy-scale calibration control")
        gain = cal.get("counts_per_electron_value")
        if gain is None and "counts_per_electron_control" in cal:
            gain = ctl.GetVal(cal["counts_per_electron_control"])
        gain = float(gain or getattr(ctl, "counts_per_electron", 1) or 1)
        _, width = eels.get_expected_dimensions(binning)
        return float(scale) * binning, int(width), gain

    def _channel_index(self, name: str) -> int:
        scan = self._stack.scan
        names = [scan.get_channel_state(i).name for i in range(scan.channel_count)]
        if name not in names:
            raise InvalidRequest(
                "haadf_channel", f"the scan has no channel {name!r}; it has {', '.join(names)}"
            )
        return names.index(name)

    def close(self) -> None:
        self._stack.close()

    # ---------------------------------------------------------------- Beam (on the instrument)
    def blank_beam(self) -> None:
        self._set(self.config.controls.blank, 1.0)

    def unblank_beam(self) -> None:
        self._set(self.config.controls.blank, 0.0)

    # LocalBackend's beam_blanked, beam_current_pA, stage_position_nm, status and now_s read these
    @property
    def _blanked(self) -> bool:
        return bool(self._get(self.config.controls.blank))

    @property
    def _current_pA(self) -> float:
        return float(self._get(self.config.controls.beam_current)) * 1e12

    @property
    def _clock_s(self) -> float:  # wall time since the session opened: a real column has no other
        return time.monotonic() - self._t0

    def set_beam_current(self, current_pA: float) -> None:
        lo, hi = self._caps.current_min_pA, self._caps.current_max_pA
        if not (math.isfinite(current_pA) and lo <= current_pA <= hi):
            raise InvalidRequest("current_pA", f"{current_pA} pA is outside the range {lo}..{hi} pA")
        self._set(self.config.controls.beam_current, float(current_pA) * 1e-12)

    def _get(self, control: str) -> float:
        value = self._stack.controller.GetVal(control)
        if value is None:
            raise AcquisitionFailed(f"the STEM controller has no control {control!r}")
        return float(value)

    def _set(self, control: str, value: float) -> None:
        if self._stack.controller.SetVal(control, value) is False:
            raise AcquisitionFailed(f"the STEM controller refused {control} = {value}")

    # ---------------------------------------------------------------- Stage
    @property
    def _stage(self) -> tuple[float, float]:
        p = self._stack.controller.GetVal2D(self.config.controls.stage)
        s = self.config.stage_sign
        return s * p.x * 1e9, s * p.y * 1e9

    def move_stage(self, x_nm: float, y_nm: float) -> None:
        x_nm, y_nm = self._check_stage_target(x_nm, y_nm)
        s = self.config.stage_sign
        point = self._geo.FloatPoint(y=s * y_nm * 1e-9, x=s * x_nm * 1e-9)
        if self._stack.controller.SetVal2D(self.config.controls.stage, point) is False:
            raise AcquisitionFailed(f"the STEM controller refused the stage move to ({x_nm}, {y_nm}) nm")

    # ---------------------------------------------------------------- Probe
    def _spectrum_context(self):
        """Frame parameters of the probe-position context: the largest field, centred."""
        fp = self._stack.scan.get_current_frame_parameters()
        fp.size = self._geo.IntSize(height=_SPECTRUM_CONTEXT_PIXELS, width=_SPECTRUM_CONTEXT_PIXELS)
        fp.fov_nm = self._caps.max_fov_nm
        fp.center_nm = self._geo.FloatPoint()
        fp.rotation_rad = 0.0
        return fp

    def move_probe(self, x_nm: float, y_nm: float) -> None:
        self._check_in_field(x_nm, y_nm)
        scan = self._stack.scan
        scan.set_current_frame_parameters(self._spectrum_context())
        sx, sy = self.stage_position_nm()
        f = self._caps.max_fov_nm
        scan.probe_position = self._geo.FloatPoint(y=(y_nm - sy) / f + 0.5, x=(x_nm - sx) / f + 0.5)

    def probe_position_nm(self) -> tuple[float, float]:
        """Where the probe is parked in the sample frame, from the instrument's probe position
        (a fraction of the scan context); the stage position when it is not parked."""
        ctl = self._stack.controller
        p, ctx = ctl.probe_position, ctl.scan_context
        sx, sy = self.stage_position_nm()
        if p is None or not ctx.fov_nm:
            return sx, sy
        c = ctx.center_nm or self._geo.FloatPoint()
        f = ctx.fov_nm
        h = ctx.fov_size_nm.height if ctx.fov_size_nm else f
        return sx + c.x + (p.x - 0.5) * f, sy + c.y + (p.y - 0.5) * h

    # ---------------------------------------------------------------- Imaging
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
        if req.detector not in self._caps.detectors:
            raise InvalidRequest("detector", f"{req.detector.value}: this backend records HAADF only")
        if req.fov_nm > self._caps.max_fov_nm or req.fov_y_nm > self._caps.max_fov_nm:
            raise InvalidRequest(
                "fov_nm", f"{req.fov_nm} nm exceeds the largest field, {self._caps.max_fov_nm} nm"
            )
        self._require_beam()
        scan = self._stack.scan
        fp = scan.get_current_frame_parameters()
        fp.size = self._geo.IntSize(height=req.n_rows, width=req.pixels)
        fp.fov_nm = req.fov_nm
        fp.pixel_time_us = req.dwell_s * 1e6
        fp.center_nm = self._geo.FloatPoint()
        fp.rotation_rad = 0.0
        enabled = scan.get_enabled_channel_indexes()
        if self._haadf not in enabled:
            scan.set_channel_enabled(self._haadf, True)
        current, (cx, cy) = self.beam_current_pA(), self.stage_position_nm()
        t0 = self.now_s()
        try:
            xdatas = scan.record_immediate(fp, sync_timeout=self.config.timeout_s)
        except Exception as exc:
            raise AcquisitionFailed(f"the Nion scan failed: {exc}") from exc
        t1 = self.now_s()
        order = sorted(set(enabled) | {self._haadf})
        xdata = xdatas[order.index(self._haadf)] if len(xdatas) > order.index(self._haadf) else None
        if xdata is None or xdata.data is None:
            raise AcquisitionFailed("the Nion scan returned no HAADF frame")
        data = np.asarray(xdata.data, dtype=np.float64)
        if data.shape != (req.n_rows, req.pixels):
            raise AcquisitionFailed(f"the Nion scan returned {data.shape}, not {(req.n_rows, req.pixels)}")
        dose = electrons(current, req.n_rows * req.pixels * req.dwell_s)
        self._acquisitions += 1
        self._total_dose_e += dose
        return ImageRecord(
            data=data,
            fov_nm=req.fov_nm,
            pixels=req.pixels,
            dwell_s=req.dwell_s,
            detector=req.detector,
            center_x_nm=cx,
            center_y_nm=cy,
            current_pA=current,
            dose_e=dose,
            dose_e_per_A2=dose / (req.fov_nm * req.fov_y_nm * NM2_TO_A2),
            t_start_s=t0,
            t_end_s=t1,
            rows=req.rows,
        )

    # ---------------------------------------------------------------- Spectroscopy
    def acquire_spectrum(
        self, x_nm: float, y_nm: float, dwell_s: float, energy_min_eV: float, energy_max_eV: float
    ) -> SpectrumRecord:
        req = SpectrumRequest.checked(
            x_nm=x_nm, y_nm=y_nm, dwell_s=dwell_s, energy_min_eV=energy_min_eV, energy_max_eV=energy_max_eV
        )
        self._check_in_field(req.x_nm, req.y_nm)
        offset, channels = energy_axis(req, self._caps)
        self._require_beam()
        self.move_probe(req.x_nm, req.y_nm)
        self._set(self.config.controls.energy_offset, offset)
        eels = self._stack.eels
        cfp = eels.get_current_frame_parameters()
        cfp.exposure_ms = req.dwell_s * 1e3
        cfp.binning = self.config.eels_binning
        cfp.processing = None  # unprocessed: a sum_project recording loses the energy calibration
        current = self.beam_current_pA()
        t0 = self.now_s()
        try:
            xdatas = eels.start_recording(frame_parameters=cfp).grab_xdatas(
                timeout=req.dwell_s + self.config.timeout_s
            )
        except Exception as exc:
            raise AcquisitionFailed(f"the Nion EELS camera failed: {exc}") from exc
        t1 = self.now_s()
        summed = next((x for x in xdatas if x is not None and x.data is not None and x.data.ndim == 1), None)
        if summed is None:
            raise AcquisitionFailed("the Nion EELS camera returned no summed spectrum")
        cal = summed.dimensional_calibrations[-1]
        first = int(round((offset - cal.offset) / cal.scale))
        counts = np.asarray(summed.data, dtype=np.float64)[first : first + channels] / self._gain
        if first < 0 or counts.size != channels or not math.isclose(cal.scale, self._caps.dispersion_eV):
            raise AcquisitionFailed(
                f"the EELS camera's calibration ({cal.offset} eV + {cal.scale} eV/channel, "
                f"{summed.data.shape[-1]} channels) does not cover {offset} eV + {channels} channels"
            )
        dose = electrons(current, req.dwell_s)
        self._acquisitions += 1
        self._total_dose_e += dose
        return SpectrumRecord(
            counts=counts,
            energy_offset_eV=cal.offset + first * cal.scale,
            dispersion_eV=cal.scale,
            x_nm=req.x_nm,
            y_nm=req.y_nm,
            dwell_s=req.dwell_s,
            current_pA=current,
            dose_e=dose,
            dose_e_per_A2=spot_dose_e_per_A2(dose, self._caps.probe_fwhm_nm),
            t_start_s=t0,
            t_end_s=t1,
        )


def _max_fov(scan: Any, fp: Any) -> float:
    device = getattr(scan, "scan_device", None)
    calc = getattr(device, "calculate_max_field_of_view", None)
    if calc is not None:
        return float(calc(fp))
    stream = getattr(scan, "max_field_of_view_nm_stream", None)
    return float(stream.value) if stream is not None and stream.value else 1000.0


def open_nion(config: NionConfig | None = None) -> NionMicroscope:
    """A Nion column as ``config`` says (attached inside Swift, else Nion's simulator started)."""
    config = config or NionConfig()
    stack = NionStack.open(config)
    try:
        return NionMicroscope(stack, config)
    except BaseException:
        stack.close()
        raise
