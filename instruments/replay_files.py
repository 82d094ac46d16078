"""Replay files: a recording and what the person knows that the file does not say.

A replay file (``.yaml``/``.yml``/``.toml``/``.json``) names a recording (relative to itself)
and adds the survey image's file, conditions known better than the file, an energy
recalibration, how a replay resamples each stream, and bad pixels injected on purpose (to
check that a campaign survives them). Wherever a command takes ``--replay``, a replay file
works as well as the recording itself (``readers.read_recording`` reads it through here).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from autoscope.instruments.config_files import load_model
from autoscope.instruments.readers import (
    GIVEN,
    REPLAY_FILE_SUFFIXES,
    Recording,
    RecordingError,
    read_recording,
)
from autoscope.instruments.replay import NoiseModel, choose_noise


class NoiseSpec(BaseModel):
    """How a replay resamples one stream (``replay.NoiseModel``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["poisson", "none"]
    gain: float = Field(1.0, gt=0, description="recorded value per detected count")
    offset: float = Field(0.0, allow_inf_nan=False, description="black level, not scaled with the dose")

    def model(self) -> NoiseModel:
        return NoiseModel(self.kind, self.gain, self.offset, why="given in the replay file")


class InjectedFaults(BaseModel):
    """Bad pixels put into a recording on purpose, to check that a campaign survives them (seeded)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    nan_fraction: float = Field(0.0, ge=0, le=1, description="share of pixels whose spectrum reads NaN")
    zero_fraction: float = Field(0.0, ge=0, le=1, description="share of pixels zeroed over the window")
    zero_lo_eV: float | None = Field(None, description="the zeroed window (e.g. a pre-edge); default all")
    zero_hi_eV: float | None = None
    seed: int = 0

    def apply(self, spectra: np.ndarray, energy_eV: np.ndarray) -> tuple[np.ndarray, set, set]:
        """(spectra with the faults, NaN pixels, zeroed pixels); pixels are (row, col), disjoint."""
        h, w = spectra.shape[:2]
        cells = np.random.default_rng(self.seed).permutation(h * w)
        k_nan, k_zero = int(round(self.nan_fraction * h * w)), int(round(self.zero_fraction * h * w))
        nan_px = {divmod(int(i), w) for i in cells[:k_nan]}
        zero_px = {divmod(int(i), w) for i in cells[k_nan : k_nan + k_zero]}
        out = spectra.astype(np.float64, copy=True)
        lo = -np.inf if self.zero_lo_eV is None else self.zero_lo_eV
        hi = np.inf if self.zero_hi_eV is None else self.zero_hi_eV
        band = (energy_eV >= lo) & (energy_eV <= hi)
        for r, c in nan_px:
            out[r, c] = np.nan
        for r, c in zero_px:
            out[r, c, band] = 0.0
        return out, nan_px, zero_px


class ReplaySource(BaseModel):
    """A replay file: a recording and what the person knows that the file does not say."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    file: Path = Field(description="the recording (relative to the replay file)")
    image: Path | None = Field(None, description="the survey image of the same field, from a second file")
    conditions: dict[str, float] = Field(
        default_factory=dict, description=f"conditions known better than the file: {', '.join(GIVEN)}"
    )
    energy_shift_eV: float = Field(0.0, allow_inf_nan=False, description="added to the file's energy offset")
    image_noise: NoiseSpec | None = Field(None, description="default: what the image's values support")
    spectrum_noise: NoiseSpec | None = Field(None, description="default: what the spectra's values support")
    faults: InjectedFaults | None = Field(
        None, description="bad pixels injected on purpose (robustness checks)"
    )


def read_replay_file(
    path: Path,
    *,
    image_path: str | Path | None = None,
    given: dict[str, float] | None = None,
    energy_shift_eV: float = 0.0,
) -> Recording:
    """The recording a replay file names, with its conditions, shift and noise models applied
    (what the caller passes on top wins over the file's)."""
    src = load_model(ReplaySource, path, "replay")
    base = path.parent
    data = src.file if src.file.is_absolute() else base / src.file
    if data.suffix.lower() in REPLAY_FILE_SUFFIXES:
        raise RecordingError("file", "a replay file names a recording, not another replay file", str(path))
    image = image_path or (
        None if src.image is None else (src.image if src.image.is_absolute() else base / src.image)
    )
    rec = read_recording(
        data,
        image_path=image,
        given={**src.conditions, **(given or {})},
        energy_shift_eV=src.energy_shift_eV + energy_shift_eV,
    )
    noise = {
        "image_noise": src.image_noise.model() if src.image_noise else None,
        "spectrum_noise": src.spectrum_noise.model() if src.spectrum_noise else None,
    }
    notes = [*rec.notes, f"replay file {path.name}"]
    spectra = rec.spectra
    if src.faults is not None:
        if noise["spectrum_noise"] is None:  # the noise model of the recording as it was
            noise["spectrum_noise"] = choose_noise(rec.spectra, "spectra")
        spectra, nan_px, zero_px = src.faults.apply(rec.spectra, rec.energy_eV)
        notes.append(f"faults injected on purpose: {len(nan_px)} NaN pixels, {len(zero_px)} zeroed pixels")
    return dataclasses.replace(rec, spectra=spectra, **noise, notes=tuple(notes))


__all__ = ["InjectedFaults", "NoiseSpec", "ReplaySource", "read_replay_file"]
