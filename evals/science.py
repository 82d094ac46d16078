"""The science benchmark: are the verdicts of whole runs true of the sample?

Every verdict of a run is scored against the ground truth of its hypothesis
(``evals/truth.py``: the prediction's effect on the twin's noise-free signal over the true
classes, computed without the run's survey map or estimator). Two kinds of runs:

- **deterministic**: ``autoscope run --llm none`` (autonomous); every round's verdict;
- **hand-written**: a manual run in which a scripted scientist replaces the proposal at
  every hypothesis gate with one of ``HAND_WRITTEN[scenario]`` (at least half of them
  false of the sample by design) and approves the rest.

A verdict **agrees** when it is ``supported`` and the claim holds, or ``refuted`` and it
does not; ``inconclusive`` verdicts are counted apart. Reported: verdicts, agreement among
the decided ones, the share of false ``supported`` (claims that do not hold but were
supported) among the decided, the share inconclusive, a confusion table, and for the
plasmonic goal the shapes whose hosting the run answered, scored the same way.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from autoscope.agents.answer import HOST_MIN_RATIO
from autoscope.agents.gates import GateRequest, GateResponse
from autoscope.agents.run_spec import load_run_spec
from autoscope.agents.runner import RunOptions, launch
from autoscope.evals.truth import goal_truth_plasmonic, hypothesis_truth
from autoscope.instruments.errors import ConfigError
from autoscope.instruments.sim.oracle import Oracle
from autoscope.instruments.sim.scenarios import make_microscope
from autoscope.tools.plan import Hypothesis, Plan
from autoscope.tools.store import RunStore
from autoscope.tools.survey import IMAGE_STEP

log = logging.getLogger(__name__)
SCENARIOS = ("plasmonic", "tmd-defects", "oxide-interface")

_DIPOLE = {"kind": "band_intensity", "lo_eV": 1.1, "hi_eV": 1.7, "reduce": "integral", "normalize": "dose"}
_BULK = {"kind": "band_intensity", "lo_eV": 3.6, "hi_eV": 4.0, "reduce": "integral", "normalize": "dose"}
_OK = {
    "kind": "band_intensity", "lo_eV": 530.0, "hi_eV": 560.0, "background": "power_law",
    "pre_lo_eV": 490.0, "pre_hi_eV": 525.0, "normalize": "dose",
}  # fmt: skip
_SL = {
    "kind": "band_intensity", "lo_eV": 165.0, "hi_eV": 185.0, "background": "power_law",
    "pre_lo_eV": 140.0, "pre_hi_eV": 160.0, "normalize": "dose",
}  # fmt: skip
_TIL = {
    "kind": "edge_onset",
    "lo_eV": 450.0,
    "hi_eV": 470.0,
    "pre_lo_eV": 435.0,
    "pre_hi_eV": 450.0,
    "fraction": 0.1,
}
_LAM = {
    "kind": "band_intensity", "lo_eV": 828.0, "hi_eV": 858.0, "background": "power_law",
    "pre_lo_eV": 790.0, "pre_hi_eV": 825.0, "normalize": "dose",
}  # fmt: skip

#: hand-written hypotheses per scenario, and whether each was written to be true of the sample
HAND_WRITTEN: dict[str, list[tuple[dict, bool]]] = {
    "plasmonic": [
        ({"statement": "The dipole band is strongest at rod tips", "signal": _DIPOLE,
          "prediction": {"kind": "localized_at", "at": "rod_tip", "versus": "substrate", "min_ratio": 2.0}}, True),
        ({"statement": "Cube corners host the dipole band", "signal": _DIPOLE,
          "prediction": {"kind": "localized_at", "at": "cube_corner", "versus": "substrate", "min_ratio": 2.0}}, False),
        ({"statement": "The dipole band is the same on rod tips and the film", "signal": _DIPOLE,
          "prediction": {"kind": "uniform", "over": ["rod_tip", "substrate"], "max_ratio": 1.5}}, False),
        ({"statement": "The film carries more of the dipole band than the rod tips", "signal": _DIPOLE,
          "prediction": {"kind": "localized_at", "at": "substrate", "versus": "rod_tip", "min_ratio": 2.0}}, False),
        ({"statement": "The bulk plasmon is inside the thick cubes, not on the film", "signal": _BULK,
          "prediction": {"kind": "contrast", "a": "cube_face", "b": "substrate", "min_ratio": 3.0}}, True),
    ],
    "tmd-defects": [
        ({"statement": "O sits at the columns that are dimmer than the S2 sublattice", "signal": _OK,
          "prediction": {"kind": "localized_at", "at": "dim_site_dimmer", "versus": "sublattice_dim",
                         "min_ratio": 2.0}}, True),
        ({"statement": "O sits at the columns that are brighter than the Mo sublattice", "signal": _OK,
          "prediction": {"kind": "localized_at", "at": "bright_site_brighter", "versus": "sublattice_bright",
                         "min_ratio": 2.0}}, False),
        ({"statement": "The S L2,3 edge is stronger on the dim (S2) sublattice", "signal": _SL,
          "prediction": {"kind": "contrast", "a": "sublattice_dim", "b": "sublattice_bright",
                         "direction": "higher", "min_ratio": 1.5}}, True),
        ({"statement": "The S L2,3 edge is stronger on the bright (Mo) sublattice", "signal": _SL,
          "prediction": {"kind": "contrast", "a": "sublattice_bright", "b": "sublattice_dim",
                         "direction": "higher", "min_ratio": 1.5}}, False),
        ({"statement": "The brighter Mo-sublattice columns are W substituting Mo", "signal": _OK,
          "prediction": {"kind": "identity", "at": "bright_site_brighter", "species": "W", "host": "Mo"}}, True),
        ({"statement": "The dimmer S-sublattice columns are Se substituting S", "signal": _OK,
          "prediction": {"kind": "identity", "at": "dim_site_dimmer", "species": "Se", "host": "S"}}, False),
    ],
    "oxide-interface": [
        ({"statement": "The Ti L3 onset rises from the bright to the dim side", "signal": _TIL,
          "prediction": {"kind": "shift", "a": "bright_side", "b": "dim_side", "direction": "up",
                         "min_shift_eV": 0.5, "expected_eV": 1.93}}, True),
        ({"statement": "The Ti L3 onset falls from the bright to the dim side", "signal": _TIL,
          "prediction": {"kind": "shift", "a": "bright_side", "b": "dim_side", "direction": "down",
                         "min_shift_eV": 0.5}}, False),
        ({"statement": "The Ti L3 onset shifts by more than 3 eV across the interface", "signal": _TIL,
          "prediction": {"kind": "shift", "a": "bright_side", "b": "dim_side", "direction": "up",
                         "min_shift_eV": 3.0}}, False),
        ({"statement": "La M4,5 is on the bright side", "signal": _LAM,
          "prediction": {"kind": "contrast", "a": "bright_side", "b": "dim_side", "min_ratio": 2.0}}, True),
        ({"statement": "La M4,5 is on the dim side", "signal": _LAM,
          "prediction": {"kind": "contrast", "a": "dim_side", "b": "bright_side", "min_ratio": 2.0}}, False),
    ],
}  # fmt: skip


def check_scenarios(names: Sequence[str]) -> None:
    """``ConfigError`` naming ``scenarios`` for an unknown or empty choice (hand-written sets exist for each)."""
    unknown = [n for n in names if n not in HAND_WRITTEN]
    if unknown or not names:
        raise ConfigError(
            "scenarios",
            f"unknown or no scenario: {', '.join(unknown) or '(none)'}; known: {', '.join(HAND_WRITTEN)}",
        )


def hand_written(scenario: str) -> list[tuple[dict, bool]]:
    """The scenario's hand-written edits (statement, signal, prediction, expected, refuted_if) and intent."""
    out = []
    for edit, true in HAND_WRITTEN[scenario]:
        edit = {"expected": "as stated", "refuted_if": "the opposite", **edit}
        out.append((edit, true))
    return out


