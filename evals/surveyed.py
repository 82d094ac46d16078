"""A survey of the twin with its map, as the survey node makes it (image, spectra
on each kind of feature, the map with the spectra described), cached per scenario and seed."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from autoscope.agents.nodes.survey import SURVEY_SPECTRA, survey_window
from autoscope.agents.run_spec import RunSpec, load_run_spec
from autoscope.instruments.factory import open_microscope
from autoscope.instruments.records import Capabilities, ImageRecord, SpectrumRecord
from autoscope.instruments.safety import SafetyLimits
from autoscope.tools.grounding import build_survey_map, describe_spectrum, population_grid
from autoscope.tools.grounding.model import SurveyMap
from autoscope.tools.grounding.summary import spectrum_positions
from autoscope.tools.plan import SurveyStep


@dataclass(frozen=True)
class Surveyed:
    spec: RunSpec
    caps: Capabilities
    image: ImageRecord
    spectra: tuple[SpectrumRecord, ...]
    smap: SurveyMap
    grid: np.ndarray
    present: dict[str, int]

    @property
    def step(self) -> SurveyStep:
        sv = self.spec.template.survey
        return SurveyStep(fov_nm=sv.fov_nm, pixels=sv.pixels, dwell_s=sv.dwell_s, current_pA=sv.current_pA)


@functools.cache
def surveyed(scenario: str, seed: int = 0) -> Surveyed:
    spec = load_run_spec(None, scenario).model_copy(update={"seed": seed})
    scope = open_microscope(SafetyLimits(), scenario=scenario, seed=seed)
    caps = scope.capabilities()
    sv = spec.template.survey
    scope.set_beam_current(sv.current_pA)
    scope.unblank_beam()
    image = scope.acquire_image(sv.fov_nm, sv.pixels, sv.dwell_s)
    smap = build_survey_map(image)
    grid = population_grid(image).xy_nm
    lo, hi = survey_window(caps)
    spectra = tuple(
        scope.acquire_spectrum(x, y, sv.spectrum_dwell_s, lo, hi)
        for x, y in spectrum_positions(smap, grid, SURVEY_SPECTRA)
    )
    scope.blank_beam()
    smap = smap.model_copy(
        update={
            "spectra": [describe_spectrum(smap, f"survey-spectrum-{i:02d}", s) for i, s in enumerate(spectra)]
        }
    )
    return Surveyed(spec, caps, image, spectra, smap, grid, smap.classes_present(grid))
