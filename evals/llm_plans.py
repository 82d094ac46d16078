"""The LLM plan benchmark: how often does each embedded model write a valid proposal, and how fast?

Each model runs the real agent graph (survey, hypothesis, plan, dry run, active-learning
scan, analysis; autonomous gates) on the simulated microscope for every scenario and seed,
with a small budget. A **proposal** is one request for a typed ``Hypothesis`` or ``Plan``
(purpose ``hypothesis Hn`` or ``plan for Hn``): the model's first answer, then at most
``llm_repair_retries`` repairs. From each run's event log (``llm_call`` and
``planner_fallback`` events) a proposal is

- **first try**: its first answer validated (pydantic type and the run's semantic checks);
- **repaired**: an answer validated after one or more repairs;
- **fallback**: no answer validated (or the model could not be asked), so the
  deterministic planner answered.

Per model, and per model and scenario: the proposals, the three rates, the mean calls per
proposal, completion tokens per second (completion tokens over the wall time of the calls,
prompt processing included; also the median of each call's rate, which other processes
slowing a run for a while move less), the median model time per proposal, the model load
time (first use in this process) and the run wall time. The ``none`` backend is the
reference row: the deterministic planner writes every proposal, valid by construction,
with no model call.
"""

from __future__ import annotations

import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoscope.agents.llm import LLM, NoLLM, make_llm
from autoscope.agents.llm.local import MODELS
from autoscope.agents.run_spec import load_run_spec
from autoscope.agents.runner import RunOptions, launch
from autoscope.agents.settings import load_settings
from autoscope.instruments.errors import ConfigError
from autoscope.instruments.sim.scenarios import scenario_names
from autoscope.tools.store import RunStore

log = logging.getLogger(__name__)

#: the deterministic planner, benchmarked as the reference row
REFERENCE = "none"
REFERENCE_LABEL = "deterministic planner (reference: no LLM, valid by construction)"
OUTCOMES = ("first_try", "repaired", "fallback")


def known_models() -> list[str]:
    """Model keys the default factory can build: the embedded models, then the reference."""
    return [*MODELS, REFERENCE]


def check_names(models: Sequence[str], scenarios: Sequence[str]) -> None:
    """Raise ``ConfigError`` naming ``models`` or ``scenarios`` for an unknown or empty choice."""
    for name, chosen, known in (
        ("models", models, known_models()),
        ("scenarios", scenarios, scenario_names()),
    ):
        unknown = [c for c in chosen if c not in known]
        if unknown or not chosen:
            what = f"unknown {', '.join(unknown)}" if unknown else "none chosen"
            raise ConfigError(name, f"{what}; choose from {', '.join(known)}")


def default_llm(model_key: str) -> LLM:
    """The reference planner for ``none``, else the embedded model ``model_key`` with the run's settings."""
    if model_key == REFERENCE:
        return NoLLM()
    settings = load_settings().model_copy(update={"local_model": model_key})
    return make_llm("local", settings)  # built exactly as `autoscope run --llm local` builds it


@dataclass
class Proposal:
    """One request for a typed proposal and what became of it."""

    purpose: str
    calls: list[dict[str, Any]] = field(default_factory=list)
    #: first_try | repaired | fallback | open (the log ends before it was decided)
    outcome: str = "open"
    reason: str | None = None

    @property
    def latency_s(self) -> float:
        return sum(float(c.get("latency_s", 0.0)) for c in self.calls)

    def as_dict(self) -> dict[str, Any]:
        return {
            "purpose": self.purpose,
            "outcome": self.outcome,
            "calls": len(self.calls),
            "latency_s": round(self.latency_s, 3),
            "completion_tokens": sum(int(c.get("completion_tokens", 0)) for c in self.calls),
            "errors": [str(c.get("error"))[:300] for c in self.calls if c.get("error")],
            "reason": self.reason,
        }


