"""Run store: round trips, the append-only log, crash repair and a real SIGKILL test."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from autoscope.instruments.records import ImageRecord, SpectrumRecord
from autoscope.tests.store_writer import expected_record, step_id
from autoscope.tools.store import RunLocked, RunStore, RunStoreError

WRITER = Path(__file__).with_name("store_writer.py")


def assert_same(a: ImageRecord | SpectrumRecord, b: ImageRecord | SpectrumRecord) -> None:
    assert type(a) is type(b)
    assert a.metadata() == b.metadata()
    arr_a, arr_b = (a.data, b.data) if isinstance(a, ImageRecord) else (a.counts, b.counts)
    assert arr_a.dtype == arr_b.dtype
    np.testing.assert_array_equal(arr_a, arr_b)


def test_image_and_spectrum_round_trip(tmp_path):
    img, spec = expected_record(0), expected_record(1)
    with RunStore.create(tmp_path / "run", {"sample": "Au"}) as store:
        ev = store.save_image("img-0", img, note="overview", position=(1.5, np.float64(2.0)))
        store.save_spectrum("spec-0", spec)
        assert ev["step_id"] == "img-0" and ev["record"] == "image" and ev["detector"] == "haadf"
        assert ev["position"] == [1.5, 2.0] and ev["dose_e"] == img.dose_e
        assert_same(store.load("img-0"), img)
    with RunStore.open(tmp_path / "run") as store:
        assert store.meta == {"sample": "Au"}
        assert store.completed_steps() == {"img-0", "spec-0"}
        assert_same(store.load("img-0"), img)
        assert_same(store.load("spec-0"), spec)
        acq = store.events("acquisition")
        for key in ("dose_e", "dose_e_per_A2", "t_start_s", "t_end_s", "time_utc", "seq"):
            assert all(key in e for e in acq), key
        assert acq[1]["energy_offset_eV"] == spec.energy_offset_eV and acq[1]["record"] == "spectrum"
        with pytest.raises(KeyError, match="nope"):
            store.load("nope")


def test_duplicate_and_bad_step_ids_refused(tmp_path):
    with RunStore.create(tmp_path) as store:
        store.save_image("a1", expected_record(0))
        with pytest.raises(ValueError, match="a1"):
            store.save_spectrum("a1", expected_record(1))
        for bad in ("", "a/b", ".hidden", "x" * 201):
            with pytest.raises(ValueError, match="not allowed"):
                store.save_image(bad, expected_record(0))
        with pytest.raises(ValueError, match="clash"):
            store.save_image("a2", expected_record(0), dose_e=0.0)
    with RunStore.open(tmp_path) as store, pytest.raises(ValueError, match="a1"):
        store.save_image("a1", expected_record(0))
    assert len(RunStore.open(tmp_path, read_only=True).events("acquisition")) == 1


def test_a_step_id_cannot_reach_outside_the_run_directory(tmp_path):
    outside = tmp_path / "outside.h5"
    with RunStore.create(tmp_path / "run") as store:
        store.save_image("a1", expected_record(0))
        for bad in ("../outside", "../../etc/passwd", "/abs"):
            assert not store.has_step(bad)
            with pytest.raises((KeyError, ValueError)):
                store.load(bad)
            with pytest.raises(ValueError, match="not allowed"):
                store.write_artifact(bad, "x")
    log = tmp_path / "run" / "events.jsonl"
    lines = log.read_text().splitlines()
    forged = json.loads(lines[-1]) | {"step_id": "../outside", "seq": 99}
    log.write_text("\n".join([*lines, json.dumps(forged), json.dumps({"kind": "note", "seq": 100})]) + "\n")
    with pytest.raises(RunStoreError, match=r"line \d+: step id '../outside' is not allowed"):
        RunStore.open(tmp_path / "run")
    assert not outside.exists()


def test_events_append_only_with_increasing_seq(tmp_path):
    store = RunStore.create(tmp_path)
    store.append_event("note", value=np.float32(0.25), shape=(2, 3), flag=np.bool_(True))
    before = (tmp_path / "events.jsonl").read_bytes()
    store.save_spectrum("s", expected_record(1))
    store.append_event("note", value=2)
    after = (tmp_path / "events.jsonl").read_bytes()
    assert after.startswith(before) and after.endswith(b"\n")
    lines = [json.loads(line) for line in after.splitlines()]
    assert [e["seq"] for e in lines] == sorted({e["seq"] for e in lines})
    assert [e["kind"] for e in lines] == ["run_created", "note", "acquisition", "note"]
    assert lines[1]["value"] == 0.25 and lines[1]["shape"] == [2, 3] and lines[1]["flag"] is True
    assert store.events("note") == [lines[1], lines[3]]
    with pytest.raises(ValueError, match="save_image"):
        store.append_event("acquisition", step_id="x")
    with pytest.raises(ValueError, match="seq"):
        store.append_event("note", seq=7)
    with pytest.raises(ValueError, match="non-finite"):
        store.append_event("note", value=float("nan"))
    store.close()
    assert (tmp_path / "events.jsonl").read_bytes() == after
    with pytest.raises(RunStoreError, match="closed"):
        store.append_event("note")


def test_torn_last_line_is_repaired(tmp_path):
    with RunStore.create(tmp_path) as store:
        store.save_image("a", expected_record(0))
    with open(tmp_path / "events.jsonl", "ab") as f:
        f.write(b'{"kind":"note","seq":2,"time_')
    with RunStore.open(tmp_path) as store:
        events = store.events()
        assert events[-1]["kind"] == "log_repaired" and events[-1]["dropped_bytes"] == 29
        assert [e["seq"] for e in events] == [0, 1, 2]
        assert store.completed_steps() == {"a"}
    for line in (tmp_path / "events.jsonl").read_bytes().splitlines():
        json.loads(line)


def test_orphan_step_file_is_recovered(tmp_path):
    """Killed between the step file and its event line: the step is not lost."""
    with RunStore.create(tmp_path) as store:
        store.save_image("a", expected_record(0))
        store.save_spectrum("b", expected_record(1), attempt=3)
    raw = (tmp_path / "events.jsonl").read_bytes()
    cut = raw.rstrip(b"\n").rfind(b"\n") + 1
    (tmp_path / "events.jsonl").write_bytes(raw[: cut + 40])  # the event line of "b" half written
    (tmp_path / "steps" / ".tmp-999-c.h5").write_bytes(b"\x89HDF half written")
    with RunStore.open(tmp_path) as store:
        assert store.completed_steps() == {"a", "b"}
        assert_same(store.load("b"), expected_record(1))
        (ev,) = [e for e in store.events("acquisition") if e["step_id"] == "b"]
        assert ev["recovered"] is True and ev["attempt"] == 3 and ev["dose_e"] == expected_record(1).dose_e
        assert len(store.events("log_repaired")) == 1
    assert not list((tmp_path / "steps").glob(".tmp-*"))
    with h5py.File(tmp_path / "data.h5", "r") as f:
        assert set(f) == {"a", "b"}


def test_corrupt_data_h5_is_rebuilt_and_readable_from_another_cwd(tmp_path, monkeypatch):
    run = tmp_path / "deep" / "run"
    with RunStore.create(run) as store:
        store.save_image("a", expected_record(0))
        store.save_spectrum("b", expected_record(1))
    (run / "data.h5").write_bytes(b"not an hdf5 file" * 100)
    with RunStore.open(run) as store:
        store.save_image("c", expected_record(2))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with h5py.File(os.path.join("..", "deep", "run", "data.h5"), "r") as f:
        assert set(f) == {"a", "b", "c"}
        np.testing.assert_array_equal(f["a/data"][()], expected_record(0).data)
        np.testing.assert_array_equal(f["b/counts"][()], expected_record(1).counts)
        assert f["c"].attrs["fov_nm"] == expected_record(2).fov_nm
        assert f["c"].attrs["step_id"] == "c"


def test_one_writer_at_a_time_and_readers_alongside(tmp_path):
    writer = RunStore.create(tmp_path / "r")
    writer.save_image("a", expected_record(0))
    with pytest.raises(RunLocked, match=str(tmp_path / "r")):
        RunStore.open(tmp_path / "r")
    with pytest.raises(RunStoreError, match="already holds a run"):
        RunStore.create(tmp_path / "r")
    reader = RunStore.open(tmp_path / "r", read_only=True)
    assert reader.completed_steps() == {"a"}
    assert_same(reader.load("a"), expected_record(0))
    with pytest.raises(RunStoreError, match="read-only"):
        reader.append_event("note")
    writer.close()
    with RunStore.open_or_create(tmp_path / "r") as again:
        assert again.has_step("a") and not again.has_step("b")
    with pytest.raises(FileNotFoundError, match="holds no run"):
        RunStore.open(tmp_path / "empty")


def _run_writer_and_kill(run: Path, min_saved: int, delay_s: float) -> list[str]:
    proc = subprocess.Popen(
        [sys.executable, str(WRITER), str(run)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    saved = []
    try:
        while len(saved) < min_saved:
            line = proc.stdout.readline()
            assert line, f"writer exited early: {proc.stderr.read()}"
            saved.append(line.split()[1])
        time.sleep(delay_s)
    finally:
        proc.send_signal(signal.SIGKILL)
        rest, _ = proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    return saved + [line.split()[1] for line in rest.splitlines() if line.startswith("saved ")]


def test_sigkill_at_any_moment_loses_nothing_saved(tmp_path):
    run = tmp_path / "run"
    reported: set[str] = set()
    for min_saved, delay_s in [(1, 0.0), (3, 0.0011), (2, 0.0023), (5, 0.0004), (1, 0.0037), (4, 0.0017)]:
        reported |= set(_run_writer_and_kill(run, min_saved, delay_s))
        with RunStore.open(run) as store:
            done = store.completed_steps()
            assert reported <= done
            acquired = [e["step_id"] for e in store.events("acquisition")]
            assert len(acquired) == len(set(acquired)) and set(acquired) == done
            assert done == {step_id(i) for i in range(len(done))}  # no gap: resumed where it stopped
            seqs = [e["seq"] for e in store.events()]
            assert seqs == sorted(set(seqs))
            for s in done:
                assert_same(store.load(s), expected_record(int(s[1:])))
    with h5py.File(run / "data.h5", "r") as f:
        assert set(f) == done
    assert len(done) >= 16
