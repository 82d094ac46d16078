"""The command line: scenarios, survey (files, resume, bad input) and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
from typer.testing import CliRunner

from autoscope.agents.cli import app
from autoscope.tools.store import RunStore

runner = CliRunner()
SMALL = ["--pixels", "64", "--spectra", "3"]


def cli(*args: str):
    return runner.invoke(app, list(args))


def test_scenarios_plain_text_one_per_line():
    out = subprocess.run(
        [sys.executable, "-m", "autoscope", "scenarios"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    lines = out.strip().splitlines()
    names = [line.split("\t")[0] for line in lines]
    assert names == ["plasmonic", "tmd-defects", "oxide-interface"]
    assert all(len(line.split("\t")) == 2 and len(line.split("\t")[1]) > 10 for line in lines)
    assert "\x1b[" not in out  # no terminal styling when piped


def test_survey_writes_store_and_png(tmp_path: Path):
    out = tmp_path / "run"
    res = cli("survey", "--scenario", "plasmonic", "--out", str(out), *SMALL)
    assert res.exit_code == 0, res.output
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    acq = [e for e in events if e["kind"] == "acquisition"]
    assert [e["step_id"] for e in acq] == [
        "survey-image",
        "survey-spectrum-00",
        "survey-spectrum-01",
        "survey-spectrum-02",
    ]
    assert all(e["dose_e"] > 0 and e["t_end_s"] > e["t_start_s"] for e in acq)
    with h5py.File(out / "data.h5", "r") as f:
        assert f["survey-image/data"].shape == (64, 64)
        assert f["survey-spectrum-01/counts"].ndim == 1
    png = (out / "survey.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_survey_resume_reuses_every_step(tmp_path: Path):
    out = tmp_path / "run"
    assert cli("survey", "--scenario", "plasmonic", "--out", str(out), *SMALL).exit_code == 0
    before = (out / "events.jsonl").read_text()
    res = cli("survey", "--scenario", "plasmonic", "--out", str(out), *SMALL)
    assert res.exit_code == 0, res.output
    store = RunStore.open(out, read_only=True)
    acq = store.events("acquisition")
    assert len(acq) == 4 and len({e["step_id"] for e in acq}) == 4
    assert (out / "events.jsonl").read_text().startswith(before)  # append-only
    assert store.events("survey_complete")[-1]["reused_steps"] == 4


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--scenario", "graphene-on-the-moon"], "scenario"),
        (["--scenario", "plasmonic", "--dwell-us", "-2"], "dwell_s"),
        (["--scenario", "plasmonic", "--fov-nm", "50000"], "fov_nm"),
        (["--scenario", "plasmonic", "--pixels", "3"], "pixels"),
        (["--scenario", "plasmonic", "--current-pA", "1e9"], "current_pA"),
    ],
)
def test_bad_input_exits_2_naming_the_field(tmp_path: Path, args: list[str], field: str):
    res = cli("survey", "--out", str(tmp_path / "run"), *args)
    assert res.exit_code == 2, res.output
    assert field in res.output
    assert "Traceback" not in res.output


def test_fov_outside_stage_when_off_centre(tmp_path: Path):
    cfg = tmp_path / "survey.yaml"
    cfg.write_text("center_x_nm: 480\nfov_nm: 200\n")
    res = cli("survey", "--scenario", "plasmonic", "--out", str(tmp_path / "r"), "--config", str(cfg), *SMALL)
    assert res.exit_code == 2 and "fov_nm" in res.output and "stage" in res.output


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("pixels: lots\n", "pixels"),
        ("spectrum_dwell_s: -1\n", "spectrum_dwell_s"),
        ("colour: blue\n", "colour"),
        ("pixels: [64\n", "not valid YAML"),
        ("- just\n- a list\n", "must hold a mapping"),
    ],
)
def test_corrupt_config_exits_2_naming_the_field(tmp_path: Path, text: str, field: str):
    cfg = tmp_path / "survey.yaml"
    cfg.write_text(text)
    res = cli("survey", "--scenario", "plasmonic", "--out", str(tmp_path / "r"), "--config", str(cfg))
    assert res.exit_code == 2, res.output
    assert field in res.output


def test_corrupt_limits_file_exits_2_naming_the_field(tmp_path: Path):
    lim = tmp_path / "limits.yaml"
    lim.write_text("max_total_dose_e: -5\n")
    res = cli("survey", "--scenario", "plasmonic", "--out", str(tmp_path / "r"), "--limits", str(lim), *SMALL)
    assert res.exit_code == 2 and "max_total_dose_e" in res.output


def test_bad_input_loses_nothing_already_acquired(tmp_path: Path):
    out = tmp_path / "run"
    assert cli("survey", "--scenario", "plasmonic", "--out", str(out), *SMALL).exit_code == 0
    before = (out / "events.jsonl").read_text()
    res = cli("survey", "--scenario", "plasmonic", "--out", str(out), "--dwell-us", "-1")
    assert res.exit_code == 2
    assert (out / "events.jsonl").read_text().startswith(before)
    assert RunStore.open(out, read_only=True).completed_steps() >= {"survey-image", "survey-spectrum-02"}


def test_sim_config_injects_faults_that_the_survey_survives(tmp_path: Path):
    sim = tmp_path / "twin.yaml"
    sim.write_text("timeout_rate: 0.2\ndisconnect_rate: 0.1\n")
    out = tmp_path / "run"
    res = cli(
        "survey",
        "--scenario",
        "plasmonic",
        "--seed",
        "2",
        "--out",
        str(out),
        "--sim-config",
        str(sim),
        *SMALL,
    )
    assert res.exit_code == 0, res.output
    store = RunStore.open(out, read_only=True)
    assert len(store.completed_steps()) == 4
    assert store.events("acquisition_failed"), "faults at these rates should have happened"


def test_bad_sim_config_names_the_field(tmp_path: Path):
    sim = tmp_path / "twin.yaml"
    sim.write_text("timeout_rate: 3\n")
    res = cli(
        "survey", "--scenario", "plasmonic", "--out", str(tmp_path / "r"), "--sim-config", str(sim), *SMALL
    )
    assert res.exit_code == 2 and "timeout_rate" in res.output


def test_survey_through_a_served_instrument(tmp_path: Path):
    from autoscope.tests.servers import instrument_server

    with instrument_server(tmp_path, "--scenario", "tmd-defects", "--seed", "4") as (url, token):
        out = tmp_path / "remote-run"
        res = cli("survey", "--remote", url, "--token", token, "--out", str(out), *SMALL)
        assert res.exit_code == 0, res.output
        bad = cli("survey", "--remote", url, "--token", "wrong", "--out", str(tmp_path / "r2"), *SMALL)
        assert bad.exit_code == 1 and "token" in bad.output
    store = RunStore.open(out, read_only=True)
    image = store.load("survey-image")
    assert image.data.shape == (64, 64) and image.fov_nm == pytest.approx(
        12.0, rel=0.01
    )  # the served sample's field
    assert (out / "survey.png").exists()