def latest_per_hypothesis(events: list[dict]) -> dict[str, dict]:
    """The last event of each hypothesis (keyed by ``hypothesis_id``, else by the event's ``id``):
    a hypothesis, plan or verdict re-stored after an edit or a resume supersedes the earlier one."""
    out = {}
    for e in events:
        out[e.get("hypothesis_id") or e.get("id")] = e
    return out


def _strip(e: dict) -> dict:
    return {k: v for k, v in e.items() if k not in ("kind", "seq", "time_utc")}


def score_run(
    run_dir: Path, scenario: str, seed: int, *, max_points: int = 300, sample: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Every verdict of a finished run against the truth of its hypothesis (on the twin of the
    ``sample`` variant); the plasmonic goal's answer too."""
    store = RunStore.open(run_dir, read_only=True)
    survey = store.load(IMAGE_STEP)
    latest = latest_per_hypothesis
    hyps = {k: Hypothesis.model_validate(_strip(v)) for k, v in latest(store.events("hypothesis")).items()}
    plans = {k: Plan.model_validate(_strip(v)) for k, v in latest(store.events("plan")).items()}
    rows = []
    for hid, v in latest(store.events("verdict")).items():
        h, p = hyps[hid], plans[hid]
        step = p.audit or (p.sites[0] if p.sites else None)
        dwell = step.spectrum_dwell_s if hasattr(step, "spectrum_dwell_s") else step.dwell_s
        truth = hypothesis_truth(
            h,
            scenario,
            seed,
            survey,
            spectrum_dwell_s=dwell,
            energy_min_eV=step.energy_min_eV,
            energy_max_eV=step.energy_max_eV,
            max_points=max_points,
            sample=sample,
        )
        rows.append(
            {
                "scenario": scenario,
                "seed": seed,
                "id": hid,
                "statement": h.statement,
                "prediction": h.prediction.kind,
                "author": h.author,
                "outcome": v["outcome"],
                "estimate": v.get("estimate"),
                "ci": [v.get("ci_low"), v.get("ci_high")],
                "holds": truth.holds,
                "true_effect": truth.effect,
                "agree": (v["outcome"] == "supported") == truth.holds
                if v["outcome"] != "inconclusive"
                else None,
                "false_supported": v["outcome"] == "supported" and not truth.holds,
                "spectra": v.get("measurements", 0),
            }
        )
    summary = json.loads((Path(run_dir) / "summary.json").read_text())
    goal = (
        _score_goal(summary, scenario, seed, survey, plans, hyps, sample) if scenario == "plasmonic" else None
    )
    return {"rows": rows, "goal": goal}


def _score_goal(summary, scenario, seed, survey, plans, hyps, sample=None) -> dict | None:
    hosts = (summary.get("answer") or {}).get("hosts")
    if not hosts:
        return None
    hid = next(
        (
            h.id
            for h in hyps.values()
            if h.prediction.kind == "localized_at" and h.prediction.versus == "substrate"
        ),
        None,
    )
    p, h = plans[hid], hyps[hid]
    scope = make_microscope(scenario, seed=seed, variant=sample)
    truth, _ = goal_truth_plasmonic(
        Oracle(scope).truth(),
        scope,
        survey,
        h.signal,
        spectrum_dwell_s=p.audit.spectrum_dwell_s,
        energy_min_eV=p.audit.energy_min_eV,
        energy_max_eV=p.audit.energy_max_eV,
        min_ratio=HOST_MIN_RATIO,
        seed=seed,
    )
    per = {}
    for shape, d in hosts.items():
        said = d["hosts"]
        per[shape] = {
            "said": said,
            "truth": truth.get(shape),
            "agree": None if said == "undecided" else (said == "yes") == truth.get(shape),
        }
    return {"signal": h.signal.describe(), "shapes": per}


def hand_responder(edits: list[dict]) -> Callable[[GateRequest], GateResponse]:
    """A scripted scientist: replaces each proposed hypothesis by the next edit, approves plans and verdicts."""
    queue = list(edits)

    def answer(req: GateRequest) -> GateResponse:
        if req.gate == "hypothesis" and queue:
            return GateResponse(action="edit", edit=queue.pop(0), who="bench science")
        if req.gate == "intervention":
            return GateResponse(action="reject", reason="end the scan and analyze", who="bench science")
        return GateResponse(action="approve", who="bench science")

    return answer


def run_one(
    scenario: str,
    seed: int,
    out: Path,
    *,
    rounds: int,
    budget: int,
    edits: list[dict] | None = None,
    allocation: str = "equal",
) -> Path:
    spec = load_run_spec(None, scenario).model_copy(
        update={"seed": seed, "rounds": rounds, "budget": budget, "audit_allocation": allocation}
    )
    if edits is None:
        launch(out, spec, RunOptions(autonomy="autonomous", llm="none"))
    else:
        launch(out, spec, RunOptions(autonomy="manual", llm="none"), responder=hand_responder(edits))
    return out


def aggregate(rows: Sequence[dict]) -> dict[str, Any]:
    decided = [r for r in rows if r["outcome"] != "inconclusive"]
    table = {o: {"true": 0, "false": 0} for o in ("supported", "refuted", "inconclusive")}
    for r in rows:
        table[r["outcome"]]["true" if r["holds"] else "false"] += 1
    n = len(rows)
    spectra = [r["spectra"] for r in rows]
    return {
        "verdicts": n,
        "unbiased_spectra_per_verdict": sum(spectra) / n if n else None,
        "decided": len(decided),
        "agree_pct": 100.0 * sum(bool(r["agree"]) for r in decided) / len(decided) if decided else None,
        "false_supported_pct": 100.0 * sum(r["false_supported"] for r in decided) / len(decided)
        if decided
        else None,
        "inconclusive_pct": 100.0 * (n - len(decided)) / n if n else None,
        "confusion": table,
    }


def bench_science(
    scenarios: Sequence[str] = SCENARIOS,
    seeds: int = 5,
    *,
    rounds: int = 3,
    budget_per_round: int = 60,
    hand_seeds: int = 2,
    allocation: str = "equal",
    keep_dir: Path | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Deterministic runs (``seeds`` per scenario) and hand-written runs (``hand_seeds``), all scored."""
    rows: list[dict] = []
    goals: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="autoscope-science-") as tmp:
        base = Path(keep_dir or tmp)
        for scenario in scenarios:
            jobs = [("auto", s, None) for s in range(seeds)]
            jobs += [("hand", s, [e for e, _ in hand_written(scenario)]) for s in range(hand_seeds)]
            for kind, seed, edits in jobs:
                n = len(edits) if edits else rounds
                d = run_one(
                    scenario,
                    seed,
                    base / f"{scenario}-{kind}-{seed}",
                    rounds=n,
                    budget=budget_per_round * n,
                    edits=edits,
                    allocation=allocation,
                )
                scored = score_run(d, scenario, seed)
                for r in scored["rows"]:
                    r["kind"] = kind
                rows += scored["rows"]
                if scored["goal"]:
                    goals.append({"seed": seed, "kind": kind, **scored["goal"]})
                if progress:
                    progress(1)
    out = {
        "all": aggregate(rows),
        "deterministic": aggregate([r for r in rows if r["kind"] == "auto"]),
        "hand_written": aggregate([r for r in rows if r["kind"] == "hand"]),
        "by_scenario": {s: aggregate([r for r in rows if r["scenario"] == s]) for s in scenarios},
        "goal": goals,
        "rows": rows,
    }
    hand_rows = [r for r in rows if r["kind"] == "hand"]
    out["hand_written"]["false_claims_pct"] = (
        100.0 * sum(not r["holds"] for r in hand_rows) / len(hand_rows) if hand_rows else None
    )
    return out


__all__ = [
    "HAND_WRITTEN",
    "aggregate",
    "bench_science",
    "check_scenarios",
    "hand_responder",
    "latest_per_hypothesis",
    "run_one",
    "score_run",
]
