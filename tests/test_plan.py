"""The plan language: validation, round trips, the dry run against what execution spends,
pure routing functions, and the prompts (each renders; a missing variable fails)."""

from __future__ import annotations

from pathlib import Path

import jinja2
import pytest
from pydantic import ValidationError

from autoscope.agents import deterministic, graph
from autoscope.agents.run_spec import load_run_spec
from autoscope.instruments.factory import open_microscope
from autoscope.instruments.safety import SafetyLimits
from autoscope.prompts import names, render
from autoscope.tools.plan import (
    Hypothesis,
    Plan,
    PlanValidationError,
    SurveyStep,
    Usage,
    check_hypothesis,
    check_plan,
    dry_run,
    plan_schema,
)
from autoscope.tools.plan_engine import execute_plan
from autoscope.tools.store import RunStore
from autoscope.tools.survey import run_survey


@pytest.fixture(scope="module")
def spec():
    return load_run_spec(None, "plasmonic")


def survey_step(spec) -> SurveyStep:
    sv = spec.template.survey
    return SurveyStep(fov_nm=sv.fov_nm, pixels=sv.pixels, dwell_s=sv.dwell_s, current_pA=sv.current_pA)


def a_plan(spec, budget: int = 12) -> tuple[Hypothesis, Plan]:
    scope = open_microscope(SafetyLimits(), scenario="plasmonic")
    h = deterministic.hypothesis(spec, 1)
    p = deterministic.plan(
        spec, h, survey_step(spec), scope.capabilities(), budget_left=budget, rounds_left=1
    )
    return h, p


def test_plans_and_hypotheses_round_trip_through_json(spec):
    h, p = a_plan(spec)
    assert Plan.model_validate_json(p.model_dump_json()) == p
    assert Hypothesis.model_validate_json(h.model_dump_json()) == h
    assert "$defs" in plan_schema() and "steps" in plan_schema()["properties"]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda s: s[1:], "starts with exactly one survey"),
        (lambda s: s + [s[0]], "starts with exactly one survey"),
        (
            lambda s: [s[0]] + [x for x in s[1:] if x["kind"] in ("intervention", "stop_when")],
            "measures something",
        ),
        (lambda s: [s[0], s[2], s[1]] + s[3:], "seed step comes before"),
        (
            lambda s: s + [{"kind": "intervention", "monitor": "drift", "action": "stop"}],
            "one intervention rule",
        ),
        (lambda s: s + [{"kind": "teleport", "x_nm": 0}], "kind"),
    ],
)
def test_malformed_plans_are_refused_with_the_reason(spec, mutate, message):
    _, p = a_plan(spec)
    steps = mutate(p.model_dump(mode="json")["steps"])
    with pytest.raises(ValidationError, match=message):
        Plan.model_validate({"hypothesis_id": "H1", "rationale": "tests the shape rules", "steps": steps})


def test_checks_refuse_what_the_instrument_cannot_do(spec):
    h, p = a_plan(spec)
    caps = open_microscope(SafetyLimits(), scenario="plasmonic").capabilities()
    off = h.model_copy(update={"signal": h.signal.model_copy(update={"lo_eV": 500.0, "hi_eV": 510.0})})
    with pytest.raises(PlanValidationError, match="outside the spectrometer"):
        check_hypothesis(off, caps)
    narrow = p.model_dump(mode="json")
    narrow["steps"][2].update(energy_min_eV=1.3, energy_max_eV=4.0)
    with pytest.raises(PlanValidationError, match="does not cover the hypothesis signal"):
        check_plan(Plan.model_validate(narrow), h, caps)
    with pytest.raises(PlanValidationError, match="for H1, not H2"):
        check_plan(p, h.model_copy(update={"id": "H2"}), caps)


def test_dry_run_predicts_the_dose_execution_spends_and_touches_nothing(spec, tmp_path: Path):
    h, p = a_plan(spec, budget=10)
    limits = SafetyLimits()
    scope = open_microscope(limits, scenario="plasmonic")
    caps = scope.capabilities()
    clock = scope.now_s()
    d = dry_run(p, caps, limits, Usage(survey=survey_step(spec)), run_budget_left=10)
    assert scope.now_s() == clock and scope.acquisitions == 0  # nothing reached the instrument
    assert d.ok and d.spectra == 10 and d.images == 0 and d.survey_reused
    with RunStore.create(tmp_path / "run") as store:
        run_survey(scope, store, spec.template.survey.model_copy(update={"spectra": 0}))
        result = execute_plan(scope, store, p, h, seed=0, run_survey_matches=True)
    assert result.measurements == 10
    assert result.dose_e == pytest.approx(d.dose_e, rel=0.02)


def test_dry_run_names_every_limit_a_plan_would_break(spec):
    h, p = a_plan(spec, budget=10)
    caps = open_microscope(SafetyLimits(), scenario="plasmonic").capabilities()
    hot = p.model_dump(mode="json")
    hot["steps"][0]["current_pA"] = 10_000.0
    hot["steps"].append(
        {
            "kind": "spectrum_at",
            "x_nm": 9e4,
            "y_nm": 0.0,
            "dwell_s": 0.02,
            "energy_min_eV": -1,
            "energy_max_eV": 4,
        }
    )
    limits = SafetyLimits(max_total_dose_e=1e9, max_acquisitions=5)
    d = dry_run(Plan.model_validate(hot), caps, limits, Usage(survey=survey_step(spec)), run_budget_left=5)
    assert not d.ok
    assert {c.limit for c in d.violations} >= {
        "max_current_pA",
        "max_total_dose_e",
        "max_acquisitions",
        "run_budget",
        "stage_box",
    }
    assert not d.survey_reused and d.images == 1  # a different survey costs a new image
    assert "BEYOND LIMITS" in d.summary()


