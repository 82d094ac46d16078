"""A survey killed with SIGKILL loses nothing it acquired, and resumes without repeating a step."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from autoscope.tests.processes import sigkill_when
from autoscope.tools.store import RunStore

SPECTRA = 120


def test_sigkill_mid_survey_then_resume(tmp_path: Path):
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "autoscope",
        "survey",
        "--scenario",
        "plasmonic",
        "--out",
        str(out),
        "--pixels",
        "128",
        "--spectra",
        str(SPECTRA),
        "--spectrum-dwell-s",
        "0.01",
    ]
    sigkill_when(cmd, out / "events.jsonl", '"kind":"acquisition"', 8, timeout_s=120)

    store = RunStore.open(out)
    done = store.completed_steps()
    acq = store.events("acquisition")
    assert 8 <= len(done) < 1 + SPECTRA, "the kill must land mid-survey"
    for event in acq:  # every acquisition logged before the kill is whole and readable
        rec = store.load(event["step_id"])
        arr = rec.data if event["record"] == "image" else rec.counts
        assert np.isfinite(arr).all() and arr.sum() > 0
        assert rec.dose_e == event["dose_e"]
    store.close()

    resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    store = RunStore.open(out, read_only=True)
    steps = [e["step_id"] for e in store.events("acquisition")]
    assert len(steps) == len(set(steps)) == 1 + SPECTRA  # none repeated, none missing
    assert store.events("survey_complete")[-1]["reused_steps"] >= len(done)
