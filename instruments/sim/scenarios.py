"""Registry of simulated scenarios, by lazy dotted path (a scenario is imported when used)."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import numpy as np
from pydantic import BaseModel

from autoscope.instruments.config_files import validated
from autoscope.instruments.errors import ConfigError, InvalidRequest
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


def sample_variant(name: str, variant: Mapping[str, Any] | None) -> BaseModel | None:
    """The scenario's typed ``Variant`` from a mapping (None or empty: the scenario's own);
    a bad field is a ``ConfigError`` naming it (``sample.<field>``)."""
    if not variant:
        return None
    cls = _sample_class(name)
    model = getattr(cls, "Variant", None)
    if model is None:
        raise ConfigError("sample", f"scenario {name!r} has no variants")
    try:
        return validated(model, dict(variant), None)
    except ConfigError as exc:
        raise ConfigError(f"sample.{exc.field}", str(exc).split(": ", 1)[-1]) from None


def build_sample(name: str, seed: int, variant: Mapping[str, Any] | None = None) -> Sample:
    """The sample of scenario ``name``, its structure drawn from ``seed``; ``variant``: the
    parameters of its generator (populations, defect densities, where the interface lies)."""
    cls = _sample_class(name)
    typed = sample_variant(name, variant)
    rng = np.random.default_rng(seed)
    return cls(rng, typed) if typed is not None else cls(rng)


def make_microscope(
    name: str, seed: int = 0, config: SimConfig | None = None, variant: Mapping[str, Any] | None = None
) -> SimMicroscope:
    """A simulated microscope looking at a fresh sample of scenario ``name`` (of ``variant``)."""
    return SimMicroscope(build_sample(name, seed, variant), seed=seed, config=config, name=f"sim-{name}")