def test_routing_functions_are_pure_and_follow_the_gate_outcome():
    base = {"round": 1, "max_rounds": 2, "spent_spectra": 10, "budget": 20}
    assert graph.after_hypothesis_gate({**base, "last_gate": "approve"}) == "plan"
    assert graph.after_hypothesis_gate({**base, "last_gate": "edit"}) == "plan"
    assert graph.after_hypothesis_gate({**base, "last_gate": "reject"}) == "hypothesize"
    assert graph.after_hypothesis_gate({**base, "round": 2, "last_gate": "reject"}) == "report"
    assert graph.after_plan_gate({**base, "last_gate": "edit"}) == "dry_run"
    assert graph.after_plan_gate({**base, "last_gate": "reject", "plan_attempts": 1}) == "plan"
    assert graph.after_plan_gate({**base, "last_gate": "reject", "plan_attempts": 3}) == "hypothesize"
    assert graph.after_plan_gate({**base, "last_gate": "redirect"}) == "hypothesize"
    plan = {"steps": [{"kind": "intervention", "monitor": "drift", "action": "ask"}]}
    assert graph.after_execute({"plan": plan, "result": {"stopped_by": "drift"}}) == "intervention_gate"
    assert graph.after_execute({"plan": plan, "result": {"stopped_by": "stuck"}}) == "analyze"
    assert graph.after_execute({"plan": plan, "result": {"stopped_by": "safety_stop: max_current_pA"}}) == (
        "intervention_gate"
    )
    assert graph.after_intervention_gate({"last_gate": "approve"}) == "execute"
    assert graph.after_analysis_gate({**base, "last_gate": "approve"}) == "hypothesize"
    assert graph.after_analysis_gate({**base, "spent_spectra": 20, "last_gate": "approve"}) == "report"
    assert graph.after_analysis_gate({**base, "last_gate": "reject"}) == "report"


def test_deterministic_control_hypothesis_moves_the_band_inside_the_window(spec):
    h2 = deterministic.hypothesis(spec, 2)
    lo, hi = h2.signal.lo_eV, h2.signal.hi_eV
    assert h2.prediction.pattern == "uniform"
    assert hi - lo == pytest.approx(spec.template.scalarizer.hi_eV - spec.template.scalarizer.lo_eV)
    assert spec.template.energy_min_eV <= lo and hi <= spec.template.energy_max_eV
    assert lo >= spec.template.scalarizer.hi_eV  # does not overlap the primary band
    assert "no LLM" in h2.author


def test_every_prompt_renders_and_a_missing_variable_fails(spec):
    h, p = a_plan(spec)
    survey = {
        "fov_nm": 1000.0,
        "pixels": 256,
        "pixel_size_nm": 3.9,
        "intensity_mean": 0.1,
        "intensity_std": 0.05,
        "clusters": [{"cluster": 0, "fraction": 1.0, "mean_intensity": 0.1}],
    }
    variables = {
        "system": {"role": "planner"},
        "hypothesis": {
            "goal": "g",
            "notes": "n",
            "survey": survey,
            "energy_min_eV": -1,
            "energy_max_eV": 4,
            "previous": [{"id": "H1", "statement": "s", "verdict": "supported"}],
            "feedback": "f",
            "hypothesis_id": "H2",
            "example": h.model_dump_json(),
        },
        "plan": {
            "hypothesis": h.model_dump_json(),
            "hypothesis_id": "H1",
            "budget_left": 10,
            "rounds_left": 1,
            "energy_min_eV": -1,
            "energy_max_eV": 4,
            "survey_step": "{}",
            "feedback": None,
            "example": p.model_dump_json(),
        },
        "repair": {"schema_name": "Plan", "errors": "e", "fields": ["steps"], "schema": ""},
        "question": {"question": "q", "tools": {"best": "the best"}},
    }
    assert set(names()) == set(variables)
    for name, v in variables.items():
        text = render(name, **v)
        assert text and "{{" not in text
        if len(v) > 1:
            with pytest.raises(jinja2.UndefinedError):
                render(name, **dict(list(v.items())[1:]))


@pytest.mark.parametrize("scenario", ["plasmonic", "tmd-defects", "oxide-interface"])
def test_deterministic_proposals_pass_the_checks_asked_of_a_model(scenario):
    """The example every prompt shows must itself be valid, on every scenario and round."""
    spec = load_run_spec(None, scenario)
    caps = open_microscope(SafetyLimits(), scenario=scenario).capabilities()
    for n in (1, 2, 3):
        h = deterministic.hypothesis(spec, n)
        check_hypothesis(h, caps)
        p = deterministic.plan(spec, h, survey_step(spec), caps, budget_left=30, rounds_left=2)
        check_plan(Plan.model_validate_json(p.model_dump_json()), h, caps)
