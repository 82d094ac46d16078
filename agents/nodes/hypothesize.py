"""Ideation: the hypothesis agent proposes the next testable hypothesis, grounded in the survey map.

The prompt carries the survey map's summary (features, classes with their populations,
peaks and edges of the survey spectra), and a proposal must name classes the survey shows.
The deterministic planner answers from the same map; when it has nothing left to test,
the run goes to its report.
"""

from __future__ import annotations

from langgraph.runtime import Runtime

from autoscope.agents import deterministic
from autoscope.agents.context import RunContext
from autoscope.agents.proposing import propose
from autoscope.agents.state import GraphState
from autoscope.agents.untrusted import screen
from autoscope.tools.grounding import population_grid
from autoscope.tools.plan import (
    Hypothesis,
    PlanValidationError,
    check_grounded,
    check_hypothesis,
    grounded_schema,
)
from autoscope.tools.survey import IMAGE_STEP


def survey_context(ctx: RunContext, state: GraphState):
    """(map, classes present, candidate grid, survey spectra) for proposals and checks."""
    smap = ctx.survey_map()
    grid = population_grid(ctx.store.load(IMAGE_STEP)).xy_nm
    spectra = [ctx.store.load(sid) for sid in state["survey"]["spectra"]]
    return smap, state["survey"].get("classes") or smap.classes_present(grid), grid, spectra


def hypothesize(state: GraphState, runtime: Runtime[RunContext]) -> GraphState:
    ctx = runtime.context
    n = state.get("round", 0) + 1
    hid = f"H{n}"
    feedback = state.get("feedback")
    caps = ctx.microscope.capabilities()
    tpl = ctx.spec.template
    ctx.status(f"hypothesis {hid}")
    smap, present, grid, spectra = survey_context(ctx, state)
    tested = [Hypothesis.model_validate(r["hypothesis"]) for r in state.get("rounds", [])]
    proposal = deterministic.hypothesis(ctx.spec, smap, present, spectra, n, tested, feedback)
    if proposal is None:
        reason = "the survey map supports no hypothesis that the run has not tested"
        ctx.store.append_event("hypotheses_exhausted", round=n, reason=reason)
        return {"hypothesis": None, "round": n - 1, "max_rounds": n - 1, "stop_reason": reason}

    def fallback() -> Hypothesis:
        return proposal

    def check(h: Hypothesis) -> None:
        check_hypothesis(h, caps)
        check_grounded(h, smap, grid)
        same = next(
            (
                t
                for t in tested
                if h.statement.strip().lower() == t.statement.strip().lower()
                or deterministic.key(h) == deterministic.key(t)
            ),
            None,
        )
        if same is not None:
            raise PlanValidationError(
                f"statement: this hypothesis was tested already as {same.id} ({same.signal.kind} signal, "
                f"{same.prediction.kind} over {', '.join(same.prediction.classes())}); propose a different "
                "one: another prediction kind, other classes or another signal"
            )

    previous = [
        {
            "id": r["hypothesis"]["id"],
            "statement": r["hypothesis"]["statement"],
            "verdict": r["verdict"]["outcome"],
            "readable": r["verdict"].get("readable", ""),
        }
        for r in state.get("rounds", [])
    ]
    untrusted = {"goal": state.get("goal") or ctx.spec.goal, "notes": state.get("notes") or ctx.spec.notes}
    untrusted |= {f"{r['id']} statement": r["statement"] for r in previous}
    for channel, text in untrusted.items():
        screen(ctx.store, channel, text)
    example = proposal.model_dump_json(exclude={"author"})
    own_first = bool(getattr(ctx.llm, "enforces_schema", False))
    h, fell_back = propose(
        ctx,
        role="hypothesis agent",
        prompt="hypothesis",
        variables={
            "goal": state.get("goal") or ctx.spec.goal,
            "notes": state.get("notes") or ctx.spec.notes,
            "survey": state["survey"],
            "energy_min_eV": caps.energy_min_eV,
            "energy_max_eV": caps.energy_max_eV,
            "template_signal": tpl.scalarizer.describe(),
            "previous": previous,
            "feedback": feedback,
            "hypothesis_id": hid,
            # a back end that enforces the schema gets no example (a small model copies what it is
            # shown); it sees one only if its own answer needs repair
            "example": None if own_first else example,
        },
        schema=Hypothesis,
        check=check,
        fallback=fallback,
        purpose=f"hypothesis {hid}",
        repair_example=example if own_first else None,
        # the grammar (or a server's schema) offers only the classes and covariates this survey has
        json_schema=grounded_schema(smap, present),
    )
    author = h.author if h.author == deterministic.AUTHOR else f"{ctx.llm.backend}:{ctx.llm.model}"
    h = h.model_copy(update={"id": hid, "author": author})
    ctx.store.append_event("hypothesis", **h.model_dump(mode="json"))
    if not fell_back and ctx.llm.backend != "none":  # how far the model moved from the example it was shown
        ctx.store.append_event(
            "hypothesis_novelty",
            hypothesis_id=hid,
            differs_from_example=deterministic.key(h) != deterministic.key(proposal),
            # more than a threshold or a window: another prediction kind, other classes or another signal kind
            differs_in_substance=_substance(h) != _substance(proposal),
            same_signal=h.signal == proposal.signal,
            same_prediction=h.prediction == proposal.prediction,
            classes=[c for c in h.prediction.classes() if c != "elsewhere"],
        )
    out: GraphState = {
        "round": n,
        "hypothesis": h.model_dump(mode="json"),
        "plan": None,
        "plan_attempts": 0,
        "dry_run": None,
        "result": None,
        "verdict": None,
        "acknowledged": [],
        "feedback": None,
    }
    if fell_back:
        out["fallbacks"] = [fell_back]
    return out


def _substance(h: Hypothesis) -> tuple:
    return h.prediction.kind, sorted(c for c in h.prediction.classes() if c != "elsewhere"), h.signal.kind
