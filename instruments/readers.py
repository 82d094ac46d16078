"""Recorded spectrum images from the field's own files, with what was read and what assumed.

Readers: RosettaSciIO for DigitalMicrograph (``.dm3``/``.dm4``), Velox and other EMD
(``.emd``), HyperSpy (``.hspy``/``.zspy``); h5py for pycroscopy USID HDF5 (a
``Measurement_*/Channel_*`` group with ``Raw_Data``, ``Position_*`` and
``Spectroscopic_*``); the project's own ``.h5``/``.npz`` layout (``replay.save_spectrum_image``).

A **replay file** (``.yaml``/``.yml``/``.toml``/``.json``; ``replay_files.py``) names a
recording and what the person knows about it that the file does not say; ``read_recording``
reads one as well as the recording itself.

Every recording condition the replay needs (pixel size, energy axis, dwell, beam current)
comes back as a ``Condition`` that says whether it was read from the file (and from which
field), given by the caller, or assumed (and why). Axes are converted to nm and eV from the
units the file names. Spectra are kept as recorded (signed, dark-subtracted data included);
how a replay resamples them is the replay's choice, not the reader's.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np

from autoscope.instruments.conditions import Condition, Source, conditions_from, flat_metadata
from autoscope.instruments.errors import ConfigError
from autoscope.instruments.replay import SCALARS, NoiseModel, SpectrumImage, choose_noise, load_spectrum_image

log = logging.getLogger(__name__)


#: values used when a file has none, each marked ``assumed`` with this reason
ASSUMED = {
    "current_pA": (100.0, "no usable beam current in the file"),
    "spectrum_dwell_s": (1e-3, "no usable spectrum dwell in the file"),
}
_LENGTH_NM = {"nm": 1.0, "µm": 1e3, "um": 1e3, "μm": 1e3, "Å": 0.1, "A": 0.1, "pm": 1e-3, "mm": 1e6, "m": 1e9}
_ENERGY_EV = {"eV": 1.0, "keV": 1e3, "meV": 1e-3}
RSCIIO_SUFFIXES = {
    ".dm3": "digitalmicrograph",
    ".dm4": "digitalmicrograph",
    ".emd": "emd",
    ".hspy": "hspy",
    ".zspy": "zspy",
}
SUFFIXES = (*RSCIIO_SUFFIXES, ".h5", ".hdf5", ".npz")
REPLAY_FILE_SUFFIXES = (".yaml", ".yml", ".toml", ".json")
GIVEN = ("dwell_s", "spectrum_dwell_s", "current_pA", "pixel_size_nm", "energy_offset_eV", "dispersion_eV")


class RecordingError(ConfigError):
    """A file that cannot be read as a spectrum image: ``field`` names what is wrong (``file``, a
    condition, an axis), ``path`` the file (exit code 2 on the command line)."""


@dataclasses.dataclass(frozen=True)
class Recording:
    """One spectrum image as recorded: ``spectra`` (H, W, E), the survey ``image`` on the same grid,
    the spectral axis in eV, the conditions with their provenance, and notes a scientist should read."""

    path: Path
    reader: str
    spectra: np.ndarray
    image: np.ndarray
    image_source: str
    signal_type: str
    energy_name: str
    conditions: dict[str, Condition]
    notes: tuple[str, ...] = ()
    image_noise: NoiseModel | None = None  # None: the replay chooses (replay.choose_noise)
    spectrum_noise: NoiseModel | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.spectra.shape)  # type: ignore[return-value]

    @property
    def energy_eV(self) -> np.ndarray:
        """The spectral axis (eV) of the channels."""
        c = self.conditions
        return c["energy_offset_eV"].value + c["dispersion_eV"].value * np.arange(self.shape[2])

    def assumed(self) -> list[str]:
        return [k for k, c in self.conditions.items() if c.source == "assumed"]

    def spectrum_image(self) -> SpectrumImage:
        c = {k: v.value for k, v in self.conditions.items()}
        return SpectrumImage(
            image=self.image,
            spectra=self.spectra,
            pixel_size_nm=c["pixel_size_nm"],
            energy_offset_eV=c["energy_offset_eV"],
            dispersion_eV=c["dispersion_eV"],
            dwell_s=c["dwell_s"],
            spectrum_dwell_s=c["spectrum_dwell_s"],
            current_pA=c["current_pA"],
            origin_x_nm=c.get("origin_x_nm", 0.0),
            origin_y_nm=c.get("origin_y_nm", 0.0),
            image_noise=self.noise("image"),
            spectrum_noise=self.noise("spectra"),
            signal=self.signal_type,
            energy_name=self.energy_name,
            image_source=self.image_source,
        )

    def noise(self, what: Literal["image", "spectra"]) -> NoiseModel:
        """How a replay resamples ``what``: as given, else what its values support."""
        given = self.image_noise if what == "image" else self.spectrum_noise
        return given or choose_noise(self.image if what == "image" else self.spectra, what)

    def report(self) -> dict[str, Any]:
        """What ``autoscope data inspect`` prints (JSON-ready)."""
        h, w, e = self.shape
        energy = self.energy_eV
        return {
            "file": str(self.path),
            "reader": self.reader,
            "signal_type": self.signal_type or "unknown",
            "shape": {"rows": h, "columns": w, "channels": e},
            "energy_axis": {
                "name": self.energy_name,
                "first_eV": float(energy[0]),
                "last_eV": float(energy[-1]),
            },
            "field_nm": [
                w * self.conditions["pixel_size_nm"].value,
                h * self.conditions["pixel_size_nm"].value,
            ],
            "image": self.image_source,
            "counts": {
                "min": float(np.nanmin(self.spectra)),
                "max": float(np.nanmax(self.spectra)),
                "negative_fraction": float(np.mean(self.spectra < 0)),
                "non_finite": int(np.sum(~np.isfinite(self.spectra))),
            },
            "conditions": {k: dataclasses.asdict(c) for k, c in self.conditions.items()},
            "assumed": self.assumed(),
            "replay_noise": {
                w: {"kind": m.kind, "gain": m.gain, "offset": m.offset, "why": m.why}
                for w, m in (("image", self.noise("image")), ("spectra", self.noise("spectra")))
            },
            "notes": list(self.notes),
        }


# ---------------------------------------------------------------------------- entry
def read_recording(
    path: str | Path,
    *,
    image_path: str | Path | None = None,
    given: dict[str, float] | None = None,
    energy_shift_eV: float = 0.0,
) -> Recording:
    """The spectrum image in ``path`` (survey image from the same file, or from ``image_path``).

    ``given``: conditions the caller knows better than the file (``dwell_s``,
    ``spectrum_dwell_s``, ``current_pA``, ``pixel_size_nm``), marked ``given``.
    ``energy_shift_eV``: added to the file's energy offset (a recalibration), noted.
    """
    path = Path(path)
    if not path.is_file():
        raise RecordingError("file", "no such file", str(path))
    suffix = path.suffix.lower()
    if suffix in REPLAY_FILE_SUFFIXES:
        from autoscope.instruments.replay_files import read_replay_file  # it reads through this function

        return read_replay_file(path, image_path=image_path, given=given, energy_shift_eV=energy_shift_eV)
    if suffix in RSCIIO_SUFFIXES:
        rec = _read_rsciio(path)
    elif suffix in (".h5", ".hdf5"):
        rec = _read_usid(path) if _is_usid(path) else _read_native(path)
    elif suffix == ".npz":
        rec = _read_native(path)
    else:
        raise RecordingError("file", f"unknown format {suffix!r}; readable: {', '.join(SUFFIXES)}", str(path))
    if image_path is not None:
        rec = _with_image(rec, Path(image_path))
    return finish_image(_finish(rec, given or {}, energy_shift_eV))


def _finish(rec: Recording, given: dict[str, float], shift: float) -> Recording:
    cond = dict(rec.conditions)
    notes = list(rec.notes)
    for k, v in given.items():
        if k not in GIVEN:
            raise RecordingError(k, f"not a recording condition; give {', '.join(GIVEN)}")
        if not v > 0 and k != "energy_offset_eV":
            raise RecordingError(k, f"must be positive, got {v}")
        if k in cond and cond[k].source == "file" and not np.isclose(cond[k].value, v):
            notes.append(f"{k}: {v:g} given overrides the file's {cond[k].value:g} ({cond[k].where})")
        cond[k] = Condition(float(v), "given", "by the caller")
    for k, (v, why) in ASSUMED.items():
        if k not in cond:
            cond[k] = Condition(v, "assumed", f"{why}; pass it to override")
    if "dwell_s" not in cond:
        s = cond["spectrum_dwell_s"]
        cond["dwell_s"] = Condition(
            s.value, "assumed", "no image dwell in the file; the spectrum dwell stands in"
        )
    if shift:
        e0 = cond["energy_offset_eV"]
        cond["energy_offset_eV"] = Condition(
            e0.value + shift, "given", f"{e0.where} shifted by {shift:+g} eV"
        )
        notes.append(f"energy axis shifted by {shift:+g} eV")
    for k in ("pixel_size_nm", "dispersion_eV"):
        if k not in cond or not cond[k].value > 0:
            raise RecordingError(k, "the file gives no usable value; pass it", str(rec.path))
    h, w = rec.spectra.shape[:2]
    px = cond["pixel_size_nm"].value
    why = "no field origin in the file: the field is centred on (0, 0)"
    cond.setdefault("origin_x_nm", Condition(-w * px / 2, "assumed", why))
    cond.setdefault("origin_y_nm", Condition(-h * px / 2, "assumed", why))
    out = dataclasses.replace(rec, conditions=cond, notes=tuple(notes))
    for k in out.assumed():
        log.info("%s: %s assumed = %s", rec.path.name, k, cond[k].describe())
    return out


# ----------------------------------------------------------------------- RosettaSciIO
def _rsciio_entries(path: Path, field: str) -> list[dict]:
    """What RosettaSciIO's plugin for ``path``'s suffix reads from it; a ``RecordingError`` naming
    ``field`` when it cannot. RosettaSciIO logs through its own handler on stdout (it would corrupt
    ``--json`` output): that handler is removed, its records go through the application's logging."""
    import importlib

    plugin = RSCIIO_SUFFIXES[path.suffix.lower()]
    reader = importlib.import_module(f"rsciio.{plugin}").file_reader
    logger = logging.getLogger("rsciio")
    for h in list(logger.handlers):
        if getattr(h, "stream", None) is sys.stdout:
            logger.removeHandler(h)
    try:
        return reader(str(path))
    except Exception as exc:  # the plugins raise a variety of exceptions for unreadable files
        raise RecordingError(field, f"RosettaSciIO ({plugin}) cannot read it: {exc}", str(path)) from exc


