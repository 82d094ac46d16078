"""Pipelined decisions (tools/pipeline.py) and the real-time twin that measures their dead time."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from autoscope.instruments.sim.config import SimConfig
from autoscope.instruments.sim.scenarios import make_microscope
from autoscope.tests.processes import log_count, sigkill_when
from autoscope.tests.test_campaign import small
from autoscope.tools.campaign import run_campaign
from autoscope.tools.pipeline import Decision, DecisionPipeline
from autoscope.tools.store import RunStore


def test_the_real_time_twin_takes_its_simulated_time_on_the_wall_clock():
    fast = make_microscope("plasmonic", seed=0)
    paced = make_microscope("plasmonic", seed=0, config=SimConfig(real_time=True))
    for scope in (fast, paced):
        scope.unblank_beam()
    t0 = time.perf_counter()
    rec = paced.acquire_spectrum(0.0, 0.0, 0.08, -1.0, 4.0)
    wall = time.perf_counter() - t0
    simulated = rec.t_end_s - rec.t_start_s
    assert simulated == pytest.approx(0.08 + paced.config.spectrum_readout_s)
    assert wall >= simulated  # the call slept for the dwell and the readout
    same = fast.acquire_spectrum(0.0, 0.0, 0.08, -1.0, 4.0)
    assert same.t_end_s - same.t_start_s == pytest.approx(simulated)  # the same physics either way
    np.testing.assert_array_equal(same.counts, rec.counts)


class FakeModel:
    """A model step that takes ``fit_s`` and ranks candidates by index; records what it was shown."""

    def __init__(self, fit_s: float, fail_at: int | None = None) -> None:
        self.fit_s, self.fail_at = fit_s, fail_at
        self.calls: list[tuple[int, np.ndarray, int]] = []
        self.threads: set[str] = set()

    def __call__(self, rows: np.ndarray, y: np.ndarray, blocked: np.ndarray, q: int) -> Decision:
        self.threads.add(threading.current_thread().name)
        if self.fail_at is not None and len(self.calls) == self.fail_at:
            raise FloatingPointError("the fit diverged")
        self.calls.append((len(y), blocked.copy(), q))
        time.sleep(self.fit_s)
        chosen = [int(i) for i in np.flatnonzero(~blocked)[:q]]
        return Decision(chosen, None, None, len(y), self.fit_s)


def drive(pipe: DecisionPipeline, n: int, m: int, acquire_s: float) -> list[int]:
    measured = np.zeros(m, dtype=bool)
    rows: list[int] = []
    for _ in range(n):
        taken = pipe.take(measured, np.asarray(rows), np.zeros(len(rows)))
        time.sleep(acquire_s)  # the instrument measures while the next fit runs
        measured[taken.candidate] = True
        rows.append(taken.candidate)
    pipe.close()
    return rows


def test_the_pipeline_never_repeats_a_candidate_and_batches_to_outlast_the_fit():
    model = FakeModel(fit_s=0.03)
    pipe = DecisionPipeline(model, max_batch=8)
    visited = drive(pipe, 40, 200, acquire_s=0.005)
    assert len(visited) == len(set(visited)) == 40
    assert model.threads == {t for t in model.threads if t.startswith("autoscope-model")}  # off the loop
    assert pipe.fits < 40 and max(pipe.batches) > 1  # a fit six steps long returns several candidates
    assert model.calls[0][1].sum() == 0  # the first fit waits for nothing: the instrument waits for it
    for n_obs, blocked, _q in model.calls[1:]:
        # every later fit holds out what was measured when it started and the candidate being measured
        assert blocked.sum() >= n_obs + 1
    assert all(q <= 8 for *_, q in model.calls)


def test_a_fit_faster_than_the_instrument_keeps_batches_of_one_or_two():
    model = FakeModel(fit_s=0.0)
    pipe = DecisionPipeline(model, max_batch=8)
    drive(pipe, 30, 100, acquire_s=0.01)
    assert max(pipe.batches[3:]) <= 2
    assert pipe.fits >= 15  # nearly one fit per spectrum: the posterior stays current


def test_a_failing_fit_surfaces_in_the_campaign_thread():
    pipe = DecisionPipeline(FakeModel(fit_s=0.0, fail_at=2))
    with pytest.raises(FloatingPointError, match="diverged"):
        drive(pipe, 10, 50, acquire_s=0.0)


def test_a_pipelined_campaign_on_the_real_time_twin_accounts_its_time(tmp_path: Path):
    scope = make_microscope("plasmonic", seed=1, config=SimConfig(real_time=True))
    cfg = small(method="dkl", budget=40, pipeline=True)
    with RunStore.create(tmp_path / "run") as store:
        result = run_campaign(scope, store, cfg)
        done = store.events("campaign_complete")[-1]
    assert len(result.visited) == len(set(result.visited)) == 40
    t = result.timing
    assert t.pipelined and t.batches and done["timing"]["pipelined"]
    # every spectrum slept its dwell and readout inside the acquire call
    assert t.instrument_s >= 40 * (cfg.spectrum_dwell_s + scope.config.spectrum_readout_s)
    assert 0 <= t.decision_wait_s <= t.wall_s and t.instrument_s <= t.wall_s
    assert t.model_s > 0 and 0 <= t.dead_fraction < 1
    assert result.mean is not None  # the final fit ran after the worker stopped
    assert {s.phase for s in result.steps} == {"seed", "active"}


def test_a_killed_pipelined_campaign_resumes_without_repeating_a_step(tmp_path: Path):
    cfg_path = tmp_path / "campaign.yaml"
    cfg_path.write_text(json.dumps(small(method="dkl", budget=40, pipeline=True).model_dump(mode="json")))
    sim = tmp_path / "twin.yaml"
    sim.write_text("real_time: true\n")
    cmd = [sys.executable, "-m", "autoscope", "campaign", str(cfg_path), "--scenario", "plasmonic"]
    cmd += ["--seed", "3", "--sim-config", str(sim)]
    out = tmp_path / "killed"
    sigkill_when([*cmd, "--out", str(out)], out / "events.jsonl", '"step_id":"al-', 15)
    assert 15 <= log_count(out / "events.jsonl", '"step_id":"al-') < 40, "the kill must land mid-campaign"
    resumed = subprocess.run([*cmd, "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    store = RunStore.open(out, read_only=True)
    acq = [e for e in store.events("acquisition") if e["step_id"].startswith("al-")]
    assert len(acq) == len({e["step_id"] for e in acq}) == 40  # each step acquired exactly once
    assert len({(e["x_nm"], e["y_nm"]) for e in acq}) == 40  # and no position twice
    assert store.events("campaign_complete")[-1]["timing"]["pipelined"]


def test_background_saves_store_the_same_steps_and_surface_a_write_error(tmp_path: Path):
    from autoscope.tools.acquisition import Acquirer

    kw = {"dwell_s": 0.01, "energy_min_eV": -1.0, "energy_max_eV": 4.0}
    stored = {}
    for background in (False, True):
        scope = make_microscope("plasmonic", seed=4)
        scope.unblank_beam()
        with RunStore.create(tmp_path / f"bg-{background}") as store:
            acq = Acquirer(scope, store, background_saves=background)
            for i in range(5):
                acq.spectrum(f"s{i}", x_nm=10.0 * i, y_nm=0.0, **kw)
            again = acq.spectrum("s4", x_nm=40.0, y_nm=0.0, **kw)  # the write in flight is waited for
            acq.close()
            assert scope.status().acquisitions == 5  # s4 was read back, not measured again
            stored[background] = [store.load(f"s{i}").counts for i in range(5)]
            np.testing.assert_array_equal(again.counts, stored[background][4])
            assert [e["step_id"] for e in store.events("acquisition")] == [f"s{i}" for i in range(5)]
    for a, b in zip(stored[False], stored[True], strict=True):
        np.testing.assert_array_equal(a, b)

    scope = make_microscope("plasmonic", seed=4)
    scope.unblank_beam()
    with RunStore.create(tmp_path / "broken") as store:
        acq = Acquirer(scope, store, background_saves=True)

        def full_disk(*_a, **_k):
            raise OSError(28, "No space left on device")

        store.save_spectrum = full_disk  # type: ignore[method-assign]
        acq.spectrum("s0", x_nm=0.0, y_nm=0.0, **kw)  # returns before the write fails
        with pytest.raises(OSError, match="No space"):
            acq.spectrum("s1", x_nm=10.0, y_nm=0.0, **kw)  # the next step learns of it
        acq.close()


def test_while_the_first_fit_runs_the_loop_explores_a_bounded_number_of_points():
    class ColdFirst(FakeModel):
        def __call__(self, rows, y, blocked, q):
            self.fit_s = 0.25 if not self.calls else 0.0  # a cold fit, then fast warm ones
            return super().__call__(rows, y, blocked, q)

    explored: list[int] = []

    def explore(blocked: np.ndarray) -> int:
        i = int(np.flatnonzero(~blocked)[-1])  # from the far end: not what the model would pick
        explored.append(i)
        return i

    pipe = DecisionPipeline(ColdFirst(fit_s=0.0), explore=explore, max_explore=3)
    measured = np.zeros(100, dtype=bool)
    measured[:2] = True
    rows = [0, 1]
    visited = []
    for _ in range(12):
        taken = pipe.take(measured, np.asarray(rows), np.zeros(len(rows)))
        assert (taken.decision is None) == (taken.candidate in explored)
        time.sleep(0.01)
        measured[taken.candidate] = True
        rows.append(taken.candidate)
        visited.append(taken.candidate)
    pipe.close()
    assert len(explored) == 3 and visited[:3] == explored  # then it waited for the cold fit
    assert len(set(visited)) == 12
    assert max(pipe.batches) <= 2  # the cold fit's 250 ms did not size the warm batches
