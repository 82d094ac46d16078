"""Recording conditions and where the field's files keep them.

A ``Condition`` is one value the replay needs (pixel size, energy axis, dwell, beam current)
with where it came from: read from the file (which field), given by the person, or assumed
(why). ``METADATA`` maps the metadata paths of DigitalMicrograph, Velox, HyperSpy and USID
files to conditions and units; extend it when a file keeps a condition somewhere new.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import numpy as np

Source = Literal["file", "given", "assumed"]


@dataclasses.dataclass(frozen=True)
class Condition:
    value: float
    source: Source
    where: str  # the file's field it came from, or why it was assumed

    def describe(self) -> str:
        return f"{self.value:.6g} ({self.source}: {self.where})"


def flat_metadata(d: Any, prefix: str = "") -> dict[str, Any]:
    """A nested metadata mapping as ``{"a.b.c": value}``."""
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(flat_metadata(v, f"{prefix}.{k}" if prefix else str(k)))
    else:
        out[prefix] = d
    return out


#: (metadata path suffix, condition, factor to the condition's unit)
METADATA = (
    ("Acquisition_instrument.TEM.beam_current", "current_pA", 1e3),  # nA
    ("Probe Current (nA)", "current_pA", 1e3),
    ("Optics.BeamCurrent", "current_pA", 1e12),  # A
    ("Optics.ScreenCurrent", "current_pA", 1e12),  # A (the screen reading of the beam current)
    ("Acquisition_instrument.TEM.Detector.EELS.dwell_time", "spectrum_dwell_s", 1.0),
    ("Scan.DwellTime", "spectrum_dwell_s", 1.0),
    ("EDS.Acquisition.Exposure (s)", "spectrum_dwell_s", 1.0),
    ("EELS.Acquisition.Exposure (s)", "spectrum_dwell_s", 1.0),
    # pycroscopy USID channel attributes (DigitalMicrograph tags flattened with hyphens)
    ("SI-Acquisition-Pixel-time-(s)", "spectrum_dwell_s", 1.0),
    ("EELS-Acquisition-Exposure-(s)", "spectrum_dwell_s", 1.0),
    ("Microscope-Info-Probe-Current-(nA)", "current_pA", 1e3),
)


def conditions_from(meta: dict[str, Any], notes: list[str]) -> dict[str, Condition]:
    """The conditions ``METADATA`` finds in flattened ``meta``; a value found but unusable (0, not a
    number) is noted and skipped."""
    out: dict[str, Condition] = {}
    for suffix, name, factor in METADATA:
        if name in out:
            continue
        for p, v in meta.items():
            if not p.endswith(suffix):
                continue
            try:
                x = float(v) * factor
            except (TypeError, ValueError):
                continue
            if x > 0 and np.isfinite(x):
                out[name] = Condition(x, "file", p)
                break
            notes.append(f"{name}: the file's {p} is {_num(v)}: not used")
    return out


def _num(v: Any) -> str:
    try:
        return f"{float(v):g}"
    except (TypeError, ValueError):
        return repr(v)
