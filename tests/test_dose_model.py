"""One dose model: the dry run and the interlocks agree on the peak areal dose, earlier
rounds count, and every electron the sample receives is charged (a parked, unblanked
probe and a stage move with the beam on included)."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoscope.instruments.errors import SafetyLimitExceeded
from autoscope.instruments.factory import open_microscope
from autoscope.instruments.records import electrons
from autoscope.instruments.safety import DOSE_EVENTS, SafeMicroscope, SafetyLimits
from autoscope.instruments.sim.scenarios import make_microscope
from autoscope.tools.dry_run import Usage, dry_run
from autoscope.tools.plan import Plan
from autoscope.tools.plan_engine import execute_plan
from autoscope.tools.store import RunStore
from autoscope.tools.survey import IMAGE_STEP

from .surveys import surveyed


@pytest.fixture(scope="module")
def tmd():
    return surveyed("tmd-defects", 0)  # a 0.09 nm probe under 1 nm dose cells: the models differed 120×


def _points_plan(sv, points: list[tuple[float, float]], dwell_s: float) -> Plan:
    lo, hi = sv.spectra[0].energy_offset_eV, sv.spectra[0].energy_offset_eV + 20.0
    steps = [sv.step.model_dump()] + [
        {
            "kind": "spectrum_at",
            "x_nm": x,
            "y_nm": y,
            "dwell_s": dwell_s,
            "energy_min_eV": lo,
            "energy_max_eV": hi,
        }
        for x, y in points
    ]
    return Plan.model_validate(
        {"hypothesis_id": "H1", "rationale": "spectra at known points, for the dose model", "steps": steps}
    )


def _executed(tmp: Path, sv, plan: Plan, limits: SafetyLimits, scope: SafeMicroscope, h_id: str = "H1"):
    from autoscope.tools.plan import Hypothesis

    from .test_plan import a_plan

    h, _ = a_plan(sv)
    h = Hypothesis.model_validate({**h.model_dump(), "id": h_id})
    store = RunStore.open_or_create(tmp / "run")
    if not store.has_step(IMAGE_STEP):
        store.save_image(IMAGE_STEP, sv.image)
    with store:
        return execute_plan(scope, store, plan, h, seed=0, run_survey_matches=True, smap=sv.smap)


def _surveyed_scope(sv, limits: SafetyLimits, scenario: str = "tmd-defects") -> SafeMicroscope:
    """A twin behind ``limits`` that has taken the run's survey, through the same interlocks."""
    scope = open_microscope(limits, scenario=scenario, seed=0)
    scope.set_beam_current(sv.step.current_pA)
    scope.unblank_beam()
    scope.acquire_image(sv.step.fov_nm, sv.step.pixels, sv.step.dwell_s)
    scope.blank_beam()
    return scope


def _dry(sv, plan: Plan, limits: SafetyLimits, scope: SafeMicroscope | None):
    """The dry run of ``plan`` from the interlocks' ledger as it stands (a fresh one without a scope)."""
    center = (sv.image.center_x_nm, sv.image.center_y_nm)
    ledger = scope.dose_ledger() if scope is not None else None
    return dry_run(
        plan, sv.caps, limits, Usage(survey=sv.step), run_budget_left=40, center_nm=center, ledger=ledger
    )


def _field(sv) -> tuple[float, float, float, float]:
    h = sv.image.fov_nm / 2
    cx, cy = sv.image.center_x_nm, sv.image.center_y_nm
    return cx - h, cx + h, cy - h, cy + h


def test_the_dry_run_predicts_the_interlocks_peak_exactly_for_known_positions(tmd, tmp_path: Path):
    cx, cy = tmd.image.center_x_nm, tmd.image.center_y_nm
    plan = _points_plan(tmd, [(cx, cy), (cx, cy), (cx + 0.3, cy), (cx + 2.0, cy + 1.0)], dwell_s=0.5)
    limits = SafetyLimits()
    scope = _surveyed_scope(tmd, limits)
    d = _dry(tmd, plan, limits, scope)
    assert d.ok
    _executed(tmp_path, tmd, plan, limits, scope)
    after = scope.peak_dose_e_per_A2(*_field(tmd))
    assert d.peak_dose_e_per_A2 == pytest.approx(after, rel=1e-9)
    # the old probe-FWHM square put this at e / (0.09 nm)² per stay: ~120× what the interlock counts
    per_stay = electrons(tmd.step.current_pA, 0.5) / (tmd.caps.probe_fwhm_nm**2 * 100)
    assert d.peak_dose_e_per_A2 < per_stay / 50


