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


def test_the_backend_declares_that_usims_noise_is_no_shot_noise(nion):
    """usim adds noise of a fixed level, not the counts' Poisson scatter: the backend says so, and
    the verdicts then take a class's spread from its values (tools/queries.with_shot_noise)."""
    assert nion.capabilities().shot_noise_limited is False
    nion.unblank_beam()
    counts = np.array([nion.acquire_spectrum(20.0, -20.0, 0.01, 0.0, 40.0).counts for _ in range(20)])
    mean, var = counts.mean(axis=0), counts.var(axis=0, ddof=1)
    busy = mean > 20
    assert busy.any() and not 0.5 < np.median(var[busy] / mean[busy]) < 2.0


def test_flake_map_counts_usims_own_flakes(nion):
    """The survey map's flake classes, from the HAADF image alone, against usim's own sample (the
    rectangles its simulator draws): pixels it assigns carry the number of flakes that really lie
    there, and every class of the ladder is found."""
    from autoscope.evals.nion_truth import true_classes, usim_features
    from autoscope.tools.grounding import build_survey_map, population_grid

    nion.unblank_beam()
    image = nion.acquire_image(400.0, 128, 2e-6)
    smap = build_survey_map(image)
    assert smap.flakes is not None and not smap.particles  # the ladder, not particles on a support
    grid = population_grid(image).xy_nm
    found = smap.area_class(grid)
    truth = true_classes(usim_features(nion._stack), grid)
    assigned = found != "unassigned"
    assert assigned.mean() > 0.5
    assert (found[assigned] == truth[assigned]).mean() > 0.9
    for cls in ("bare_film", "single_flake", "stacked_flakes"):
        mine = found == cls
        assert mine.sum() >= 20 and (truth[mine] == cls).mean() > 0.8, cls


def test_run_on_usim_tests_hypotheses_scored_against_usims_truth(tmp_path: Path):
    """``autoscope run --backend nion --llm none``: the flakes ground two hypotheses, each gets a
    verdict, scored against usim's own answer (evals/nion_truth.py)."""
    from autoscope.evals.nion_truth import score_run, usim_features
    from autoscope.instruments.nion.config import NionConfig
    from autoscope.instruments.nion.stack import NionStack

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "autoscope", "run", str(RUN_FILE), "--backend", "nion", "--llm", "none"]
    done = subprocess.run(
        [*cmd, "--out", str(out), "--budget", "60"], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "done" and len(summary["hypotheses"]) == 2
    stack = NionStack.open(NionConfig())
    try:
        features = usim_features(stack)
    finally:
        stack.close()
    scores = score_run(out, features)
    assert [s.hypothesis_id for s in scores] == ["H1", "H2"]
    h1, h2 = scores
    # usim's Ni flakes carry the edge, its bare film none: H1 holds, and is never refuted
    assert h1.truth.holds and h1.truth.means["bare_film"] == 0.0 and not h1.wrong
    # H2 sits on a knife edge in usim's sample (stacked ≈ 1.5 × single), so no outcome is asserted
    ratio = h2.truth.means["stacked_flakes"] / h2.truth.means["single_flake"]
    assert 1.3 < ratio < 1.7


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
        "--budget",
        "40",
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


def test_campaign_and_survey_take_the_nion_backend(tmp_path: Path):
    cli = [sys.executable, "-m", "autoscope"]
    campaign = ROOT / "evals" / "nion" / "usim.campaign.yaml"
    out = tmp_path / "campaign"
    done = subprocess.run(
        [*cli, "campaign", str(campaign), "--backend", "nion", "--budget", "6", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    store = RunStore.open(out, read_only=True)
    spectra = [e for e in store.events("acquisition") if e.get("record") == "spectrum"]
    store.close()
    assert len(spectra) == 6 and (out / "campaign.png").exists()
    bad = subprocess.run(
        [*cli, "survey", "--backend", "nion", "--scenario", "plasmonic", "--out", str(tmp_path / "s")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 2 and "--scenario" in bad.stderr