def proposals_from_events(events: Sequence[dict[str, Any]]) -> list[Proposal]:
    """Split a run's event log into proposals (see the module docstring), in log order.

    A valid answer closes its proposal, so a plan asked for again for the same hypothesis
    (after a rejected dry run) is a new proposal; a ``planner_fallback`` closes the open
    proposal of its purpose, or stands alone when the model could not be asked at all.
    """
    out: list[Proposal] = []
    current: Proposal | None = None
    for e in events:
        kind, purpose = e.get("kind"), str(e.get("purpose", ""))
        if kind == "llm_call":
            if current is None or current.purpose != purpose:
                if current is not None:
                    out.append(current)  # undecided (cannot happen in a complete log)
                current = Proposal(purpose)
            current.calls.append(e)
            if e.get("ok", True):
                current.outcome = "first_try" if len(current.calls) == 1 else "repaired"
                out.append(current)
                current = None
        elif kind == "planner_fallback":
            if current is not None and current.purpose != purpose:
                out.append(current)
                current = None
            p = current or Proposal(purpose)
            p.outcome, p.reason = "fallback", e.get("reason")
            out.append(p)
            current = None
    if current is not None:
        out.append(current)
    return out


def reference_proposals(events: Sequence[dict[str, Any]]) -> list[Proposal]:
    """The deterministic planner's proposals: one per stored hypothesis and plan, no call."""
    out = []
    for e in events:
        if e.get("kind") == "hypothesis":
            out.append(Proposal(f"hypothesis {e.get('id')}", outcome="first_try"))
        elif e.get("kind") == "plan":
            out.append(Proposal(f"plan for {e.get('hypothesis_id')}", outcome="first_try"))
    return out


def _pct(n: int, total: int) -> float | None:
    return round(100.0 * n / total, 1) if total else None