def _read_rsciio(path: Path) -> Recording:
    plugin = RSCIIO_SUFFIXES[path.suffix.lower()]
    entries = _rsciio_entries(path, "file")
    si = [e for e in entries if _nav_sig(e) == (2, 1)]
    single = [e for e in entries if _nav_sig(e) == (0, 1)]
    cond: dict[str, Condition] = {}
    notes: list[str] = []
    if not si and single:  # one spectrum: a 1 × 1 scan, said so
        e = single[0]
        spectra, axes = _signal_last(e)
        spectra, sa = spectra.reshape(1, 1, -1), axes[0]
        ay = ax = {"name": "none", "units": "nm", "scale": 1.0, "offset": 0.0}
        notes.append("a single spectrum, not a spectrum image: read as a 1 × 1 scan (1 nm pixel assumed)")
    elif not si:
        dims = ", ".join(f"{np.shape(e['data'])}" for e in entries)
        raise RecordingError(
            "file",
            f"no spectrum image (two scan axes and one spectral axis) in it; it holds {dims}",
            str(path),
        )
    else:
        e = si[0]
        spectra, axes = _signal_last(e)
        (ay, ax), sa = axes[:2], axes[2]
    scale_y, scale_x = _length_nm(ay), _length_nm(ax)
    cond["pixel_size_nm"] = Condition(scale_x, "file", f"axis {ax.get('name')!r} scale ({ax.get('units')})")
    if not np.isclose(scale_x, scale_y, rtol=1e-3):
        notes.append(f"non-square pixels: {scale_x:g} nm (x) × {scale_y:g} nm (y); the x size is used")
    cond["origin_x_nm"] = Condition(
        float(ax.get("offset", 0.0)) * _LENGTH_NM.get(_unit(ax), 1.0),
        "file",
        f"axis {ax.get('name')!r} offset",
    )
    cond["origin_y_nm"] = Condition(
        float(ay.get("offset", 0.0)) * _LENGTH_NM.get(_unit(ay), 1.0),
        "file",
        f"axis {ay.get('name')!r} offset",
    )
    if not si:  # the 1 × 1 scan of a single spectrum has no recorded geometry
        cond["pixel_size_nm"] = Condition(1.0, "assumed", "a single spectrum has no scan axes")
        del cond["origin_x_nm"], cond["origin_y_nm"]  # centred on (0, 0) like any field without one
    k = _ENERGY_EV.get(_unit(sa))
    if k is None:
        raise RecordingError(
            "axes",
            f"spectral axis {sa.get('name')!r} in {_unit(sa)!r}: not an energy unit (eV, keV)",
            str(path),
        )
    cond["energy_offset_eV"] = Condition(
        float(sa.get("offset", 0.0)) * k, "file", f"axis {sa.get('name')!r} offset ({_unit(sa)})"
    )
    cond["dispersion_eV"] = Condition(
        float(sa.get("scale", 1.0)) * k, "file", f"axis {sa.get('name')!r} scale ({_unit(sa)})"
    )
    meta = {
        **flat_metadata(e.get("metadata", {})),
        **{f"original.{p}": v for p, v in flat_metadata(e.get("original_metadata", {})).items()},
    }
    cond.update(conditions_from(meta, notes))
    images = [x for x in entries if _nav_sig(x) == (0, 2)]
    image, image_source = _grid_image(images, spectra.shape[:2], path, notes)
    sig = str(e.get("metadata", {}).get("Signal", {}).get("signal_type", "") or "")
    return Recording(
        path, f"rsciio.{plugin}", spectra, image, image_source, sig, str(sa.get("name")), cond, tuple(notes)
    )


