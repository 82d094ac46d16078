"""Backend factory: the one place that turns a description into a microscope.

Agents and tools never import the simulator directly; they ask for a microscope
here (DESIGN.md, "the simulator is reached through a backend factory").
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from autoscope.instruments.errors import InvalidRequest
from autoscope.instruments.protocols import Microscope
from autoscope.instruments.records import ENERGY_MAX_EV, ENERGY_MIN_EV, Capabilities
from autoscope.instruments.safety import SafeMicroscope, SafetyLimits
from autoscope.instruments.sim.scenarios import DEFAULT_SCENARIO

log = logging.getLogger(__name__)


def open_backend(
    *,
    scenario: str | None = None,
    seed: int = 0,
    sample: dict[str, Any] | None = None,
    sim_config: Path | None = None,
    replay: Path | None = None,
    remote: str | None = None,
    token: str | None = None,
    timeout_s: float = 30.0,
    retries: int = 3,
    backend: str | None = None,
    nion_config: Path | None = None,
) -> Microscope:
    """Open exactly one backend: a remote instrument, a replayed dataset, or the twin.

    ``remote`` is a URL (needs ``token``); ``replay`` a recorded spectrum image;
    ``backend="nion"`` a Nion column over ``nion.instrumentation`` (Nion's simulator headless,
    or the hardware sources of a running Nion Swift; ``nion_config`` names them);
    otherwise the simulated microscope of ``scenario`` (its sample drawn with the ``sample``
    variant's parameters, if any), with the twin settings (drift, noise, timing, injected faults)
    of the ``sim_config`` file if given.
    """
    if sample and (remote or replay):
        raise InvalidRequest(
            "sample", "a sample variant is a twin setting; a remote or replayed instrument has its own sample"
        )
    if remote and replay:
        raise InvalidRequest("replay", "give either --remote or --replay, not both")
    if backend not in (None, "twin", "nion"):
        raise InvalidRequest("backend", f"unknown backend {backend!r}; choose twin or nion")
    if backend == "nion":
        if remote or replay or sample or scenario:
            raise InvalidRequest(
                "backend", "the nion backend is its own instrument: no --scenario, --remote, --replay or sample"
            )
        from autoscope.instruments.config_files import load_model
        from autoscope.instruments.nion.config import NionConfig
        from autoscope.instruments.nion.microscope import open_nion

        return open_nion(load_model(NionConfig, nion_config, "nion") if nion_config else None)
    if remote:
        if not token:
            raise InvalidRequest("token", f"the remote instrument {remote} needs a bearer token")
        from autoscope.instruments.remote.client import RemoteMicroscope

        return RemoteMicroscope(remote, token, timeout_s=timeout_s, retries=retries)
    if replay:
        from autoscope.instruments.readers import read_recording
        from autoscope.instruments.replay import ReplayMicroscope

        if not Path(replay).exists():
            raise InvalidRequest("replay", f"no such dataset: {replay}")
        # the field's formats through their readers; what was assumed is logged there
        si = read_recording(replay).spectrum_image()
        return ReplayMicroscope(si, seed=seed, name=Path(replay).stem)
    from autoscope.instruments.config_files import load_model
    from autoscope.instruments.sim.config import SimConfig
    from autoscope.instruments.sim.scenarios import make_microscope

    config = load_model(SimConfig, sim_config, "simulator") if sim_config else None
    return make_microscope(scenario or DEFAULT_SCENARIO, seed=seed, config=config, variant=sample)


def check_sample(scenario: str, sample: dict[str, Any] | None) -> None:
    """A ``ConfigError`` naming the field (``sample.<field>``) when ``sample`` is no variant of the
    twin's ``scenario``; nothing for an empty one."""
    if sample:
        from autoscope.instruments.sim.scenarios import sample_variant

        sample_variant(scenario, sample)


def open_microscope(
    limits: SafetyLimits,
    *,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    history: Iterable[dict[str, Any]] = (),
    **backend: Any,
) -> SafeMicroscope:
    """A backend from ``open_backend(**backend)`` behind the safety interlocks.

    ``history``: earlier acquisition events of the same run, counted against the limits.
    """
    inner = open_backend(**backend)
    log.info("opened %s backend behind safety limits", type(inner).__name__)
    return SafeMicroscope(inner, limits, on_event=on_event, history=history)


def survey_defaults(
    caps: Capabilities, scenario: str | None = None, *, max_current_pA: float | None = None
) -> dict[str, Any]:
    """Survey settings that suit the instrument: the scenario's own for the twin; for a replay, the
    recorded scan itself (every pixel, the recorded electrons per pixel: at a current capped by
    ``max_current_pA`` the dwell grows to match, up to the request limits); else from capabilities.
    The spectral window is the instrument's, within the request range (``records.ENERGY_*_EV``)."""
    if scenario is not None:
        from autoscope.instruments.sim.scenarios import build_sample

        sample = build_sample(scenario, 0)
        survey, window = sample.survey, sample.spectrometer.default_window_eV
        return {
            "fov_nm": survey.fov_nm,
            "pixels": survey.pixels,
            "dwell_s": survey.dwell_s,
            "current_pA": survey.current_pA,
            "spectrum_dwell_s": survey.spectrum_dwell_s,
            "energy_min_eV": window[0],
            "energy_max_eV": window[1],
        }
    lo = max(caps.energy_min_eV, ENERGY_MIN_EV)
    top = min(caps.energy_max_eV, lo + caps.dispersion_eV * min(caps.max_channels, 2048), ENERGY_MAX_EV)
    r = caps.recorded
    if r is not None:
        current = min(r.current_pA, caps.current_max_pA, max_current_pA or math.inf)
        k = r.current_pA / current  # dwell factor that keeps the recorded electrons per pixel
        survey_px = max(r.columns, 8)  # a map narrower than the smallest scan is oversampled...
        areal = (r.columns / survey_px) ** 2  # ...at the recorded dose per area, not per pixel
        return {
            "fov_nm": r.columns * r.pixel_size_nm,
            "pixels": survey_px,
            "rows": None if r.rows == r.columns else max(round(r.rows * survey_px / r.columns), 1),
            "dwell_s": min(r.dwell_s * k * areal, 1.0),
            "current_pA": current,
            "spectrum_dwell_s": min(r.spectrum_dwell_s * k, 600.0),
            "energy_min_eV": lo,
            "energy_max_eV": top,
        }
    return {
        "fov_nm": min(
            caps.max_fov_nm,
            caps.stage.x_max_nm - caps.stage.x_min_nm,
            caps.stage.y_max_nm - caps.stage.y_min_nm,
        ),
        "pixels": 256,
        "dwell_s": 2e-6,
        "spectrum_dwell_s": 0.05,
        "energy_min_eV": lo,
        "energy_max_eV": top,
    }


def describe_scenarios() -> list[tuple[str, str]]:
    """(name, one-line description) of every simulated scenario."""
    from autoscope.instruments.sim import scenarios

    return scenarios.describe_scenarios()
