"""The plan language: validation, round trips, the dry run against what execution spends,
the engine running steps in the order written, pure routing functions, the data-driven
deterministic planner, and the prompts (each renders; a missing variable fails)."""

from __future__ import annotations

import json
from pathlib import Path

import jinja2
import jsonschema
import pytest
from pydantic import ValidationError

from autoscope.agents import deterministic, graph
from autoscope.instruments.factory import open_microscope
from autoscope.instruments.safety import SafetyLimits
from autoscope.prompts import names, render
from autoscope.tests.surveys import surveyed
from autoscope.tools.dry_run import Usage, dry_run
from autoscope.tools.evidence import judge_strata
from autoscope.tools.plan import (
    Hypothesis,
    Plan,
    PlanValidationError,
    check_grounded,
    check_hypothesis,
    check_plan,
    grounded_schema,
    plan_schema,
)
from autoscope.tools.plan_engine import execute_plan
from autoscope.tools.predictions import LocalizedAt, Trend, Uniform
from autoscope.tools.queries import per_site, strata_values
from autoscope.tools.store import RunStore
from autoscope.tools.survey import IMAGE_STEP
from autoscope.tools.verdicts import LEVEL, SEQUENTIAL_LEVEL


@pytest.fixture(scope="module")
def sv():
    return surveyed("plasmonic", 0)


def a_plan(sv, budget: int = 40, round_no: int = 1, tested=()) -> tuple[Hypothesis, Plan]:
    h = deterministic.hypothesis(sv.spec, sv.smap, sv.present, sv.spectra, round_no, list(tested))
    p = deterministic.plan(
        sv.spec, h, sv.step, sv.caps, budget_left=budget, rounds_left=1, present=sv.present
    )
    return h, p


def _store_with_survey(tmp: Path, sv) -> RunStore:
    store = RunStore.create(tmp / "run")
    store.save_image(IMAGE_STEP, sv.image)
    return store


def test_plans_and_hypotheses_round_trip_through_json(sv):
    h, p = a_plan(sv)
    assert Plan.model_validate_json(p.model_dump_json()) == p
    assert Hypothesis.model_validate_json(h.model_dump_json()) == h
    schema = plan_schema()
    assert "$defs" in schema and "steps" in schema["properties"]
    assert {"audit", "sites"} <= {
        d.get("properties", {}).get("kind", {}).get("const") for d in schema["$defs"].values()
    }


def _seed_after_scan(steps: list[dict]) -> list[dict]:
    seed = next(s for s in steps if s["kind"] == "seed")
    rest = [s for s in steps if s["kind"] != "seed"]
    i = next(k for k, s in enumerate(rest) if s["kind"] == "active_scan")
    return rest[: i + 1] + [seed] + rest[i + 1 :]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda s: s[1:], "starts with exactly one survey"),
        (lambda s: s + [s[0]], "starts with exactly one survey"),
        (
            lambda s: [s[0]] + [x for x in s[1:] if x["kind"] in ("intervention", "stop_when")],
            "measures something",
        ),
        (_seed_after_scan, "seed step comes before"),
        (
            lambda s: s + [{"kind": "intervention", "monitor": "drift", "action": "stop"}],
            "one intervention rule",
        ),
        (lambda s: s + [{"kind": "teleport", "x_nm": 0}], "kind"),
        (lambda s: s + [x for x in s if x["kind"] == "audit"], "one audit step"),
    ],
)
def test_malformed_plans_are_refused_with_the_reason(sv, mutate, message):
    _, p = a_plan(sv)
    steps = mutate(p.model_dump(mode="json")["steps"])
    with pytest.raises(ValidationError, match=message):
        Plan.model_validate({"hypothesis_id": "H1", "rationale": "tests the shape rules", "steps": steps})