def _nav_sig(e: dict) -> tuple[int, int]:
    axes = e.get("axes", [])
    nav = sum(1 for a in axes if a.get("navigate"))
    return nav, len(axes) - nav


def _signal_last(e: dict) -> tuple[np.ndarray, list[dict]]:
    """The data as (y, x, E) with the axes in that order (older DM files come back as (E, y, x))."""
    data = e["data"]
    data = np.asarray(data.todense() if hasattr(data, "todense") else data)
    axes = list(e["axes"])
    order = [i for i, a in enumerate(axes) if a.get("navigate")] + [
        i for i, a in enumerate(axes) if not a.get("navigate")
    ]
    return np.transpose(data, order), [axes[i] for i in order]


def _unit(a: dict) -> str:
    return str(a.get("units") or "").strip()


def _length_nm(a: dict) -> float:
    k = _LENGTH_NM.get(_unit(a))
    if k is None:
        raise RecordingError(
            "axes", f"scan axis {a.get('name')!r} in {_unit(a)!r}: not a length unit (nm, µm, Å)"
        )
    return float(a.get("scale", 1.0)) * k


def _grid_image(
    images: list[Any], hw: tuple[int, int], path: Path, notes: list[str]
) -> tuple[np.ndarray, str]:
    """A survey image on the spectrum image's grid: the file's own (binned by an integer factor
    when finer), else the spectra's total counts, said so."""
    for im in images:
        data = np.asarray(im["data"] if isinstance(im, dict) else im, dtype=np.float64)
        title = (
            im.get("metadata", {}).get("General", {}).get("title", "image")
            if isinstance(im, dict)
            else "image"
        )
        binned = _bin_to(data, hw)
        if binned is not None:
            f = data.shape[0] // hw[0]
            return binned, f"{title} from {path.name}" + (
                f" (binned {f}×{f} from {data.shape})" if f > 1 else ""
            )
        notes.append(f"image {title!r} {data.shape} does not tile the {hw} scan grid: not used")
    return np.zeros(hw), ""


