"""Verdicts of whole runs against the twin's ground truth (a reduced ``autoscope bench science``).

The truth of each hypothesis is computed from the oracle (``evals/truth.py``) without the
run's survey map or estimator; a verdict that is not inconclusive must agree with it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from autoscope.evals.science import aggregate, hand_written, run_one, score_run


@pytest.mark.parametrize(
    ("scenario", "picks"),
    [("plasmonic", (0, 1, 4)), ("tmd-defects", (0, 1)), ("oxide-interface", (0, 1, 2))],
)
def test_hand_written_hypotheses_true_and_false_get_verdicts_that_agree_with_the_truth(
    tmp_path: Path, scenario: str, picks
):
    edits = [hand_written(scenario)[i][0] for i in picks]
    # 60 spectra a hypothesis, and the survey's (at most 6, one on each kind of feature) on top
    run_dir = run_one(scenario, 0, tmp_path / "run", rounds=len(edits), budget=60 * len(edits) + 6, edits=edits)
    rows = score_run(run_dir, scenario, 0)["rows"]
    assert [r["statement"] for r in rows] == [e["statement"] for e in edits]  # the edited ones were tested
    assert any(r["holds"] for r in rows) and any(not r["holds"] for r in rows)
    agg = aggregate(rows)
    assert agg["decided"] >= len(rows) - 1, rows
    assert agg["agree_pct"] == 100.0, rows
    assert not any(r["false_supported"] for r in rows)


def test_a_deterministic_run_answers_the_demo_goal_as_the_truth_does(tmp_path: Path):
    run_dir = run_one("plasmonic", 0, tmp_path / "run", rounds=2, budget=240)
    scored = score_run(run_dir, "plasmonic", 0)
    assert all(r["agree"] is not False for r in scored["rows"]), scored["rows"]
    shapes = scored["goal"]["shapes"]
    assert shapes["rod"]["said"] == "yes" and shapes["rod"]["truth"]  # rods host the 1.1–1.7 eV band
    assert shapes["cube"]["said"] == "no" and not shapes["cube"]["truth"]
    assert all(d["agree"] is not False for d in shapes.values()), shapes
    report = (run_dir / "report.md").read_text()
    assert "Which particle shapes host" in report and "rods (rod_tip" in report


def test_a_replayed_spectrum_image_gets_a_map_verdicts_and_an_answer(tmp_path: Path):
    """No oracle on recorded data: the map, the verdicts and the report are produced all the same."""
    from autoscope.agents.run_spec import load_run_spec
    from autoscope.agents.runner import RunOptions, launch
    from autoscope.tests.datasets import record_from_twin

    data = record_from_twin(
        tmp_path / "si.h5", grid=32, fov_nm=400.0, channels=280, spectrum_dwell_s=0.02, scenario="plasmonic"
    )
    spec = load_run_spec(None, "plasmonic").model_copy(update={"budget": 60, "rounds": 2})
    out = launch(tmp_path / "run", spec, RunOptions(autonomy="autonomous", llm="none", replay=data))
    s = out.summary
    assert out.status == "done" and len(s["hypotheses"]) == 2
    assert all(h["verdict"] in ("supported", "refuted", "inconclusive") for h in s["hypotheses"])
    assert all(h["ci"] is not None for h in s["hypotheses"])
    survey = (tmp_path / "run" / "report.md").read_text()
    assert "Particles:" in survey and "rod_tip" in survey and "## Answer to the goal" in survey
    assert s["images"] == 1  # the survey was the recorded field, resampled
    # no oracle stands behind recorded data: scoring it is refused, naming why
    from typer.testing import CliRunner

    from autoscope.agents.cli import app

    r = CliRunner().invoke(app, ["bench", "score", str(tmp_path / "run")])
    assert r.exit_code == 2 and "replay" in r.output and "oracle" in r.output