def test_checks_refuse_what_the_instrument_or_the_survey_cannot_do(sv):
    h, p = a_plan(sv)
    caps = sv.caps
    off = h.model_copy(update={"signal": h.signal.model_copy(update={"lo_eV": 500.0, "hi_eV": 510.0})})
    with pytest.raises(PlanValidationError, match="outside the spectrometer"):
        check_hypothesis(off, caps)
    narrow = p.model_dump(mode="json")
    audit = next(s for s in narrow["steps"] if s["kind"] == "audit")
    audit.update(energy_min_eV=1.3, energy_max_eV=4.0)
    with pytest.raises(PlanValidationError, match="does not cover the hypothesis signal"):
        check_plan(Plan.model_validate(narrow), h, caps)
    with pytest.raises(PlanValidationError, match="for H1, not H2"):
        check_plan(p, h.model_copy(update={"id": "H2"}), caps)
    blind = p.model_dump(mode="json")
    blind["steps"] = [s for s in blind["steps"] if s["kind"] != "audit"]
    with pytest.raises(PlanValidationError, match="no audit or sites step measures"):
        check_plan(Plan.model_validate(blind), h, caps)
    lattice = h.model_copy(update={"prediction": LocalizedAt(at="dim_site_dimmer", versus="sublattice_dim")})
    with pytest.raises(PlanValidationError, match="this survey shows no dim_site_dimmer"):
        check_grounded(lattice, sv.smap, sv.grid)
    check_grounded(h, sv.smap, sv.grid)

    # a trend's covariate must have values over its class: a particle property over particles,
    # a distance to the interface where there is one (this survey has particles, no interface)
    def trend(over: str, covariate: str) -> Hypothesis:
        return h.model_copy(update={"prediction": Trend(over=over, covariate=covariate, sign="increasing")})

    check_grounded(trend("rod_tip", "aspect_ratio"), sv.smap, sv.grid)
    with pytest.raises(PlanValidationError, match="aspect_ratio is a particle property and substrate is not"):
        check_grounded(trend("substrate", "aspect_ratio"), sv.smap, sv.grid)
    with pytest.raises(PlanValidationError, match="no interface.*here: aspect_ratio, size_nm"):
        check_grounded(trend("rod", "distance_to_interface_nm"), sv.smap, sv.grid)


def test_a_prediction_must_fit_its_signal():
    from autoscope.tools.ml.descriptors import PatchSpec
    from autoscope.tools.ml.scalarizers import PeakPosition

    # the error names the prediction kinds that do fit the signal, so a model can repair it
    with pytest.raises(ValidationError, match="needs a signal of kind.*with a shift or trend or uniform"):
        Hypothesis(
            statement="peak energies localized at rod tips",
            signal=PeakPosition(lo_eV=1.0, hi_eV=2.0),
            patch=PatchSpec(),
            expected="a peak at the tips",
            refuted_if="no peak at the tips",
            prediction=LocalizedAt(at="rod_tip"),
        )


SIGNALS = {
    "band_intensity": {"kind": "band_intensity", "lo_eV": 1.1, "hi_eV": 1.7},
    "peak_position": {"kind": "peak_position", "lo_eV": 1.0, "hi_eV": 2.0},
    "peak_ratio": {"kind": "peak_ratio", "a_lo_eV": 1.0, "a_hi_eV": 1.5, "b_lo_eV": 2.0, "b_hi_eV": 2.5},
    "edge_onset": {"kind": "edge_onset", "lo_eV": 450, "hi_eV": 470, "pre_lo_eV": 435, "pre_hi_eV": 450},
}
PREDICTIONS = {
    "localized_at": {"kind": "localized_at", "at": "rod_tip"},
    "contrast": {"kind": "contrast", "a": "rod_tip", "b": "substrate"},
    "shift": {"kind": "shift", "a": "bright_side", "b": "dim_side"},
    "trend": {"kind": "trend", "over": "rod_tip", "covariate": "aspect_ratio", "sign": "increasing"},
    "uniform": {"kind": "uniform", "over": ["rod_tip", "substrate"]},
    "identity": {"kind": "identity", "at": "bright_site_brighter", "species": "W", "host": "Mo"},
}


def test_the_hypothesis_schema_admits_exactly_the_signal_prediction_pairs_the_validator_accepts():
    """A grammar built from the schema cannot emit a pair the validator refuses (an edge onset
    'localized at' a class), and loses none it accepts."""
    from autoscope.agents.llm.local import _grammar_compiles

    schema = Hypothesis.model_json_schema()
    in_schema = {
        (s, p)
        for v in schema["anyOf"]
        for s in v["properties"]["signal"]["discriminator"]["mapping"]
        for p in v["properties"]["prediction"]["discriminator"]["mapping"]
    }
    accepted = set()
    for s, sig in SIGNALS.items():
        for p, pred in PREDICTIONS.items():
            try:
                Hypothesis.model_validate(
                    {"statement": "a pair of kinds", "signal": sig, "patch": {}, "expected": "it holds",
                     "refuted_if": "it does not", "prediction": pred}
                )  # fmt: skip
                accepted.add((s, p))
            except ValidationError as exc:
                assert "needs a signal of kind" in str(exc), exc
    assert in_schema == accepted
    assert ("edge_onset", "localized_at") not in in_schema and ("edge_onset", "shift") in in_schema
    # every variant is a whole object (llama.cpp reads only the union), and the grammar compiles
    for v in schema["anyOf"]:
        assert v["required"] == ["statement", "signal", "patch", "expected", "refuted_if", "prediction"]
        assert v["additionalProperties"] is False
    assert _grammar_compiles(schema)
    for s, p in [("edge_onset", "localized_at"), ("band_intensity", "shift")]:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(
                {"statement": "a pair of kinds", "signal": SIGNALS[s], "patch": {}, "expected": "it holds",
                 "refuted_if": "it does not", "prediction": PREDICTIONS[p]},
                schema,
            )  # fmt: skip