def aggregate(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Rates and speeds over ``runs`` (records of ``run_one``)."""
    props = [p for r in runs for p in r["proposals"]]
    count = {o: sum(1 for p in props if p["outcome"] == o) for o in (*OUTCOMES, "open")}
    calls = [c for r in runs for c in r["calls"]]
    latency = sum(float(c["latency_s"]) for c in calls)
    completion = sum(int(c["completion_tokens"]) for c in calls)
    asked = [p["latency_s"] for p in props if p["calls"]]
    rates = [int(c["completion_tokens"]) / float(c["latency_s"]) for c in calls if float(c["latency_s"]) > 0]
    walls = [r["wall_s"] for r in runs]
    n = len(props)
    novel = [h for r in runs for h in r.get("novelty", [])]
    return {
        "runs": len(runs),
        "runs_done": sum(1 for r in runs if r["status"] == "done"),
        "proposals": n,
        **count,
        "first_try_pct": _pct(count["first_try"], n),
        "valid_after_repair_pct": _pct(count["first_try"] + count["repaired"], n),
        "fallback_pct": _pct(count["fallback"], n),
        "calls": len(calls),
        "invalid_answers": sum(1 for c in calls if not c["ok"]),
        "calls_per_proposal": round(len(calls) / n, 2) if n else None,
        "prompt_tokens": sum(int(c["prompt_tokens"]) for c in calls),
        "completion_tokens": completion,
        "llm_latency_s": round(latency, 2),
        "completion_tokens_per_s": round(completion / latency, 1) if latency > 0 else None,
        # robust to a run slowed by other processes competing for the cores
        "completion_tokens_per_s_median_call": round(statistics.median(rates), 1) if rates else None,
        "median_proposal_latency_s": round(statistics.median(asked), 2) if asked else None,
        "run_wall_s_median": round(statistics.median(walls), 1) if walls else None,
        "wall_s_total": round(sum(walls), 1),
        # the model's own hypotheses (not fallbacks): how many differ from the example shown
        "model_hypotheses": len(novel),
        "differs_from_example_pct": _pct(sum(h["differs_from_example"] for h in novel), len(novel)),
        "runs_with_a_new_hypothesis": sum(
            1 for r in runs if any(h["differs_from_example"] for h in r.get("novelty", []))
        ),
        # another prediction kind, other classes or another signal kind (not only a threshold)
        "differs_in_substance_pct": _pct(
            sum(h.get("differs_in_substance", False) for h in novel), len(novel)
        ),
        "runs_with_a_new_test": sum(
            1 for r in runs if any(h.get("differs_in_substance", False) for h in r.get("novelty", []))
        ),
    }


def run_one(
    run_dir: Path, model_key: str, llm: LLM, *, scenario: str, seed: int, budget: int, rounds: int
) -> dict[str, Any]:
    """One autonomous run of the graph with ``llm``; its proposals, calls and hypotheses."""
    spec = load_run_spec(None, scenario).model_copy(update={"budget": budget, "rounds": rounds, "seed": seed})
    start = time.perf_counter()
    outcome = launch(run_dir, spec, RunOptions(autonomy="autonomous", llm=llm.backend), llm=llm)
    wall = time.perf_counter() - start
    with RunStore.open(run_dir, read_only=True) as store:
        events = store.events()
    reference = llm.backend == REFERENCE
    props = reference_proposals(events) if reference else proposals_from_events(events)
    calls = [
        {k: c.get(k) for k in ("purpose", "ok", "prompt_tokens", "completion_tokens", "latency_s", "mode")}
        for c in events
        if c.get("kind") == "llm_call"
    ]
    s = outcome.summary
    return {
        "model": model_key,
        "scenario": scenario,
        "seed": seed,
        "run_dir": str(run_dir),
        "status": outcome.status,
        "stop_reason": s.get("stop_reason"),
        "wall_s": round(wall, 2),
        "measurements": s.get("measurements"),
        "proposals": [p.as_dict() for p in props],
        "calls": calls,
        "hypotheses": s.get("hypotheses", []),
        "novelty": [
            {
                k: e.get(k)
                for k in (
                    "hypothesis_id",
                    "differs_from_example",
                    "differs_in_substance",
                    "same_signal",
                    "same_prediction",
                    "classes",
                )
            }
            for e in events
            if e.get("kind") == "hypothesis_novelty"
        ],
    }


def bench_llm(
    models: Sequence[str],
    scenarios: Sequence[str],
    seeds: int = 1,
    budget: int = 12,
    rounds: int = 2,
    llm_factory: Callable[[str], LLM] | None = None,
    progress: Callable[[int], None] | None = None,
    *,
    keep_dir: Path | None = None,
) -> dict[str, Any]:
    """Run every model on every scenario and seed; rates and speeds per model and per scenario.

    ``llm_factory(model_key)`` builds a fresh client per run (default: ``default_llm``, which
    knows ``known_models()``); ``progress(1)`` after each run; ``keep_dir`` keeps the run
    directories (``<model>-<scenario>-s<seed>``, report.md and summary.json included),
    otherwise they go in a temporary directory that is removed.
    """
    if llm_factory is None:
        check_names(models, scenarios)
    factory = llm_factory or default_llm
    out: dict[str, Any] = {
        "models": list(models),
        "scenarios": list(scenarios),
        "seeds": seeds,
        "budget": budget,
        "rounds": rounds,
        "repair_retries": load_settings().llm_repair_retries,
        "cpus": os.cpu_count(),
        "load_avg_start": [round(v, 2) for v in os.getloadavg()],
        "results": {},
        "runs": [],
    }
    with tempfile.TemporaryDirectory(prefix="autoscope-llm-bench-") as tmp:
        root = Path(keep_dir) if keep_dir is not None else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        for key in models:
            runs: list[dict[str, Any]] = []
            load_s: float | None = None
            label = ""
            for scenario in scenarios:
                for seed in range(seeds):
                    llm = factory(key)
                    label = REFERENCE_LABEL if llm.backend == REFERENCE else llm.model
                    if not runs and hasattr(llm, "load"):
                        t0 = time.perf_counter()
                        llm.load()  # first use in this process pays for it; later runs reuse the model
                        load_s = round(time.perf_counter() - t0, 2)
                        log.info("%s: loaded in %.1f s", key, load_s)
                    record = run_one(
                        root / f"{key}-{scenario}-s{seed}",
                        key,
                        llm,
                        scenario=scenario,
                        seed=seed,
                        budget=budget,
                        rounds=rounds,
                    )
                    runs.append(record)
                    log.info(
                        "%s on %s seed %d: %s in %.0f s, %s",
                        key,
                        scenario,
                        seed,
                        record["status"],
                        record["wall_s"],
                        [p["outcome"] for p in record["proposals"]],
                    )
                    if progress:
                        progress(1)
            out["results"][key] = {
                "label": label,
                "reference": key == REFERENCE or label == REFERENCE_LABEL,
                "load_s": load_s,
                **aggregate(runs),
                "scenarios": {s: aggregate([r for r in runs if r["scenario"] == s]) for s in scenarios},
            }
            out["runs"] += runs
    out["load_avg_end"] = [round(v, 2) for v in os.getloadavg()]
    if keep_dir is None:
        for r in out["runs"]:
            r["run_dir"] = None  # removed with the temporary directory
    return out
