"""The oracle's answer to a goal's typed question, and the rule that scores a run's answer.

The truth is computed like a hypothesis's (``evals/truth.py``): the question's signal on the
noise-free spectra of a fresh, undamaged twin of the task's scenario, seed and sample variant,
over the *true* classes (particle outlines, the seeded defect columns, the true interface),
never from the run's survey map or estimates.

**The scoring rule** (written once, here). A question has parts:

- ``hosts``: one part per candidate class the sample has (a class with no true members is no
  part); the run's "yes"/"no" is *correct* when it matches the truth (true mean ≥ ``min_ratio``
  × the reference's), *wrong* when it contradicts it; "undecided" or "unmeasured" is *unanswered*;
- ``strongest``: two parts. The class: the run's is correct when it is the class with the highest
  true mean among the candidates the sample has, wrong when it names another, unanswered when
  undecided — unless no class stands above the rest (a tie, e.g. the signal is absent from the
  field), when the truth is "none" and only "undecided" is correct. The coverage: correct when
  the run measured every candidate the sample has, else unanswered (never wrong);
- ``shift``: two parts, the direction (up/down of the true b − a difference) and the magnitude
  (the run's 95 % interval contains the true difference; unanswered while the direction is).

A task **succeeds** (YES) when every part is correct, fails (NO) when any part is wrong or none is
answered, and is PARTIAL otherwise (some correct, the rest unanswered). Its score is 1, 0.5, 0.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from autoscope.agents.question import HostsQuestion, ShiftQuestion, StrongestQuestion
from autoscope.evals.truth import _Evaluator
from autoscope.instruments.records import ImageRecord

log = logging.getLogger(__name__)
SCORE = {"YES": 1.0, "PARTIAL": 0.5, "NO": 0.0}
#: the strongest-class truth when no candidate stands above the rest (the signal is absent)
NONE = "none"


def question_truth(
    q: HostsQuestion | StrongestQuestion | ShiftQuestion,
    scenario: str,
    seed: int,
    survey: ImageRecord,
    *,
    spectrum_dwell_s: float,
    energy_min_eV: float,
    energy_max_eV: float,
    sample: dict[str, Any] | None = None,
    max_points: int = 300,
) -> dict[str, Any]:
    """The true answer: ``{"parts": {name: truth}, "means": {class: true mean}, "members": ...}``.

    ``hosts``: {class: bool} for the classes the sample has; ``strongest``: {"strongest": class or
    "none", "measured": the candidate classes the sample has};
    ``shift``: {"direction": "up"|"down", "magnitude": true b − a}."""
    ev = _Evaluator.on_fresh_twin(
        scenario, seed, survey, q.signal, spectrum_dwell_s=spectrum_dwell_s, energy_min_eV=energy_min_eV,
        energy_max_eV=energy_max_eV, max_points=max_points, sample=sample,
    )  # fmt: skip

    def mean(c: str) -> float:
        return ev.mean(c, ev.population(c))

    if q.kind == "hosts":
        ref = mean(q.versus)
        means = {q.versus: ref}
        parts = {}
        for c in q.classes:
            means[c] = mean(c)
            if ev.members.get(c, 0) and math.isfinite(means[c]) and math.isfinite(ref):
                parts[c] = bool(means[c] >= q.min_ratio * ref)
    elif q.kind == "strongest":
        means = {c: mean(c) for c in q.classes}
        have = {c: m for c, m in means.items() if ev.members.get(c, 0) and math.isfinite(m)}
        ranked = sorted(have.values(), reverse=True)
        best = max(have, key=have.get) if have else None
        if len(ranked) > 1 and ranked[0] <= ranked[1]:  # a tie (e.g. no class carries the signal)
            best = NONE
        parts = {"strongest": best, "measured": sorted(have)} if have else {}
    else:
        means = {q.a: mean(q.a), q.b: mean(q.b)}
        diff = means[q.b] - means[q.a]
        parts = {"direction": "up" if diff > 0 else "down", "magnitude": diff} if math.isfinite(diff) else {}
    log.info("question truth (%s): %s; means %s", q.kind, parts, means)
    return {"kind": q.kind, "parts": parts, "means": means, "members": dict(ev.members)}


def _part(said: str, truth: Any) -> str:
    if said in ("undecided", "unmeasured", None):
        return "unanswered"
    return "correct" if said == truth else "wrong"


def score_answer(truth: dict[str, Any], answer: dict[str, Any] | None) -> dict[str, Any]:
    """Each part correct / wrong / unanswered, and YES / PARTIAL / NO by the module's rule."""
    parts: dict[str, str] = {}
    said = (answer or {}).get("parts") or {}
    kind = truth["kind"]
    for name, t in truth["parts"].items():
        if kind == "hosts":
            s = (said.get(name) or {}).get("says")
            parts[name] = _part({"yes": True, "no": False}.get(s, s), t)
        elif kind == "strongest" and name == "strongest":
            s = (said.get(name) or {}).get("says")
            parts[name] = _part(NONE if s == "undecided" and t == NONE else s, t)
        elif kind == "strongest":  # every candidate the sample has was measured
            seen = set(((said.get("strongest") or {}).get("measured")) or [])
            parts[name] = "correct" if set(t) <= seen else "unanswered"
        elif name == "direction":
            parts[name] = _part((said.get("direction") or {}).get("says"), t)
        else:  # magnitude: the interval holds the true difference
            lo, hi = ((answer or {}).get("shift") or {}).get("ci") or (None, None)
            if parts.get("direction") != "correct" or lo is None or hi is None:
                parts[name] = "unanswered" if parts.get("direction") != "wrong" else "wrong"
            else:
                parts[name] = "correct" if lo <= t <= hi else "wrong"
    values = list(parts.values())
    if not values or "wrong" in values or all(v == "unanswered" for v in values):
        success = "NO"
    elif all(v == "correct" for v in values):
        success = "YES"
    else:
        success = "PARTIAL"
    return {"success": success, "score": SCORE[success], "parts": parts}


__all__ = ["SCORE", "question_truth", "score_answer"]