def test_the_grounded_schema_names_only_what_the_survey_shows(sv):
    """On the plasmonic survey (particles, no lattice, no interface) a model's grammar can name
    particle classes and the substrate, particle covariates, and nothing else; every answer the
    schema admits on class names passes check_grounded."""
    from autoscope.agents.llm.local import _grammar_compiles
    from autoscope.tools.grounding.classes import CLASS_GROUPS, FEATURE_CLASSES

    g = grounded_schema(sv.smap, sv.present)
    at = g["$defs"]["LocalizedAt"]["properties"]["at"]["anyOf"]
    named = {c for alt in at for c in alt["enum"]}
    assert {"rod_tip", "cube_corner", "substrate", "rod", "particle"} <= named
    assert not named & {"sublattice_dim", "bright_side", "interface", "lattice_site", "side"}
    assert g["$defs"]["Trend"]["properties"]["covariate"]["enum"] == [
        "aspect_ratio",
        "size_nm",
        "length_nm",
        "width_nm",
    ]
    assert _grammar_compiles(g)
    h, _ = a_plan(sv)
    for c in (*FEATURE_CLASSES, *CLASS_GROUPS):
        d = json.loads(h.model_dump_json())
        d["prediction"] = {"kind": "localized_at", "at": c, "versus": "substrate"}
        try:
            jsonschema.validate(d, g)
        except jsonschema.ValidationError:
            assert c not in named
            with pytest.raises(PlanValidationError, match="this survey shows no"):
                check_grounded(Hypothesis.model_validate(d), sv.smap, sv.grid)
        else:
            assert c in named
            check_grounded(Hypothesis.model_validate(d), sv.smap, sv.grid)
    d["prediction"] = {
        "kind": "trend",
        "over": "rod_tip",
        "covariate": "distance_to_interface_nm",
        "sign": "increasing",
    }
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(d, g)


def test_dry_run_walks_the_steps_and_predicts_what_execution_spends(sv, tmp_path: Path):
    h, p = a_plan(sv, budget=40)
    limits = SafetyLimits()
    scope = open_microscope(limits, scenario="plasmonic")
    clock = scope.now_s()
    d = dry_run(p, sv.caps, limits, Usage(survey=sv.step), run_budget_left=40)
    assert scope.now_s() == clock and scope.acquisitions == 0  # nothing reached the instrument
    assert d.ok and d.spectra == 40 and d.images == 0 and d.survey_reused
    assert [c.kind for c in d.steps if c.spectra] == [
        s.kind for s in p.steps if s.kind in ("audit", "active_scan")
    ]
    with _store_with_survey(tmp_path, sv) as store:
        result = execute_plan(scope, store, p, h, seed=0, run_survey_matches=True, smap=sv.smap)
    assert result.measurements == 40
    assert result.by_step == {c.kind: c.spectra for c in d.steps if c.spectra}
    assert result.dose_e == pytest.approx(d.dose_e, rel=0.02)


