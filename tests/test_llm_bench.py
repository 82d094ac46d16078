"""The LLM plan benchmark counts first-try, repaired and fallback proposals from the run's own log."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from pydantic import BaseModel
from typer.testing import CliRunner

from autoscope.agents.cli import app
from autoscope.agents.llm import LLM, LLMCall, LLMError, Message, NoLLM
from autoscope.agents.settings import load_settings
from autoscope.evals.llm_plans import aggregate, bench_llm, proposals_from_events
from autoscope.tests.agent_fakes import answer

runner = CliRunner()


def no_survey(plan: dict) -> dict:
    """A plan without its survey step: valid JSON, refused by the plan checks."""
    return {**plan, "steps": [s for s in plan["steps"] if s["kind"] != "survey"]}


class ByPurpose:
    """A scripted model answering per purpose; the last answer of a purpose repeats.

    An answer is a string, a callable of the messages, or an exception to raise (a failed call).
    """

    backend = "scripted"
    model = "by-purpose"

    def __init__(self, answers: dict[str, list]) -> None:
        self.answers = {k: list(v) for k, v in answers.items()}
        self.calls: list[LLMCall] = []

    def complete_json(self, messages: list[Message], schema: type[BaseModel], *, purpose: str) -> str:
        queue = self.answers[purpose]
        entry = queue.pop(0) if len(queue) > 1 else queue[0]
        start = time.perf_counter()
        if isinstance(entry, Exception):
            self.calls.append(self._call(purpose, 0, start, str(entry)))
            raise entry
        text = entry(messages) if callable(entry) else entry
        self.calls.append(self._call(purpose, len(text.split()), start, None))
        return text

    def _call(self, purpose: str, completion: int, start: float, error: str | None) -> LLMCall:
        return LLMCall(
            purpose=purpose,
            backend=self.backend,
            model=self.model,
            mode="scripted",
            prompt_tokens=100,
            completion_tokens=completion,
            latency_s=time.perf_counter() - start,
            ok=error is None,
            error=error,
        )


def flaky() -> LLM:
    return ByPurpose(
        {
            "hypothesis H1": ["this is not JSON", answer()],  # repaired on the first repair
            "plan for H1": [answer(no_survey)],  # never valid: the deterministic planner answers
            "hypothesis H2": [answer()],  # valid at once
            "plan for H2": [LLMError("connection refused")],  # cannot be asked: fallback after one call
        }
    )


def test_bench_counts_first_try_repaired_and_fallback(tmp_path: Path):
    made: list[str] = []

    def factory(key: str) -> LLM:
        made.append(key)
        return NoLLM() if key == "none" else flaky()

    ticks: list[int] = []
    out = bench_llm(
        ["flaky", "none"],
        ["plasmonic"],
        seeds=1,
        budget=6,
        rounds=2,
        llm_factory=factory,
        progress=ticks.append,
        keep_dir=tmp_path,
    )
    assert made == ["flaky", "none"] and ticks == [1, 1]
    tries = load_settings().llm_repair_retries + 1

    r = out["results"]["flaky"]
    assert (r["proposals"], r["first_try"], r["repaired"], r["fallback"], r["open"]) == (4, 1, 1, 2, 0)
    assert (r["first_try_pct"], r["valid_after_repair_pct"], r["fallback_pct"]) == (25.0, 50.0, 50.0)
    assert r["calls"] == 2 + tries + 1 + 1
    assert r["invalid_answers"] == 1 + tries + 1
    assert r["calls_per_proposal"] == round(r["calls"] / 4, 2)
    assert r["reference"] is False and r["load_s"] is None and r["runs_done"] == 1
    assert set(r["scenarios"]) == {"plasmonic"} and r["scenarios"]["plasmonic"]["fallback"] == 2

    (run,) = [x for x in out["runs"] if x["model"] == "flaky"]
    by_purpose = {p["purpose"]: p for p in run["proposals"]}
    assert [p["purpose"] for p in run["proposals"]] == [
        "hypothesis H1",
        "plan for H1",
        "hypothesis H2",
        "plan for H2",
    ]
    assert [by_purpose[k]["outcome"] for k in by_purpose] == ["repaired", "fallback", "first_try", "fallback"]
    assert [by_purpose[k]["calls"] for k in by_purpose] == [2, tries, 1, 1]
    assert "connection refused" in by_purpose["plan for H2"]["reason"]
    # the run's own summary agrees: the plans were written by the deterministic planner
    summary = json.loads((Path(run["run_dir"]) / "summary.json").read_text())
    assert len(summary["fallbacks"]) == 2 and summary["llm"]["calls"] == r["calls"]
    assert [h["plan_author"] for h in summary["hypotheses"]] == ["deterministic planner (no LLM)"] * 2

    ref = out["results"]["none"]
    assert ref["reference"] is True and "reference" in ref["label"]
    assert (ref["proposals"], ref["first_try"], ref["calls"], ref["first_try_pct"]) == (4, 4, 0, 100.0)
    assert ref["completion_tokens_per_s"] is None and ref["median_proposal_latency_s"] is None
    json.dumps(out)


def call(purpose: str, ok: bool, latency: float = 1.0, tokens: int = 10) -> dict:
    return {
        "kind": "llm_call",
        "purpose": purpose,
        "ok": ok,
        "latency_s": latency,
        "completion_tokens": tokens,
        "prompt_tokens": 50,
    }


def test_proposals_split_on_a_valid_answer_and_on_fallbacks():
    events = [
        {"kind": "planner_fallback", "purpose": "hypothesis H1", "reason": "model missing"},  # no call
        {"kind": "hypothesis", "id": "H1"},
        call("plan for H1", True, latency=2.0),
        {"kind": "dry_run"},
        call("plan for H1", False, latency=1.0),  # asked again after a rejected dry run
        call("plan for H1", True, latency=3.0),
        call("hypothesis H2", False),
        call("hypothesis H2", False),
        {"kind": "planner_fallback", "purpose": "hypothesis H2", "reason": "3 invalid answers"},
        call("plan for H2", False),  # the log ends here: undecided
    ]
    props = proposals_from_events(events)
    assert [(p.purpose, p.outcome, len(p.calls)) for p in props] == [
        ("hypothesis H1", "fallback", 0),
        ("plan for H1", "first_try", 1),
        ("plan for H1", "repaired", 2),
        ("hypothesis H2", "fallback", 2),
        ("plan for H2", "open", 1),
    ]
    run = {
        "status": "done",
        "wall_s": 5.0,
        "proposals": [p.as_dict() for p in props],
        "calls": [c for c in events if c["kind"] == "llm_call"],
    }
    agg = aggregate([run])
    assert (agg["proposals"], agg["first_try_pct"], agg["valid_after_repair_pct"], agg["fallback_pct"]) == (
        5,
        20.0,
        40.0,
        40.0,
    )
    assert agg["completion_tokens_per_s"] == pytest.approx(60 / 9.0, abs=0.05)
    # model time per proposal that asked the model: 2, 4, 2, 1 s
    assert agg["median_proposal_latency_s"] == 2.0


def test_cli_rejects_an_unknown_model_with_exit_2():
    res = runner.invoke(app, ["bench", "llm", "--models", "smollm2,gpt-9", "--scenarios", "plasmonic"])
    assert res.exit_code == 2, res.output
    assert "models" in res.output and "gpt-9" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["bench", "llm", "--models", "none", "--scenarios", "moon-rock"])
    assert res.exit_code == 2 and "scenarios" in res.output
