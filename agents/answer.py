"""The answer to the scientist's goal, in plain words with the numbers behind it.

Built from the verdicts and the per-class estimates of the unbiased spectra, never from
an LLM. For a signal localized at particle features, it says which particle shapes host
it: a shape hosts the signal when its key class (rod tips, triangle or cube corners)
carries at least ``HOST_MIN_RATIO`` times the substrate's mean with a 95 % interval that
says so; "does not" when the interval says the opposite; "undecided" otherwise.

The factor is part of the question, not of a hypothesis: the same goal gets the same
criterion whatever factor the hypothesis agent chose to frame its own claim with (the
oracle's answer, ``evals.truth.goal_truth_plasmonic``, uses the same constant).
"""

from __future__ import annotations

from typing import Any

from autoscope.agents.question import HostsQuestion, answer, answers_question, question_classes
from autoscope.agents.question import text as question_text
from autoscope.tools.grounding.classes import KEY_CLASS_OF_SHAPE

HOST_MIN_RATIO = 2.0
"""A shape hosts a signal when its key class's mean is at least this many times the substrate's."""


def hosts_question(hypothesis: Any) -> HostsQuestion | None:
    """The question a signal localized at a class against the substrate raises: which particle
    shapes host it, every shape's key class (in ``KEY_CLASS_OF_SHAPE`` order) against the substrate
    on the hypothesis's own signal. None for any other prediction. ``hypothesis``: a mapping or a
    ``Hypothesis``."""
    if hasattr(hypothesis, "model_dump"):
        hypothesis = hypothesis.model_dump(mode="json")
    pred = hypothesis.get("prediction") or {}
    if pred.get("kind") != "localized_at" or pred.get("versus") != "substrate":
        return None
    return HostsQuestion(
        signal=hypothesis["signal"], classes=list(KEY_CLASS_OF_SHAPE.values()), min_ratio=HOST_MIN_RATIO
    )


def answer_classes(question: Any, hypothesis: Any, present: dict[str, int]) -> list[str]:
    """The classes (with ≥ 2 members in the survey) that the answers drawn from a hypothesis's
    spectra need measured on its signal: the goal's typed ``question`` when the hypothesis is about
    it, and which shapes host a signal it localizes against the substrate. Both planners audit them."""
    implied = hosts_question(hypothesis)
    out: list[str] = []
    for q in (implied, question):
        if q is not None and (q is implied or answers_question(q, hypothesis)):
            out += [c for c in question_classes(q) if present.get(c, 0) >= 2 and c not in out]
    return out


def shape_hosts(verdict: dict, hypothesis: dict, rounds: list[dict] = ()) -> dict[str, Any] | None:
    """Per shape, whether it hosts the signal (yes/no/undecided) with the ratio to the substrate.

    The hosts question over every shape's key class, on the hypothesis's own signal: the unbiased
    spectra of every round that measured the same signal are pooled per class."""
    q = hosts_question(hypothesis)
    if q is None:
        return None
    own = [
        r for r in rounds if r.get("verdict") and r["hypothesis"].get("signal") == hypothesis.get("signal")
    ]
    a = answer(q, own or [{"hypothesis": hypothesis, "verdict": verdict}], verdict.get("level", 0.95))
    out: dict[str, Any] = {}
    for shape, key in KEY_CLASS_OF_SHAPE.items():
        d = a["parts"][key]
        if d["says"] == "unmeasured":
            continue
        out[shape] = {
            "hosts": d["says"],
            "class": key,
            "ratio": d["ratio"],
            "ratio_ci": d["ratio_ci"],
            "min_ratio": HOST_MIN_RATIO,
            "n": d["n"],
        }
    return out or None


def goal_answer(goal: str, rounds: list[dict], question: Any = None) -> dict[str, Any]:
    """``{"text": ..., "hosts": {shape: ...} | None, "question": ... | None, "findings": [...]}`` from
    the finished rounds; ``question``: the goal as a typed question (``agents/question.py``)."""
    findings, hosts, signal = [], None, None
    for r in rounds:
        v, h = r.get("verdict") or {}, r["hypothesis"]
        if not v:
            continue
        findings.append(
            {
                "id": h["id"],
                "outcome": v["outcome"],
                "claim": v.get("claim", h["statement"]),
                "readable": v.get("readable", ""),
            }
        )
        sh = shape_hosts(v, h, rounds)
        if sh and hosts is None:
            hosts, signal = sh, v.get("claim", "").split(" at ")[0]
    lines = []
    if hosts:
        yes = [s for s, d in hosts.items() if d["hosts"] == "yes"]
        no = [s for s, d in hosts.items() if d["hosts"] == "no"]
        und = [s for s, d in hosts.items() if d["hosts"] == "undecided"]

        def fmt(s: str) -> str:
            d = hosts[s]
            lo, hi = d["ratio_ci"]
            ci = f"[{lo:.3g}, {hi:.3g}]" if lo is not None else "[unbounded]"
            return f"{s}s ({d['class']}: {d['ratio']:.3g}× the substrate, 95% interval {ci}, n={d['n']})"

        text = f"Which particle shapes host {signal} (at least {HOST_MIN_RATIO:g}× the substrate at their key feature): "
        text += ("; ".join(fmt(s) for s in yes) + " host it") if yes else "no shape is shown to host it"
        if no:
            text += "; " + "; ".join(fmt(s) for s in no) + " do not"
        if und:
            text += "; undecided for " + "; ".join(fmt(s) for s in und)
        strongest = max(hosts, key=lambda s: hosts[s]["ratio"])
        lines.append(text + f". It is strongest at the {hosts[strongest]['class'].replace('_', ' ')}s.")
    for f in findings:
        lines.append(
            f"{f['id']} is {f['outcome']}: {f['claim']}"
            + (f" ({f['readable']})" if f["readable"] else "")
            + "."
        )
    typed = None
    if question is not None:
        typed = answer(question, rounds)
        typed["text"] = question_text(question, typed)
        if question.kind != "hosts" or not hosts:  # the shapes' sentence above already says it
            lines.insert(0, typed["text"])
    if not findings:
        lines.append("No hypothesis was tested to the end, so the goal is not answered.")
    return {"goal": goal, "text": " ".join(lines), "hosts": hosts, "question": typed, "findings": findings}


__all__ = ["HOST_MIN_RATIO", "goal_answer", "shape_hosts"]