def test_the_engine_runs_steps_in_the_order_written(sv, tmp_path: Path):
    h, p = a_plan(sv, budget=30)
    steps = p.model_dump(mode="json")["steps"]
    kinds = [s["kind"] for s in steps]
    assert kinds.index("audit") < kinds.index("active_scan")
    # the same steps with the scan (and its seeds) first
    scan = [s for s in steps if s["kind"] in ("seed", "active_scan")]
    reordered = [steps[0], *scan, *[s for s in steps[1:] if s["kind"] not in ("seed", "active_scan")]]
    orders = []
    for i, st in enumerate((steps, reordered)):
        plan = Plan.model_validate({**p.model_dump(mode="json"), "steps": st})
        scope = open_microscope(SafetyLimits(), scenario="plasmonic")
        with _store_with_survey(tmp_path / str(i), sv) as store:
            execute_plan(scope, store, plan, h, seed=0, run_survey_matches=True, smap=sv.smap)
            ids = [e["step_id"] for e in store.events("acquisition") if e["record"] == "spectrum"]
        orders.append([sid.split("-")[1] for sid in ids])
    assert orders[0][0] == "audit" and orders[0][-1] == "al"
    assert orders[1][0] == "al" and orders[1][-1] == "audit"
    assert sorted(orders[0]) == sorted(orders[1])


def test_audit_draws_within_each_class_and_a_discriminating_audit_decides_sooner(sv, tmp_path: Path):
    h, p = a_plan(sv, budget=60)
    audit = p.audit
    steps = [sv.step.model_dump(), {**audit.model_dump(), "per_class": 12}]
    results = {}
    for alloc in ("equal", "discriminating"):
        st = [steps[0], {**steps[1], "allocation": alloc}]
        plan = Plan.model_validate(
            {"hypothesis_id": h.id, "rationale": "audit only, for the test", "steps": st}
        )
        scope = open_microscope(SafetyLimits(), scenario="plasmonic")
        with _store_with_survey(tmp_path / alloc, sv) as store:
            results[alloc] = execute_plan(
                scope, store, plan, h, seed=0, run_survey_matches=True, smap=sv.smap
            )
            events = [e for e in store.events("acquisition") if e.get("stratum")]
        # every audit spectrum lies in the class (stratum) it was drawn for, by the survey map
        assert all(sv.smap.area_class([[e["x_nm"], e["y_nm"]]])[0] == e["stratum"] for e in events)
    assert results["equal"].measurements == 12 * len(audit.classes)
    assert results["discriminating"].audit_decided_early
    assert results["discriminating"].measurements < results["equal"].measurements


def test_dry_run_names_every_limit_a_plan_would_break(sv):
    h, p = a_plan(sv, budget=10)
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
    d = dry_run(Plan.model_validate(hot), sv.caps, limits, Usage(survey=sv.step), run_budget_left=5)
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
    assert graph.after_hypothesize({**base, "hypothesis": {"id": "H1"}}) == "hypothesis_gate"
    assert graph.after_hypothesize({**base, "hypothesis": None}) == "report"
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


def test_deterministic_hypotheses_come_from_the_map_and_never_repeat(sv):
    h1 = deterministic.hypothesis(sv.spec, sv.smap, sv.present, sv.spectra, 1)
    # the survey spectra put the goal's band highest on rod tips, so H1 tests it there
    assert isinstance(h1.prediction, LocalizedAt) and h1.prediction.at == "rod_tip"
    assert h1.prediction.versus == "substrate" and "no LLM" in h1.author
    h2 = deterministic.hypothesis(sv.spec, sv.smap, sv.present, sv.spectra, 2, [h1])
    assert isinstance(h2.prediction, Uniform) and "substrate" in h2.prediction.over  # the falsifiable control
    tested, seen = [], set()
    for n in range(1, 30):
        h = deterministic.hypothesis(sv.spec, sv.smap, sv.present, sv.spectra, n, tested)
        if h is None:
            break
        assert deterministic.key(h) not in seen
        seen.add(deterministic.key(h))
        tested.append(h)
    assert h is None and len(tested) >= 3  # the map's hypotheses run out, none twice


