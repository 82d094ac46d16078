"""Analysis: a verdict on the hypothesis from the measured signal, with theory in the loop.

The verdict is computed, not written by an LLM: the prediction says which statistic
decides (p90/median for intensities, p90 − p10 for energies) and at what threshold.
Theory tools add evidence where they apply: edge energies against the literature table
for an edge-onset signal, and defect-model ranking on the survey image (MoS2) at the
position with the strongest core-loss signal.
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
from langgraph.runtime import Runtime
from pydantic import BaseModel, Field

from autoscope.agents.context import RunContext
from autoscope.agents.state import GraphState
from autoscope.theory.compare import EDGE_TABLE, check_edge_energy
from autoscope.tools.plan import Hypothesis
from autoscope.tools.plan_engine import RoundResult
from autoscope.tools.queries import signal_values
from autoscope.tools.survey import IMAGE_STEP

log = logging.getLogger(__name__)
MIN_MEASUREMENTS = 10
ENERGY_SIGNALS = ("peak_position", "edge_onset")


class Verdict(BaseModel):
    hypothesis_id: str
    outcome: Literal["supported", "refuted", "inconclusive"]
    statistic: str
    value: float | None = None
    threshold: float
    measurements: int
    evidence: list[str] = Field(default_factory=list)
    theory: dict | None = None
    author: str = "analysis (computed)"


def measured_values(ctx: RunContext, h: Hypothesis) -> list[tuple[str, float]]:
    """(step id, signal) of every spectrum of the round, read back from the store."""
    return [(sid, y) for sid, y, _, _ in signal_values(ctx.store, h)]


def judge(
    h: Hypothesis, ys: np.ndarray
) -> tuple[Literal["supported", "refuted", "inconclusive"], str, float | None, float]:
    energy = h.signal.kind in ENERGY_SIGNALS
    threshold = h.prediction.shift_eV if energy else h.prediction.contrast
    stat = "p90 − p10 (eV)" if energy else "p90/median"
    if ys.size < MIN_MEASUREMENTS:
        return "inconclusive", stat, None, threshold
    if energy:
        value = float(np.percentile(ys, 90) - np.percentile(ys, 10))
    else:
        med = float(np.median(ys))
        if med <= 0:  # background-subtracted: how far the top lies above the typical scatter
            stat = "(p95 − median)/σ_MAD"
            sigma = 1.4826 * float(np.median(np.abs(ys - med)))
            if sigma <= 0:
                return "inconclusive", stat, None, threshold
            value = float((np.percentile(ys, 95) - med) / sigma)
        else:
            value = float(np.percentile(ys, 90) / med)
    localized = value >= threshold
    ok = localized == (h.prediction.pattern == "localized")
    return ("supported" if ok else "refuted"), stat, value, threshold


def theory_evidence(
    ctx: RunContext, h: Hypothesis, values: list[tuple[str, float]]
) -> tuple[list[str], dict | None]:
    sig = h.signal.model_dump()
    lo, hi = sig.get("lo_eV"), sig.get("hi_eV")
    if lo is None or not values:
        return [], None
    edges = [r for r in EDGE_TABLE if lo - 5 <= r.onset_eV <= hi]
    if not edges:
        return [], None
    ref = edges[0]
    if h.signal.kind == "edge_onset":
        onsets = np.array([y for _, y in values])
        lines, checks = [], {}
        for label, onset in (("lowest", float(onsets.min())), ("highest", float(onsets.max()))):
            chk = check_edge_energy(onset, ref.element, ref.edge, tolerance_eV=2.0)
            checks[label] = chk.model_dump(mode="json")
            lines.append(f"theory ({label} onset {onset:.2f} eV): {chk.statement}")
        return lines, {"tool": "check_edge_energy", "element": ref.element, "edge": ref.edge, **checks}
    if ctx.spec.scenario == "tmd-defects" and ref.element != "S":
        from autoscope.theory.structures import DefectSpec
        from autoscope.tools.theory import RankRequest, rank_at

        best_sid = max(values, key=lambda t: t[1])[0]
        rec = ctx.store.load(best_sid)
        req = RankRequest(
            x_nm=rec.x_nm,
            y_nm=rec.y_nm,
            defect=DefectSpec(kind="substitution", host="S", species=ref.element),
        )
        try:
            outcome = rank_at(ctx.store.load(IMAGE_STEP), req)
        except Exception as exc:  # a theory tool failing is evidence missing, not a failed run
            log.warning("theory ranking failed: %s", exc)
            return [f"theory: ranking at ({rec.x_nm:.2f}, {rec.y_nm:.2f}) nm failed: {exc}"], None
        r = outcome.result
        return [f"theory (defect models at the strongest {ref.element} {ref.edge} signal): {r.statement}"], {
            "tool": "rank_at",
            "position_nm": [rec.x_nm, rec.y_nm],
            "labels": r.labels,
            "scores": r.scores,
        }
    return [], None


def analyze(state: GraphState, runtime: Runtime[RunContext]) -> GraphState:
    ctx = runtime.context
    h = Hypothesis.model_validate(state["hypothesis"])
    result = RoundResult.model_validate(state["result"])
    ctx.status(f"analyze {h.id}")
    values = measured_values(ctx, h)
    ys = np.array([y for _, y in values])
    outcome, stat, value, threshold = judge(h, ys)
    evidence = [
        f"{len(ys)} spectra; {stat} = {'n/a' if value is None else f'{value:.3g}'} against {threshold:g} "
        f"for a {h.prediction.pattern} signal"
    ]
    if result.stopped_by:
        evidence.append(f"the scan ended early: {result.stopped_by}")
    lines, theory = theory_evidence(ctx, h, values)
    evidence += lines
    verdict = Verdict(
        hypothesis_id=h.id,
        outcome=outcome,
        statistic=stat,
        value=value,
        threshold=threshold,
        measurements=len(ys),
        evidence=evidence,
        theory=theory,
    )
    ctx.store.append_event("verdict", **verdict.model_dump(mode="json"))
    log.info("%s: %s (%s)", h.id, outcome, evidence[0])
    return {"verdict": verdict.model_dump(mode="json")}
