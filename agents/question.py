"""The scientist's goal as a typed question, and the run's answer to it from its unbiased spectra.

A goal in words ("which particle shapes host the dipole plasmon") becomes a question with a
definite answer that the run's data can give and the twin's oracle can check:

- ``hosts``: for each candidate class, does it carry at least ``min_ratio`` × the reference
  class's signal? (yes / no / undecided per class; the plasmonic goal: rod tips, triangle and
  cube corners against the substrate);
- ``strongest``: which candidate class carries the most signal? (a class that is above every
  other measured candidate with its 95 % interval, else undecided; MoS2: where the O K edge is);
- ``shift``: how far does the signal's energy (an edge onset) move from class ``a`` to ``b``?
  (the difference with its 95 % interval; the oxide: the Ti L onset across the interface).

The answer pools the per-class estimates of every round whose hypothesis measured the same
signal (``pooled``), choosing the signal that matches the question's (the same kind of
scalarizer and reduction, its band overlapping the question's by at least half; an edge onset
may be read at another fraction of the edge), so it never comes from an LLM's words. ``evals/questions.py`` computes the oracle's answer and scores this one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from autoscope.tools.grounding.classes import ClassName
from autoscope.tools.ml.scalarizers import Scalarizer
from autoscope.tools.predictions import LocalizedAt
from autoscope.tools.verdicts import LEVEL, ClassEstimate, judge_estimates, linear_effect, ratio_ci

WORD = {"supported": "yes", "refuted": "no", "inconclusive": "undecided"}
#: settings in which a measured signal may differ from the question's and still answer it: the band
#: (compared by overlap) and how an edge onset is read off (the fraction of the edge, smoothing)
BAND_KEYS = ("lo_eV", "hi_eV", "pre_lo_eV", "pre_hi_eV", "fraction", "smooth_eV")
#: a hypothesis's signal answers the question when its band overlaps the question's by this share
MIN_BAND_OVERLAP = 0.5
_SIGNAL: TypeAdapter = TypeAdapter(Scalarizer)


class _Question(BaseModel):
    model_config = ConfigDict(extra="forbid")

    signal: Scalarizer = Field(description="the signal the goal is about")


class HostsQuestion(_Question):
    kind: Literal["hosts"] = "hosts"
    classes: list[ClassName] = Field(min_length=1, description="the candidate classes")
    versus: ClassName = Field("substrate", description="the reference class")
    min_ratio: float = Field(
        2.0, gt=1.0, le=1000.0, description="what 'hosts' means: this many × the reference"
    )


class StrongestQuestion(_Question):
    kind: Literal["strongest"] = "strongest"
    classes: list[ClassName] = Field(min_length=2, description="the candidate classes")


class ShiftQuestion(_Question):
    kind: Literal["shift"] = "shift"
    a: ClassName
    b: ClassName


Question = Annotated[HostsQuestion | StrongestQuestion | ShiftQuestion, Field(discriminator="kind")]


def band_overlap(a: dict[str, Any], b: dict[str, Any]) -> float:
    """Jaccard overlap of two scalarizers' [lo, hi] bands (1.0 when neither has one)."""
    if "lo_eV" not in a or "lo_eV" not in b:
        return 1.0
    inter = min(a["hi_eV"], b["hi_eV"]) - max(a["lo_eV"], b["lo_eV"])
    union = max(a["hi_eV"], b["hi_eV"]) - min(a["lo_eV"], b["lo_eV"])
    return max(inter, 0.0) / union if union > 0 else 1.0


def _full(signal: dict[str, Any]) -> dict[str, Any]:
    """A scalarizer mapping with its defaults filled in (as the typed model dumps it)."""
    try:
        return _SIGNAL.validate_python(signal).model_dump()
    except ValidationError:
        return dict(signal)


def matches(question_signal: dict[str, Any], signal: dict[str, Any]) -> float:
    """How well a measured signal answers the question's: 0 when it is another quantity (another
    scalarizer or reduction), else the band overlap."""
    question_signal, signal = _full(question_signal), _full(signal)
    strip = lambda d: {k: v for k, v in d.items() if k not in BAND_KEYS}  # noqa: E731
    if strip(question_signal) != strip(signal):
        return 0.0
    return band_overlap(question_signal, signal)


def pooled(ests: list[ClassEstimate]) -> ClassEstimate:
    """One class's estimates from several rounds (independent random samples of the same class with
    the same signal) as one: n-weighted mean, pooled sum of squares."""
    ests = [e for e in ests if e.n and e.mean is not None]
    n = sum(e.n for e in ests)
    mean = sum(e.n * e.mean for e in ests) / n
    ss = sum((e.n - 1) * (e.sd or 0.0) ** 2 + e.n * (e.mean - mean) ** 2 for e in ests)
    sd = (ss / (n - 1)) ** 0.5 if n > 1 else None
    df = None if len(ests) == 1 else float(n - 1)
    return ests[0].model_copy(
        update={"n": n, "mean": mean, "sd": sd, "df": df if len(ests) > 1 else ests[0].df}
    )


def signal_estimates(
    question_signal: dict[str, Any], rounds: Sequence[dict]
) -> tuple[dict, dict[str, ClassEstimate]]:
    """(the measured signal, its pooled per-class estimates) best matching the question's signal:
    rounds are grouped by their exact signal, the best-overlapping group wins (then the one with
    the most spectra). ``({}, {})`` when no round measured it."""
    groups: dict[str, tuple[dict, list[dict]]] = {}
    for r in rounds:
        v, h = r.get("verdict") or {}, r.get("hypothesis") or {}
        sig = h.get("signal") or {}
        if v.get("by_class") and matches(question_signal, sig) >= MIN_BAND_OVERLAP:
            groups.setdefault(repr(sorted(sig.items())), (sig, []))[1].append(v)
    if not groups:
        return {}, {}

    def weight(g):
        sig, vs = g
        return (matches(question_signal, sig), sum(e["n"] for v in vs for e in v["by_class"]))

    sig, verdicts = max(groups.values(), key=weight)
    by: dict[str, list[ClassEstimate]] = {}
    for v in verdicts:
        for e in v["by_class"]:
            by.setdefault(e["cls"], []).append(ClassEstimate.model_validate(e))
    return sig, {c: pooled(es) for c, es in by.items() if any(e.n for e in es)}


