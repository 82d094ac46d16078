"""Analysis: a verdict on the hypothesis with its uncertainty, and theory where the hypothesis calls for it.

The verdict is computed, never written by an LLM: the effect the prediction names is
estimated from the round's audit and site spectra (``tools/verdicts.py``), which the plan's
design placed at random within each class — not where the active learner expected signal —
and reported with its 95 % interval; the outcome is inconclusive unless the interval decides.
Theory is chosen by what the hypothesis says (``tools/theory_select.py``): edge energies and
expected shifts for an edge or a shift, the Gans law for a rod-dipole trend, defect-model
ranking at the sites a lattice hypothesis names.
"""

from __future__ import annotations

import logging
from pathlib import Path

from langgraph.runtime import Runtime

from autoscope.agents.context import RunContext
from autoscope.agents.state import GraphState
from autoscope.tools.evidence import judge_strata
from autoscope.tools.figures import evidence_figure
from autoscope.tools.grounding import population_grid
from autoscope.tools.plan import Hypothesis
from autoscope.tools.plan_engine import RoundResult
from autoscope.tools.predictions import Identity
from autoscope.tools.queries import StratumValue, per_site, strata_values, with_shot_noise
from autoscope.tools.survey import IMAGE_STEP
from autoscope.tools.theory_select import identity_wins, theory_evidence
from autoscope.tools.verdicts import Verdict

log = logging.getLogger(__name__)


def analyze(state: GraphState, runtime: Runtime[RunContext]) -> GraphState:
    ctx = runtime.context
    h = Hypothesis.model_validate(state["hypothesis"])
    result = RoundResult.model_validate(state["result"])
    ctx.status(f"analyze {h.id}")
    smap = ctx.survey_map()
    survey = ctx.store.load(IMAGE_STEP)
    shot = with_shot_noise(h, ctx.microscope.capabilities())
    strata = {c: per_site(vs) for c, vs in strata_values(ctx.store, h, noise=shot).items()}
    if isinstance(h.prediction, Identity):  # judged on the survey image: one ranking per site
        wins = identity_wins(h.prediction, smap, survey, ctx.spec.seed)
        strata = {
            h.prediction.at: [StratumValue(f"rank-{i}", w, x, y, None, i) for i, (x, y, w) in enumerate(wins)]
        }
    effect, ests, features = judge_strata(h, strata, smap, survey)
    signal = h.signal.describe()
    evidence = [
        f"claim: {h.prediction.claim(signal)}; null: {h.prediction.null(signal)}",
        f"{effect.statistic}: "
        + (
            f"{effect.estimate:.4g}, 95% interval [{effect.ci_low:.4g}, {effect.ci_high:.4g}]"
            if effect.estimate is not None
            else f"not estimable ({effect.reason})"
        ),
    ]
    if effect.readable:
        evidence.append(effect.readable)
    evidence.append(
        "unbiased spectra by class: "
        + ", ".join(
            f"{e.cls} n={e.n} mean {e.mean:.4g}" if e.mean is not None else f"{e.cls} n=0"
            for e in ests.values()
        )
        + f" (of {result.measurements} spectra in the round; the active scan's are not used for the estimate)"
    )
    if result.audit_decided_early:
        evidence.append("the discriminating audit stopped early: its 99% interval had decided")
    if result.audit_top_up:
        evidence.append(
            f"the audit took {result.audit_top_up} more spectra of the round's unspent budget while "
            "the interval was open (stopping once its 99% interval decided)"
        )
    if result.stopped_by:
        evidence.append(f"the plan ended early: {result.stopped_by}")
    lines, theory = theory_evidence(h, strata, smap, survey, features)
    evidence += lines
    verdict = Verdict(
        hypothesis_id=h.id,
        outcome=effect.outcome,
        prediction=h.prediction.kind,
        claim=h.prediction.claim(signal),
        null=h.prediction.null(signal),
        statistic=effect.statistic,
        estimate=effect.estimate,
        ci_low=effect.ci_low,
        ci_high=effect.ci_high,
        readable=effect.readable,
        measurements=sum(e.n for e in ests.values()),
        by_class=list(ests.values()),
        evidence=evidence,
        theory=theory,
    )
    if ctx.figures:
        try:
            png = evidence_figure(
                survey,
                smap,
                population_grid(survey).xy_nm,
                strata,
                verdict,
                Path(ctx.run_dir) / f"{h.id}-evidence.png",
                signal_label=signal,
                features=features or None,
                covariate=getattr(h.prediction, "covariate", ""),
                title=f"{h.id}: {h.statement[:80]}",
            )
            verdict = verdict.model_copy(update={"figure": str(png)})
        except Exception as exc:  # a figure that cannot be drawn is no reason to lose a verdict
            log.warning("%s: evidence figure failed: %s", h.id, exc)
    ctx.store.append_event("verdict", **verdict.model_dump(mode="json"))
    log.info("%s: %s (%s)", h.id, effect.outcome, evidence[1])
    return {"verdict": verdict.model_dump(mode="json")}