def test_every_prompt_renders_and_a_missing_variable_fails(sv):
    from autoscope.tools.grounding.summary import map_summary

    h, p = a_plan(sv)
    survey = {"fov_nm": 1000.0, "pixels": 256, "pixel_size_nm": 3.9, "summary": map_summary(sv.smap, sv.grid)}
    assert "rod_tip" in survey["summary"] and "Survey spectra" in survey["summary"]
    variables = {
        "system": {"role": "planner"},
        "hypothesis": {
            "goal": "g",
            "notes": "n",
            "survey": survey,
            "energy_min_eV": -1,
            "energy_max_eV": 4,
            "template_signal": "the band",
            "previous": [{"id": "H1", "statement": "s", "verdict": "supported", "readable": "r"}],
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
            "question_classes": ["rod_tip", "substrate"],
            "example": p.model_dump_json(),
        },
        "repair": {"schema_name": "Plan", "errors": "e", "fields": ["steps"], "schema": "", "example": "{}"},
        "question": {"question": "q", "tools": {"best": "the best"}},
    }
    assert set(names()) == set(variables)
    for name, v in variables.items():
        text = render(name, **v)
        assert text and "{{" not in text
        if len(v) > 1:
            with pytest.raises(jinja2.UndefinedError):
                render(name, **dict(list(v.items())[1:]))
    # a model that must answer first on its own sees no example, and is told so
    own = render("hypothesis", **{**variables["hypothesis"], "example": None})
    assert '"prediction"' not in own and "JSON shape is enforced" in own
    assert '"prediction"' in render("hypothesis", **variables["hypothesis"])
    # the goal's question names the classes its answer needs, only when there are any
    assert "measure these classes too (audit or sites): rod_tip, substrate" in render(
        "plan", **variables["plan"]
    )
    assert "measure these classes too" not in render("plan", **{**variables["plan"], "question_classes": []})


@pytest.mark.parametrize("scenario", ["plasmonic", "tmd-defects", "oxide-interface"])
def test_deterministic_proposals_pass_the_checks_asked_of_a_model(scenario):
    """The example every prompt shows must itself be valid, on every scenario and round, and lie
    inside the survey's grounded schema (what a model's grammar is built from)."""
    sv = surveyed(scenario, 0)
    grounded = grounded_schema(sv.smap, sv.present)
    tested = []
    for n in (1, 2, 3):
        h = deterministic.hypothesis(sv.spec, sv.smap, sv.present, sv.spectra, n, tested)
        assert h is not None, f"{scenario}: no hypothesis for round {n}"
        check_hypothesis(h, sv.caps)
        check_grounded(h, sv.smap, sv.grid)
        jsonschema.validate(json.loads(h.model_dump_json()), grounded)
        p = deterministic.plan(
            sv.spec, h, sv.step, sv.caps, budget_left=60, rounds_left=2, present=sv.present
        )
        check_plan(Plan.model_validate_json(p.model_dump_json()), h, sv.caps)
        tested.append(h)


def test_an_inconclusive_audit_tops_up_with_the_unspent_budget_and_replays_on_resume(sv, tmp_path: Path):
    h, p = a_plan(sv, budget=60)
    audit = {**p.audit.model_dump(), "classes": [h.prediction.at, "substrate"], "per_class": 3}
    cap = 40

    def run(top_up: bool, where: Path):
        steps = [
            sv.step.model_dump(),
            {**audit, "top_up": top_up},
            {"kind": "stop_when", "max_measurements": cap},
        ]
        plan = Plan.model_validate(
            {"hypothesis_id": h.id, "rationale": "audit only, for the test", "steps": steps}
        )
        assert plan.spectra() == (cap if top_up else 6)  # the dry run's bound includes the top-up
        scope = open_microscope(SafetyLimits(), scenario="plasmonic")
        store = RunStore.open(where) if where.exists() else _store_with_survey(where.parent, sv)
        with store:
            result = execute_plan(scope, store, plan, h, seed=0, run_survey_matches=True, smap=sv.smap)
            strata = {c: per_site(vs) for c, vs in strata_values(store, h, noise=True).items()}
            ids = [e["step_id"] for e in store.events("acquisition") if e["record"] == "spectrum"]
        judged = {
            lv: judge_strata(h, strata, sv.smap, sv.image, level=lv)[0].outcome
            for lv in (LEVEL, SEQUENTIAL_LEVEL)
        }
        return result, judged, ids

    planned, judged, _ = run(False, tmp_path / "fixed" / "run")
    assert planned.measurements == 6 and planned.audit_top_up == 0
    assert judged[LEVEL] == "inconclusive"  # three spectra per class cannot decide this effect
    topped, judged, ids = run(True, tmp_path / "top" / "run")
    assert 0 < topped.audit_top_up <= cap - 6 and topped.measurements == 6 + topped.audit_top_up
    # it stopped because the stricter interval decided, or because the unspent budget was spent
    assert judged[SEQUENTIAL_LEVEL] != "inconclusive" or topped.measurements == cap
    assert judged[LEVEL] == "supported"  # the twin's rod tips do host the dipole band
    # the same plan again into the same store (a resume) replays the same spectra and acquires none
    again, _, ids_again = run(True, tmp_path / "top" / "run")
    assert again.audit_top_up == topped.audit_top_up and ids_again == ids
