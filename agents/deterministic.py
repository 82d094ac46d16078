"""The deterministic planner: hypotheses and plans without an LLM, and it says so.

It is the ``--llm none`` backend and the fallback when an LLM's answer cannot be
repaired. Round 1 tests the campaign template's signal as localized at structural
features; round 2 is a control: the same kind of signal in a band of the same width
where the template does not look, predicted uniform; later rounds re-test the primary
signal with a descriptor of half the patch size. Plans reuse the run's survey and
split the remaining budget over the remaining rounds.
"""

from __future__ import annotations

from autoscope.agents.run_spec import RunSpec
from autoscope.instruments.records import Capabilities
from autoscope.tools.plan import (
    ActiveScanStep,
    Hypothesis,
    InterventionRule,
    Plan,
    Prediction,
    SeedStep,
    StopCondition,
    SurveyStep,
)

AUTHOR = "deterministic planner (no LLM)"


def _control_band(signal, lo_w: float, hi_w: float):
    """The signal moved to a band of the same width that it does not cover, inside the window."""
    s = signal.model_dump()
    lo, hi = s.get("lo_eV"), s.get("hi_eV")
    if lo is None or hi is None:
        return None
    width = hi - lo
    floor = max(lo_w, float(s.get("pre_hi_eV") or lo_w))
    start = hi + width if hi + 2 * width <= hi_w else floor
    if start + width > hi_w or (start < hi and start + width > lo):
        return None
    return type(signal).model_validate({**s, "lo_eV": start, "hi_eV": start + width})


def hypothesis(spec: RunSpec, round_no: int, feedback: str | None = None) -> Hypothesis:
    """The ``round_no``-th (1-based) hypothesis of the deterministic planner."""
    tpl = spec.template
    sig, patch = tpl.scalarizer, tpl.patch
    energy = sig.kind in ("peak_position", "edge_onset")
    note = f" (after: {feedback})" if feedback else ""
    control = _control_band(sig, tpl.energy_min_eV, tpl.energy_max_eV) if round_no == 2 else None
    if control is not None:
        return Hypothesis(
            id=f"H{round_no}",
            statement=f"Control: {control.describe()} shows no structure-related hot spots{note}.",
            signal=control,
            patch=patch,
            expected="the signal varies little across the field",
            refuted_if="a few positions carry several times the median signal",
            prediction=Prediction(pattern="uniform", contrast=3.0, shift_eV=0.5),
            author=AUTHOR,
        )
    if round_no >= 2:
        patch = patch.model_copy(update={"window_px": max(4, patch.window_px // 2)})
    return Hypothesis(
        id=f"H{round_no}",
        statement=(
            f"{sig.describe()} is localized at particular structural features, which a "
            f"{patch.window_px}-pixel patch descriptor predicts{note}."
        ),
        signal=sig,
        patch=patch,
        expected=(
            "the signal's spread across positions exceeds its noise by far"
            if energy
            else "a few positions carry several times the median signal"
        ),
        refuted_if="the signal is as uniform as the noise allows",
        prediction=Prediction(pattern="localized", contrast=3.0, shift_eV=0.5),
        author=AUTHOR,
    )


def plan(
    spec: RunSpec,
    h: Hypothesis,
    survey: SurveyStep,
    caps: Capabilities,
    *,
    budget_left: int,
    rounds_left: int,
    feedback: str | None = None,
) -> Plan:
    """A plan for ``h``: the run's survey, seeds, the template's active scan, monitors, a stop rule."""
    tpl = spec.template
    budget = max(1, budget_left // max(rounds_left, 1))
    seeds = max(1, min(tpl.seed_points, budget // 4))
    drift_every = tpl.drift_check_every
    steps = [
        survey,
        SeedStep(points=seeds),
        ActiveScanStep(
            model=tpl.method,
            acquisition=tpl.acquisition,
            budget=budget,
            stride_px=tpl.stride_px,
            spectrum_dwell_s=tpl.spectrum_dwell_s,
            energy_min_eV=max(tpl.energy_min_eV, caps.energy_min_eV),
            energy_max_eV=min(tpl.energy_max_eV, caps.energy_max_eV),
            y_transform=tpl.y_transform if h.signal.kind == tpl.scalarizer.kind else "none",
        ),
        InterventionRule(monitor="drift", action="ask", check_every=drift_every),
        InterventionRule(monitor="ood", action="ask"),
        InterventionRule(monitor="stuck", action="stop"),
        StopCondition(max_measurements=budget),
    ]
    why = f"Test {h.id} with the template's {tpl.method} scan on {budget} of the {budget_left} spectra left"
    if feedback:
        why += f"; revised after: {feedback}"
    return Plan(hypothesis_id=h.id, rationale=why + ".", steps=steps, author=AUTHOR)
