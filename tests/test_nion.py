"""The Nion backend on Nion's own simulator (nionswift-usim): campaigns, kills, limits, serving.

The conformance suite (test_conformance.py) runs the protocols against it; here the rest of the
stack on top of it: ``autoscope run --backend nion`` and ``resume``, the safety interlocks in
front of the STEM controller, ``autoscope instrument serve --backend nion``, and the simulator's
physics as the backend reports it (its flakes' edges where its flakes are).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from autoscope.instruments.errors import SafetyLimitExceeded
from autoscope.instruments.remote.client import RemoteMicroscope
from autoscope.instruments.safety import SafeMicroscope, SafetyLimits
from autoscope.tests.processes import sigkill_when
from autoscope.tests.servers import instrument_server
from autoscope.tools.store import RunStore

pytest.importorskip("nion.usim_device")

ROOT = Path(__file__).resolve().parents[1]
RUN_FILE = ROOT / "evals" / "nion" / "usim.run.yaml"


class RecordingController:
    """The STEM controller as the backend sees it, recording every SetVal that reaches it."""

    def __init__(self, inner) -> None:
        self._inner = inner
        self.set_calls: list[tuple[str, float]] = []

    def SetVal(self, name: str, value: float) -> bool:  # noqa: N802 (Nion's API name)
        self.set_calls.append((name, value))
        return self._inner.SetVal(name, value)

    def __getattr__(self, name: str):
        return getattr(self._inner, name)


@pytest.fixture
def nion():
    """A NionMicroscope on a fresh simulator whose controller records what reaches it."""
    from autoscope.instruments.nion.config import NionConfig
    from autoscope.instruments.nion.microscope import NionMicroscope
    from autoscope.instruments.nion.stack import NionStack

    stack = NionStack.open(NionConfig())
    stack.controller = RecordingController(stack.controller)
    try:
        yield NionMicroscope(stack)
    finally:
        stack.close()


def test_a_current_above_the_limit_is_refused_before_it_reaches_setval(nion):
    scope = SafeMicroscope(nion, SafetyLimits(max_current_pA=100.0))
    calls = nion._stack.controller.set_calls
    scope.set_beam_current(80.0)
    assert ("BeamCurrent", pytest.approx(80e-12)) in calls
    before = list(calls)
    with pytest.raises(SafetyLimitExceeded):
        scope.set_beam_current(150.0)
    after = calls[len(before) :]
    assert [c for c in after if c[0] == "BeamCurrent"] == []  # the current never reached SetVal
    assert after == [("C_Blank", 1.0)]  # the safety stop blanked the beam
    assert nion.beam_current_pA() == pytest.approx(80.0)


def test_spectra_show_the_simulators_flakes_where_they_are(nion):
    """usim's Ni flakes add the Ni L2,3 edge (855/872 eV) at the probe: on a Ni flake the counts
    rise across the edge; in the vacuum beyond the sample (±200 nm) they fall with the background."""
    features = nion._stack.controller.scan_data_generator.sample.features
    ni = next(
        f
        for i, f in enumerate(features)
        if i % 3 == 0
        and f.size_m.width > 20e-9
        and f.size_m.height > 20e-9
        and abs(f.position_m.x) < 150e-9
        and abs(f.position_m.y) < 150e-9
    )
    x, y = ni.position_m.x * 1e9, ni.position_m.y * 1e9
    nion.unblank_beam()
    on = nion.acquire_spectrum(x, y, 0.05, 800.0, 920.0)
    off = nion.acquire_spectrum(300.0, 300.0, 0.05, 800.0, 920.0)
    e = on.energy_eV
    pre, post = (e > 820) & (e < 840), (e > 880) & (e < 900)
    assert on.counts[post].mean() > 1.05 * on.counts[pre].mean()
    assert off.counts[post].mean() < 1.05 * off.counts[pre].mean() + 1.0


def test_run_on_usim_killed_mid_scan_resumes_without_repeating(tmp_path: Path):
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "autoscope",
        "run",
        str(RUN_FILE),
        "--backend",
        "nion",
        "--llm",
        "none",
        "--out",
        str(out),
    ]
    sigkill_when(cmd, out / "events.jsonl", '"kind":"acquisition"', 3, timeout_s=180)
    store = RunStore.open(out)
    done = {e["step_id"] for e in store.events("acquisition")}
    store.close()
    assert len(done) >= 3
    resumed = subprocess.run(
        [sys.executable, "-m", "autoscope", "resume", str(out)], capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    store = RunStore.open(out, read_only=True)
    acq = store.events("acquisition")
    steps = [e["step_id"] for e in acq]
    assert len(steps) == len(set(steps)) and done <= set(steps)  # nothing repeated, nothing lost
    assert all(e.get("backend", "nion") == "nion" for e in acq)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "done"
    assert json.loads((out / "run.json").read_text())["backend"] == "nion"


def test_instrument_serve_backend_nion_serves_usim(tmp_path: Path):
    with (
        instrument_server(tmp_path, "--backend", "nion") as (url, token),
        RemoteMicroscope(url, token, timeout_s=30.0) as remote,
    ):
        status = remote.status()
        assert status.backend == "nion" and status.beam_blanked
        remote.unblank_beam()
        image = remote.acquire_image(200.0, 32, 2e-6)
        spectrum = remote.acquire_spectrum(10.0, -10.0, 0.02, 0.0, 50.0)
        assert image.data.shape == (32, 32) and np.isfinite(image.data).all()
        assert spectrum.counts.shape == (100,) and spectrum.counts.max() > 0
        remote.blank_beam()
