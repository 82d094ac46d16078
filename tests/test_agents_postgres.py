"""PostgreSQL checkpoints: a run stopped at a gate resumes there from a PostgreSQL server.

Needs a server: ``AUTOSCOPE_TEST_POSTGRES_URL=postgresql://user:pw@127.0.0.1:5432/db``
(``.ci/run`` installs PostgreSQL, starts it on loopback and sets the variable).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from autoscope.tests.agent_fakes import ScriptedPerson, approve, run

URL = os.environ.get("AUTOSCOPE_TEST_POSTGRES_URL")
pytestmark = pytest.mark.skipif(
    not URL, reason="no PostgreSQL server: set AUTOSCOPE_TEST_POSTGRES_URL (.ci/run starts one)"
)


def test_a_run_checkpointed_in_postgres_stops_at_a_gate_and_resumes_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    import psycopg

    monkeypatch.setenv("AUTOSCOPE_CHECKPOINT_URL", URL)
    first = run(tmp_path / "run", autonomy="manual", budget=12)
    assert first.status == "stopped" and first.pending.gate == "hypothesis"
    assert not (tmp_path / "run" / "checkpoints.sqlite").exists()
    run_id = first.summary["run_id"]
    with psycopg.connect(URL) as conn:
        (n,) = conn.execute("SELECT count(*) FROM checkpoints WHERE thread_id = %s", (run_id,)).fetchone()
    assert n > 0
    person = ScriptedPerson([approve(), approve(), approve()])
    again = run(tmp_path / "run", person=person, autonomy="manual", resume=True)
    assert person.requests[0].gate == "hypothesis"
    assert person.requests[0].proposal == first.pending.proposal
    assert again.status == "done" and again.summary["measurements"] == 12  # the survey's spectra included
    assert 0 < again.summary["hypotheses"][0]["measurements"] < 12
    assert 0 < again.summary["checkpoint_bytes"] < 64_000