def question_classes(q: HostsQuestion | StrongestQuestion | ShiftQuestion) -> list[str]:
    """The classes whose estimates the answer needs."""
    if q.kind == "hosts":
        return [*q.classes, q.versus]
    if q.kind == "strongest":
        return list(q.classes)
    return [q.a, q.b]


def answers_question(q: Any, h: Any) -> bool:
    """Whether hypothesis ``h`` is about question ``q``: a class-mean claim on the question's signal
    that names one of its classes (its spectra then serve the answer too)."""
    if q is None or h.prediction.kind in ("trend", "identity"):
        return False
    candidates = [q.a, q.b] if q.kind == "shift" else q.classes  # not the reference: every control has it
    if not set(h.prediction.classes()) & set(candidates):
        return False
    return matches(q.signal.model_dump(), h.signal.model_dump()) >= MIN_BAND_OVERLAP


def _measured(ests: dict[str, ClassEstimate], c: str) -> bool:
    return c in ests and ests[c].n >= 2 and ests[c].mean is not None


def answer(
    q: HostsQuestion | StrongestQuestion | ShiftQuestion, rounds: Sequence[dict], level: float = LEVEL
) -> dict[str, Any]:
    """The run's answer to ``q`` (a JSON mapping; ``parts`` as the scorer reads them)."""
    sig, ests = signal_estimates(q.signal.model_dump(), rounds)
    out: dict[str, Any] = {"kind": q.kind, "signal": sig or None}
    if q.kind == "hosts":
        parts = {}
        for c in q.classes:
            if not (_measured(ests, c) and _measured(ests, q.versus)):
                parts[c] = {"says": "unmeasured"}
                continue
            eff = judge_estimates(
                LocalizedAt(at=c, versus=q.versus, min_ratio=q.min_ratio), ests, level=level
            )
            ratio, lo, hi = ratio_ci(ests[c], ests[q.versus], level)
            parts[c] = {"says": WORD[eff.outcome], "ratio": ratio, "ratio_ci": [lo, hi], "n": ests[c].n}
        out["parts"] = parts
    elif q.kind == "strongest":
        seen = [c for c in q.classes if _measured(ests, c)]
        best = None
        for c in seen:
            others = [o for o in seen if o != c]
            if others and all(
                linear_effect({c: 1.0, o: -1.0}, ests, level).outcome == "supported" for o in others
            ):
                best = c
        out["parts"] = {
            "strongest": {
                "says": best or "undecided",
                "measured": seen,
                "unmeasured": [c for c in q.classes if c not in seen],
            }
        }
        out["means"] = {c: ests[c].mean for c in seen}
    else:
        if not (_measured(ests, q.a) and _measured(ests, q.b)):
            out["parts"] = {"direction": {"says": "unmeasured"}}
        else:
            eff = linear_effect({q.b: 1.0, q.a: -1.0}, ests, level)
            says = {"supported": "up", "refuted": "down", "inconclusive": "undecided"}[eff.outcome]
            out["parts"] = {"direction": {"says": says}}
            out["shift"] = {"estimate": eff.estimate, "ci": [eff.ci_low, eff.ci_high]}
    return out


def text(q: HostsQuestion | StrongestQuestion | ShiftQuestion, a: dict[str, Any]) -> str:
    """The answer in one sentence, with its numbers."""
    name = q.signal.describe()
    if not a.get("signal"):
        return f"The question about {name} is not answered: no round measured that signal."
    if q.kind == "hosts":
        words = []
        for c, d in a["parts"].items():
            if d["says"] == "unmeasured":
                words.append(f"{c}: not measured")
                continue
            lo, hi = d["ratio_ci"]
            ci = f"[{lo:.3g}, {hi:.3g}]" if lo is not None and hi is not None else "[unbounded]"
            words.append(f"{c}: {d['says']} ({d['ratio']:.3g}× {q.versus}, 95% interval {ci})")
        return (
            f"Which classes carry at least {q.min_ratio:g}× the {q.versus}'s {name}: "
            + "; ".join(words)
            + "."
        )
    if q.kind == "strongest":
        d = a["parts"]["strongest"]
        miss = f" ({', '.join(d['unmeasured'])} not measured)" if d["unmeasured"] else ""
        if d["says"] == "undecided":
            return f"No class is shown to carry the most {name}{miss}."
        return f"{name} is strongest at {d['says']}, above every other measured class{miss}."
    d = a["parts"]["direction"]
    if d["says"] in ("unmeasured", "undecided"):
        return f"The shift of {name} from {q.a} to {q.b} is {d['says']}."
    s = a["shift"]
    return (
        f"{name} moves {d['says']} from {q.a} to {q.b} by {s['estimate']:+.3g} eV "
        f"(95% interval [{s['ci'][0]:+.3g}, {s['ci'][1]:+.3g}])."
    )


__all__ = [
    "HostsQuestion",
    "Question",
    "ShiftQuestion",
    "StrongestQuestion",
    "answer",
    "answers_question",
    "band_overlap",
    "matches",
    "pooled",
    "question_classes",
    "signal_estimates",
    "text",
]