def test_the_dry_run_refuses_what_the_interlock_would_stop_and_passes_what_it_lets_through(
    tmd, tmp_path: Path
):
    cx, cy = tmd.image.center_x_nm, tmd.image.center_y_nm
    plan = _points_plan(tmd, [(cx, cy)] * 6, dwell_s=0.5)
    base = SafetyLimits()
    full = _dry(tmd, plan, base, _surveyed_scope(tmd, base))
    for factor, passes in ((1.001, True), (0.95, False)):  # limits just above and just below the plan's peak
        limits = base.model_copy(update={"max_dose_e_per_A2": full.peak_dose_e_per_A2 * factor})
        scope = _surveyed_scope(tmd, limits)
        d = _dry(tmd, plan, limits, scope)
        assert d.ok is passes
        try:
            _executed(tmp_path / str(factor), tmd, plan, limits, scope)
            stopped = None
        except SafetyLimitExceeded as exc:
            stopped = exc.limit
        assert stopped == (None if passes else "max_dose_e_per_A2"), factor


def test_a_second_round_starts_from_the_dose_of_the_first(tmd, tmp_path: Path):
    cx, cy = tmd.image.center_x_nm, tmd.image.center_y_nm
    plan = _points_plan(tmd, [(cx, cy)] * 2, dwell_s=0.5)
    limits = SafetyLimits()
    scope = open_microscope(limits, scenario="tmd-defects", seed=0)
    scope.set_beam_current(tmd.step.current_pA)
    first = _dry(tmd, plan, limits, scope)
    _executed(tmp_path, tmd, plan, limits, scope, h_id="H1")
    second = _dry(tmd, plan, limits, scope)
    spot = first.peak_dose_e_per_A2
    assert second.peak_dose_e_per_A2 == pytest.approx(2 * spot, rel=1e-9)


def test_a_run_time_chosen_scan_never_exceeds_its_dry_run_bound(tmp_path: Path):
    from .test_plan import a_plan

    sv = surveyed("plasmonic", 0)
    h, plan = a_plan(sv, budget=40)
    limits = SafetyLimits()
    d = _dry(sv, plan, limits, None)  # a fresh ledger: the reused survey is counted as one frame
    scope = _surveyed_scope(sv, limits, "plasmonic")
    with RunStore.create(tmp_path / "run") as store:
        store.save_image(IMAGE_STEP, sv.image)
        execute_plan(scope, store, plan, h, seed=0, run_survey_matches=True, smap=sv.smap)
    assert scope.peak_dose_e_per_A2(*_field(sv)) <= d.peak_dose_e_per_A2


def test_a_parked_unblanked_probe_is_charged_as_the_sample_receives_it(tmp_path: Path):
    twin = make_microscope("plasmonic", seed=0)
    events: list[dict] = []
    scope = SafeMicroscope(twin, SafetyLimits(), on_event=events.append)
    scope.set_beam_current(50.0)
    scope.unblank_beam()
    scope.acquire_spectrum(10.0, 10.0, 0.05, -1.0, 4.0)
    twin.wait(2.0)  # the column sits unblanked (a model fit, a person reading a gate) ...
    scope.move_stage(300.0, 0.0)  # ... then the stage moves with the beam on
    scope.blank_beam()
    truth = twin.status().total_dose_e  # what the twin's sample received, by its own physics
    assert scope.total_dose_e == pytest.approx(truth, rel=1e-9)
    parked = [e for e in events if e["kind"] == "beam_dose"]
    assert [e["reason"] for e in parked] == ["parked", "stage_move"]
    assert parked[0]["dose_e"] == pytest.approx(electrons(50.0, 2.0), rel=1e-9)
    assert scope.peak_dose_e_per_A2(9.0, 11.0, 9.0, 11.0) > electrons(50.0, 2.0) / (2.0**2 * 100) * 0.99
    # a resumed wrapper charges the parked dose again from the stored events
    again = SafeMicroscope(
        make_microscope("plasmonic", seed=0),
        SafetyLimits(),
        history=[
            {"record": "spectrum", **e} if e["kind"] == "acquisition" else e
            for e in events
            if e["kind"] in DOSE_EVENTS
        ],
    )
    assert again.total_dose_e == pytest.approx(sum(e["dose_e"] for e in parked), rel=1e-9)


def test_the_engine_leaves_the_beam_on_only_while_acquiring(tmp_path: Path):
    from .test_plan import a_plan

    sv = surveyed("plasmonic", 0)
    h, plan = a_plan(sv, budget=12)
    twin = make_microscope("plasmonic", seed=0)
    on_while: list[str] = []

    class Watch:
        def __getattr__(self, name):
            attr = getattr(twin, name)
            if name in ("acquire_image", "acquire_spectrum", "move_stage", "set_beam_current", "move_probe"):

                def watched(*a, **k):
                    on_while.append(f"{name}:{'on' if not twin.beam_blanked() else 'off'}")
                    return attr(*a, **k)

                return watched
            return attr

    scope = SafeMicroscope(Watch(), SafetyLimits())
    with RunStore.create(tmp_path / "run") as store:
        store.save_image(IMAGE_STEP, sv.image)
        execute_plan(scope, store, plan, h, seed=0, run_survey_matches=True, smap=sv.smap)
    assert {w for w in on_while if w.startswith("acquire")} == {"acquire_spectrum:on"}
    assert not [w for w in on_while if not w.startswith("acquire") and w.endswith(":on")]
    assert twin.beam_blanked()
