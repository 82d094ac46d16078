"""A crafted checkpoint cannot run code when a run is resumed (pickle, or msgpack naming a callable)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import ormsgpack
import pytest
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

from autoscope.agents.checkpoint_serde import CheckpointRefused, SafeSerializer
from autoscope.tests.agent_fakes import run


class _Payload:
    """Unpickling this creates the marker file: the proof that a pickle ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _msgpack_payload(marker: Path) -> bytes:
    call = ormsgpack.packb(("builtins", "open", [str(marker), "w"]))
    return ormsgpack.packb({"v": 1, "channel_values": {"x": ormsgpack.Ext(1, call)}})


def _tamper(run_dir: Path, kind: str, blob: bytes) -> None:
    with sqlite3.connect(run_dir / "checkpoints.sqlite") as db:
        (latest,) = db.execute(
            "SELECT checkpoint_id FROM checkpoints ORDER BY checkpoint_id DESC LIMIT 1"
        ).fetchone()
        db.execute(
            "UPDATE checkpoints SET type = ?, checkpoint = ? WHERE checkpoint_id = ?", (kind, blob, latest)
        )


def test_the_default_serializer_would_run_a_crafted_msgpack_checkpoint(tmp_path: Path):
    """The control: without the strict serializer the payload is live (this is the bug class)."""
    marker = tmp_path / "ran"
    JsonPlusSerializer().loads_typed(("msgpack", _msgpack_payload(marker)))
    assert marker.exists()


@pytest.mark.parametrize("kind", ["pickle", "msgpack"])
def test_a_crafted_checkpoint_is_refused_on_resume_and_nothing_in_it_runs(tmp_path: Path, kind: str):
    import pickle

    out = run(tmp_path / "run", autonomy="manual")  # nobody answers: stopped at the first gate
    assert out.status == "stopped"
    marker = tmp_path / "ran"
    blob = pickle.dumps(_Payload(marker)) if kind == "pickle" else _msgpack_payload(marker)
    _tamper(tmp_path / "run", kind, blob)
    with pytest.raises(CheckpointRefused) as err:
        run(tmp_path / "run", resume=True)
    assert err.value.field == "checkpoint"
    assert ("pickle" in str(err.value)) if kind == "pickle" else ("builtins.open" in str(err.value)), str(
        err.value
    )
    assert not marker.exists()


def test_what_autoscope_writes_reads_back():
    serde = SafeSerializer()
    value = {"plan": {"steps": [{"kind": "survey", "fov_nm": 1000.0}]}, "ids": {"a", "b"}}
    assert serde.loads_typed(serde.dumps_typed(value)) == value
    with pytest.raises(CheckpointRefused):
        serde.loads_typed(("msgpack", b"\xc1"))  # not msgpack at all