def _bin_to(data: np.ndarray, hw: tuple[int, int]) -> np.ndarray | None:
    h, w = hw
    if data.ndim != 2 or data.shape[0] % h or data.shape[1] % w:
        return None
    fy, fx = data.shape[0] // h, data.shape[1] // w
    if fy != fx:
        return None
    return data.reshape(h, fy, w, fx).mean(axis=(1, 3))


def _with_image(rec: Recording, image_path: Path) -> Recording:
    suffix = image_path.suffix.lower()
    if suffix not in RSCIIO_SUFFIXES:
        raise RecordingError(
            "image", f"a survey image is read from {', '.join(RSCIIO_SUFFIXES)}", str(image_path)
        )
    entries = [e for e in _rsciio_entries(image_path, "image") if _nav_sig(e) == (0, 2)]
    h, w = rec.spectra.shape[:2]
    px = rec.conditions.get("pixel_size_nm")
    for e in entries:  # a second file must show the same field, not only a grid that tiles
        try:
            fields = [_length_nm(a) * int(a["size"]) for a in e["axes"]]
        except (RecordingError, KeyError, TypeError):
            continue
        if px is not None and not np.allclose(fields, [h * px.value, w * px.value], rtol=0.05):
            raise RecordingError(
                "image",
                f"its field {fields[1]:.4g} × {fields[0]:.4g} nm is not the spectrum image's "
                f"{w * px.value:.4g} × {h * px.value:.4g} nm ({rec.path.name})",
                str(image_path),
            )
    notes = list(rec.notes)
    image, source = _grid_image(entries, rec.spectra.shape[:2], image_path, notes)
    if not source:
        raise RecordingError(
            "image",
            f"no image that tiles the {rec.spectra.shape[:2]} scan grid of {rec.path.name}",
            str(image_path),
        )
    return dataclasses.replace(rec, image=image, image_source=source, notes=tuple(notes))


