"""Exactly-once acquisition: a stored step is reused only for the same request."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from autoscope.agents.cli import app
from autoscope.instruments.sim.scenarios import make_microscope
from autoscope.tools.acquisition import Acquirer, StepConflict, request_sha256
from autoscope.tools.store import RunStore

from .agent_fakes import Recorder


def _scope(seed: int = 0) -> Recorder:
    scope = Recorder(make_microscope("plasmonic", seed=seed))
    scope.unblank_beam()
    return scope


def _acquired(scope: Recorder, name: str) -> int:
    return sum(1 for n, _ in scope.requests if n == name)


def test_a_stored_step_is_reused_for_the_same_request_only(tmp_path: Path):
    scope = _scope()
    with RunStore.create(tmp_path / "run") as store:
        acq = Acquirer(scope, store)
        first = acq.spectrum("s0", x_nm=10.0, y_nm=5.0, dwell_s=0.01, energy_min_eV=0.5, energy_max_eV=4.0)
        again = acq.spectrum("s0", x_nm=10.0, y_nm=5.0, dwell_s=0.01, energy_min_eV=0.5, energy_max_eV=4.0)
        assert _acquired(scope, "acquire_spectrum") == 1
        assert (again.counts == first.counts).all()
        with pytest.raises(StepConflict) as err:  # a different dwell is not the stored step
            acq.spectrum("s0", x_nm=10.0, y_nm=5.0, dwell_s=0.02, energy_min_eV=0.5, energy_max_eV=4.0)
        assert err.value.field == "dwell_s" and "0.01" in str(err.value) and "0.02" in str(err.value)
        assert _acquired(scope, "acquire_spectrum") == 1  # refused: nothing reached the instrument
        event = store.step_event("s0")
        assert event["request"]["dwell_s"] == 0.01 and event["request_sha256"] == request_sha256(
            event["request"]
        )


def test_the_beam_current_is_part_of_the_request(tmp_path: Path):
    scope = _scope()
    with RunStore.create(tmp_path / "run") as store:
        acq = Acquirer(scope, store)
        acq.image("img", fov_nm=500.0, pixels=32, dwell_s=2e-6)
        scope.set_beam_current(scope.beam_current_pA() / 2)
        with pytest.raises(StepConflict) as err:
            acq.image("img", fov_nm=500.0, pixels=32, dwell_s=2e-6)
        assert err.value.field == "current_pA"


def test_rekeying_keeps_the_old_data_and_a_resume_finds_each_revision(tmp_path: Path):
    scope = _scope()
    args = {"x_nm": 0.0, "y_nm": 0.0, "energy_min_eV": 0.5, "energy_max_eV": 4.0}
    with RunStore.create(tmp_path / "run") as store:
        acq = Acquirer(scope, store, on_conflict="rekey")
        old = acq.spectrum("H1-al-0000", dwell_s=0.01, **args)
        new = acq.spectrum("H1-al-0000", dwell_s=0.03, **args)  # the plan was edited: a new dwell
        assert store.completed_steps() == {"H1-al-0000", "H1-al-0000.r2"}
        assert store.step_event("H1-al-0000.r2")["request"]["dwell_s"] == 0.03
        (ev,) = store.events("step_rekeyed")
        assert ev["step_id"] == "H1-al-0000" and ev["new_step_id"] == "H1-al-0000.r2"
    with RunStore.open(tmp_path / "run") as store:  # resumed: each request finds its own revision
        acq = Acquirer(scope, store, on_conflict="rekey")
        assert (acq.spectrum("H1-al-0000", dwell_s=0.03, **args).counts == new.counts).all()
        assert (acq.spectrum("H1-al-0000", dwell_s=0.01, **args).counts == old.counts).all()
    assert _acquired(scope, "acquire_spectrum") == 2


def test_a_run_stored_before_fingerprints_is_still_reused(tmp_path: Path):
    scope = _scope()
    with RunStore.create(tmp_path / "run") as store:
        store.save_spectrum(
            "s0", scope.acquire_spectrum(0.0, 0.0, 0.01, 0.5, 4.0)
        )  # no request stored, as in older runs
        Acquirer(scope, store).spectrum(
            "s0", x_nm=9.0, y_nm=9.0, dwell_s=0.5, energy_min_eV=0, energy_max_eV=4
        )
    assert _acquired(scope, "acquire_spectrum") == 1


def test_a_survey_into_a_run_with_a_different_field_is_refused(tmp_path: Path):
    out = tmp_path / "run"
    cli = CliRunner()
    base = ["survey", "--scenario", "plasmonic", "--out", str(out), "--pixels", "32", "--spectra", "2"]
    first = cli.invoke(app, [*base, "--fov-nm", "1000"])
    assert first.exit_code == 0, first.output
    before = (out / "events.jsonl").read_text()
    second = cli.invoke(app, [*base, "--fov-nm", "500"])
    assert second.exit_code == 2
    assert "fov_nm" in second.output and "1000" in second.output and "500" in second.output
    with RunStore.open(out, read_only=True) as store:  # the old survey is untouched
        assert store.step_event("survey-image")["fov_nm"] == 1000.0
        assert len(store.events("acquisition")) == 3
    assert (out / "events.jsonl").read_text().startswith(before)
    again = cli.invoke(app, [*base, "--fov-nm", "1000"])  # the same request resumes: nothing new
    assert again.exit_code == 0, again.output
    assert (
        len([json.loads(x) for x in (out / "events.jsonl").read_text().splitlines() if '"acquisition"' in x])
        == 3
    )
