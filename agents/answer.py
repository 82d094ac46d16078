"""The answer to the scientist's goal, in plain words with the numbers behind it.

Built from the verdicts and the per-class estimates of the unbiased spectra, never from
an LLM. For a signal localized at particle features, it says which particle shapes host
it: a shape hosts the signal when its key class (rod tips, triangle or cube corners)
carries at least the hypothesis' factor times the substrate's mean with a 95 % interval
that says so; "does not" when the interval says the opposite; "undecided" otherwise.
"""

from __future__ import annotations

from typing import Any

from autoscope.tools.predictions import LocalizedAt
from autoscope.tools.verdicts import ClassEstimate, judge_estimates, ratio_ci

KEY_OF_SHAPE = {"rod": "rod_tip", "triangle": "triangle_corner", "cube": "cube_corner"}
WORD = {"supported": "yes", "refuted": "no", "inconclusive": "undecided"}


def shape_hosts(verdict: dict, hypothesis: dict) -> dict[str, Any] | None:
    """Per shape, whether it hosts the signal (yes/no/undecided) with the ratio to the substrate."""
    pred = hypothesis.get("prediction") or {}
    if pred.get("kind") != "localized_at" or pred.get("versus") != "substrate":
        return None
    ests = {e["cls"]: ClassEstimate.model_validate(e) for e in verdict.get("by_class", [])}
    if "substrate" not in ests:
        return None
    r = float(pred.get("min_ratio", 2.0))
    out: dict[str, Any] = {}
    for shape, key in KEY_OF_SHAPE.items():
        if key not in ests or ests[key].n < 2:
            continue
        effect = judge_estimates(LocalizedAt(at=key, versus="substrate", min_ratio=r), ests)
        ratio, lo, hi = ratio_ci(ests[key], ests["substrate"], verdict.get("level", 0.95))
        out[shape] = {
            "hosts": WORD[effect.outcome],
            "class": key,
            "ratio": ratio,
            "ratio_ci": [lo, hi],
            "min_ratio": r,
            "n": ests[key].n,
        }
    return out or None


def goal_answer(goal: str, rounds: list[dict]) -> dict[str, Any]:
    """``{"text": ..., "hosts": {shape: ...} | None, "findings": [...]}`` from the finished rounds."""
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
        sh = shape_hosts(v, h)
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

        text = f"Which particle shapes host {signal}: "
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
    if not findings:
        lines.append("No hypothesis was tested to the end, so the goal is not answered.")
    return {"goal": goal, "text": " ".join(lines), "hosts": hosts, "findings": findings}


__all__ = ["goal_answer", "shape_hosts"]
