"""Survey tool: spectrum positions, exactly-once steps, and faults survived."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from autoscope.instruments.factory import open_backend, survey_defaults
from autoscope.instruments.sim.config import SimConfig
from autoscope.instruments.sim.scenarios import make_microscope
from autoscope.tools.store import RunStore
from autoscope.tools.survey import SurveyPlan, choose_spectrum_positions, run_survey


def _plan(scope, **over) -> SurveyPlan:
    fields = {**survey_defaults(scope.capabilities(), "plasmonic"), "pixels": 96, "spectra": 5, **over}
    return SurveyPlan(**fields)


@pytest.mark.parametrize("scenario", ["plasmonic", "tmd-defects", "oxide-interface"])
@pytest.mark.parametrize("n", [1, 6, 40])
def test_positions_distinct_inside_the_field(scenario: str, n: int):
    scope = open_backend(scenario=scenario, seed=1)
    d = survey_defaults(scope.capabilities(), scenario)
    scope.unblank_beam()
    image = scope.acquire_image(d["fov_nm"], 128, d["dwell_s"])
    pos = choose_spectrum_positions(image, n)
    assert len(pos) == n == len(set(pos))
    h = image.fov_nm / 2
    for x, y in pos:
        assert abs(x - image.center_x_nm) < h and abs(y - image.center_y_nm) < h
    assert choose_spectrum_positions(image, n) == pos  # deterministic: a resume picks the same


def test_first_positions_sit_on_features_last_on_background():
    scope = open_backend(scenario="plasmonic", seed=0)
    scope.unblank_beam()
    image = scope.acquire_image(1000.0, 256, 4e-6)
    pos = choose_spectrum_positions(image, 4)
    rc = [tuple(int(round(v)) for v in image.nm_to_pixel(x, y)) for x, y in pos]
    values = [image.data[r, c] for r, c in rc]
    background = np.median(image.data)
    assert all(v > 3 * background for v in values[:3])  # on particles
    assert values[3] <= background  # the dark reference


def test_survey_survives_injected_faults(tmp_path: Path):
    """Timeouts, dropped connections and corrupt frames are retried and logged; the survey completes."""
    cfg = SimConfig(timeout_rate=0.1, disconnect_rate=0.08, corrupt_frame_rate=0.15)
    scope = make_microscope("plasmonic", seed=3, config=cfg)
    with RunStore.create(tmp_path / "run") as store:
        result = run_survey(scope, store, _plan(scope, spectra=12))
        failures = store.events("acquisition_failed")
        assert len(result.spectra) == 12
        assert {f["error"] for f in failures} >= {"instrument_timeout", "connection_lost", "corrupt_frame"}
        assert len(store.completed_steps()) == 13
        assert scope.beam_blanked()


def test_resume_on_a_fresh_instrument_repeats_nothing(tmp_path: Path):
    first = make_microscope("plasmonic", seed=0)
    with RunStore.create(tmp_path / "run") as store:
        run_survey(first, store, _plan(first))
    second = make_microscope("plasmonic", seed=0)
    with RunStore.open(tmp_path / "run") as store:
        result = run_survey(second, store, _plan(second))
        assert result.reused_steps == 6
    assert second.status().acquisitions == 0  # everything came from the store
