"""Registry of simulated scenarios, by lazy dotted path (a scenario is imported when used)."""

from __future__ import annotations

import importlib

import numpy as np

from autoscope.instruments.errors import InvalidRequest
from autoscope.instruments.sim.config import SimConfig
from autoscope.instruments.sim.microscope import SimMicroscope
from autoscope.instruments.sim.sample import Sample

SCENARIOS: dict[str, str] = {
    "plasmonic": "autoscope.instruments.sim.plasmonic:PlasmonicSample",
    "tmd-defects": "autoscope.instruments.sim.crystal2d:TMDSample",
    "oxide-interface": "autoscope.instruments.sim.interface:OxideInterfaceSample",
}
DEFAULT_SCENARIO = "plasmonic"


def scenario_names() -> list[str]:
    """Registered scenario names (imports nothing)."""
    return list(SCENARIOS)


def _sample_class(name: str) -> type[Sample]:
    if name not in SCENARIOS:
        raise InvalidRequest("scenario", f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")
    module, _, cls = SCENARIOS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def describe_scenarios() -> list[tuple[str, str]]:
    """(name, one-line description) of every scenario; imports each class."""
    return [(name, _sample_class(name).description) for name in SCENARIOS]


def build_sample(name: str, seed: int) -> Sample:
    """The sample of scenario ``name``, its structure drawn from ``seed``."""
    return _sample_class(name)(np.random.default_rng(seed))


def make_microscope(name: str, seed: int = 0, config: SimConfig | None = None) -> SimMicroscope:
    """A simulated microscope looking at a fresh sample of scenario ``name``."""
    return SimMicroscope(build_sample(name, seed), seed=seed, config=config, name=f"sim-{name}")