# ------------------------------------------------------------------------ USID
def _is_usid(path: Path) -> bool:
    with h5py.File(path, "r") as f:
        return any(True for _ in _usid_channels(f))


def _usid_channels(f: h5py.File) -> Iterator[h5py.Group]:
    for m in f.values():
        if isinstance(m, h5py.Group) and m.name.split("/")[-1].startswith("Measurement_"):
            for c in m.values():
                if isinstance(c, h5py.Group) and {
                    "Raw_Data",
                    "Position_Indices",
                    "Spectroscopic_Values",
                } <= set(c):
                    yield c


def _read_usid(path: Path) -> Recording:
    notes: list[str] = []
    with h5py.File(path, "r") as f:
        ch = next(_usid_channels(f))
        raw = ch["Raw_Data"][()]
        idx = ch["Position_Indices"][()]
        vals = ch["Position_Values"][()] if "Position_Values" in ch else None
        labels = [
            s.decode() if isinstance(s, bytes) else str(s)
            for s in ch["Position_Indices"].attrs.get("labels", [b"X", b"Y"])
        ]
        units = [
            s.decode() if isinstance(s, bytes) else str(s)
            for s in ch["Position_Indices"].attrs.get("units", [b"", b""])
        ]
        spec = ch["Spectroscopic_Values"][()].ravel()
        spec_units = [
            s.decode() if isinstance(s, bytes) else str(s)
            for s in ch["Spectroscopic_Values"].attrs.get("units", [b"eV"])
        ]
        attrs = {k: ch.attrs[k] for k in ch.attrs}
        adf = None
        for sib in ch.parent.values():
            if isinstance(sib, h5py.Group) and "Image" in sib and sib.name != ch.name:
                adf = (sib["Image"][()], sib.name)
                attrs.update({f"{sib.name.split('/')[-1]}.{k}": sib.attrs[k] for k in sib.attrs})
                break
    n, e = raw.shape
    sizes = idx.max(axis=0) + 1
    if int(np.prod(sizes)) != n:
        raise RecordingError(
            "Position_Indices", f"{n} spectra but position indices of sizes {sizes.tolist()}", str(path)
        )
    # the layouts the positions allow: as labelled (the first label fastest), and transposed
    fast = int(np.argmax(np.abs(np.diff(idx[: min(n, 3)], axis=0)).sum(axis=0)))
    a, b = int(sizes[fast]), int(sizes[1 - fast])
    layouts = {
        (b, a): f"as the position indices say ({labels[fast]} fastest)",
        (a, b): "transposed from the position indices",
    }
    if adf is not None:
        scores = {}
        for hw in layouts:
            binned = _bin_to(np.asarray(adf[0], dtype=np.float64), hw)
            if binned is not None:
                total = raw.reshape(*hw, e).sum(axis=2)
                scores[hw] = abs(float(np.corrcoef(binned.ravel(), total.ravel())[0, 1]))
        hw = max(scores, key=scores.get) if scores else (b, a)
        if scores and hw != (b, a):
            notes.append(
                f"layout {hw[0]} rows × {hw[1]} columns: {layouts[hw]}, the only layout whose total counts line up "
                f"with the ADF image (|r| = {scores[hw]:.2f}; the labelled layout does not tile it)"
                if (b, a) not in scores
                else f"layout {hw}: {layouts[hw]} (|r| with the ADF {scores[hw]:.2f} vs {scores[(b, a)]:.2f} as labelled)"
            )
    else:
        hw = (b, a)
    spectra = raw.reshape(*hw, e)
    cond: dict[str, Condition] = {}
    if vals is not None:
        step = np.abs(np.diff(vals[:2, fast]))[0] if n > 1 else 0.0
        k = _LENGTH_NM.get(units[fast].strip())
        if step > 0 and k is not None:
            cond["pixel_size_nm"] = Condition(
                float(step) * k, "file", f"Position_Values step of {labels[fast]} ({units[fast]})"
            )
    fov = next((float(v) for k, v in attrs.items() if str(k).endswith("Field-of-View-(m)")), None)
    if fov and fov > 0 and "pixel_size_nm" in cond:  # the microscope's own field of view, cross-checked
        fov_nm = fov * 1e9 if fov < 1e-3 else fov * 1e3  # tagged m; a value above 1 mm is read as µm
        per_px, px = fov_nm / hw[1], cond["pixel_size_nm"]
        if not np.isclose(per_px, px.value, rtol=0.05):
            notes.append(
                f"pixel_size_nm: {px.value:.4g} nm ({px.where}) disagrees with the microscope's field of view "
                f"{fov:g} (tagged m, read as {fov_nm:.4g} nm: {per_px:.4g} nm per column of {hw[1]}); "
                "give pixel_size_nm to choose"
            )
    d = np.diff(spec)
    ke = _ENERGY_EV.get(spec_units[0].strip(), 1.0)
    if not np.allclose(d, d[0], rtol=1e-3):
        raise RecordingError("dispersion_eV", "the spectroscopic values are not evenly spaced", str(path))
    cond["energy_offset_eV"] = Condition(float(spec[0]) * ke, "file", "Spectroscopic_Values[0]")
    cond["dispersion_eV"] = Condition(float(d[0]) * ke, "file", "Spectroscopic_Values step")
    cond.update(conditions_from(attrs, notes))
    images = [] if adf is None else [{"data": adf[0], "metadata": {"General": {"title": f"{adf[1]}/Image"}}}]
    image, source = _grid_image(images, hw, path, notes)
    return Recording(path, "usid (h5py)", spectra, image, source, "EELS", "Loss", cond, tuple(notes))


# ------------------------------------------------------------------------ native
def _read_native(path: Path) -> Recording:
    try:
        si = load_spectrum_image(path)
    except (ValueError, KeyError, OSError) as exc:
        raise RecordingError("file", str(exc), str(path)) from exc
    cond = {k: Condition(float(getattr(si, k)), "file", k) for k in SCALARS}
    return Recording(
        path, "autoscope", si.spectra, si.image, f"image from {path.name}", "EELS", "energy loss", cond
    )


def finish_image(rec: Recording) -> Recording:
    """``rec`` with a survey image: its own, else the spectra's total counts (said so)."""
    if rec.image_source:
        return rec
    total = np.nansum(rec.spectra, axis=2).astype(np.float64)
    notes = (*rec.notes, "no survey image in the file: the spectra's total counts stand in for it")
    return dataclasses.replace(
        rec, image=total, image_source="total counts of the spectra (assumed)", notes=notes
    )


__all__ = [
    "ASSUMED",
    "Source",
    "Condition",
    "Recording",
    "RecordingError",
    "SUFFIXES",
    "finish_image",
    "read_recording",
]
