"""Safety interlocks: every limit stops the request before the instrument, blanks the beam and reports."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from autoscope.instruments.errors import AcquisitionFailed, ConfigError, InvalidRequest, SafetyLimitExceeded
from autoscope.instruments.protocols import Microscope
from autoscope.instruments.records import (
    NM2_TO_A2,
    Capabilities,
    Detector,
    ImageRecord,
    InstrumentStatus,
    SpectrumRecord,
    StageLimits,
    electrons,
)
from autoscope.instruments.safety import SafeMicroscope, SafetyLimits

PROBE_FWHM_NM = 0.2


class FakeScope:
    """A minimal instrument that records every call it receives; its clock advances with exposures."""

    def __init__(self, current_pA: float = 10.0) -> None:
        self.calls: list[str] = []
        self.stage = (0.0, 0.0)
        self.probe = (0.0, 0.0)
        self.blanked = True
        self.current_pA = current_pA
        self.clock_s = 0.0
        self.fail_next = False

    def _log(self, name: str) -> None:
        self.calls.append(name)

    def acquire_image(self, fov_nm, pixels, dwell_s, detector=Detector.HAADF) -> ImageRecord:
        self._log("acquire_image")
        t0, n_e = self.clock_s, electrons(self.current_pA, dwell_s * pixels * pixels)
        self.clock_s += dwell_s * pixels * pixels
        if self.fail_next:
            self.fail_next = False
            raise AcquisitionFailed("detector readout failed")
        return ImageRecord(
            np.ones((pixels, pixels), np.float32), fov_nm, pixels, dwell_s, Detector(detector), *self.stage,
            self.current_pA, n_e, n_e / (fov_nm**2 * NM2_TO_A2), t0, self.clock_s,
        )  # fmt: skip

    def acquire_spectrum(self, x_nm, y_nm, dwell_s, energy_min_eV, energy_max_eV) -> SpectrumRecord:
        self._log("acquire_spectrum")
        t0, n_e = self.clock_s, electrons(self.current_pA, dwell_s)
        self.clock_s += dwell_s
        area_A2 = np.pi * (PROBE_FWHM_NM / 2) ** 2 * NM2_TO_A2
        return SpectrumRecord(
            np.zeros(16), energy_min_eV, 1.0, x_nm, y_nm, dwell_s, self.current_pA, n_e, n_e / area_A2, t0,
            self.clock_s,
        )  # fmt: skip

    def probe_position_nm(self):
        return self.probe

    def move_probe(self, x_nm, y_nm):
        self._log("move_probe")
        self.probe = (x_nm, y_nm)

    def blank_beam(self):
        self._log("blank_beam")
        self.blanked = True

    def unblank_beam(self):
        self._log("unblank_beam")
        self.blanked = False

    def beam_blanked(self):
        return self.blanked

    def beam_current_pA(self):
        return self.current_pA

    def set_beam_current(self, current_pA):
        self._log("set_beam_current")
        self.current_pA = current_pA

    def stage_position_nm(self):
        return self.stage

    def move_stage(self, x_nm, y_nm):
        self._log("move_stage")
        self.stage = (x_nm, y_nm)

    def capabilities(self) -> Capabilities:
        box = StageLimits(x_min_nm=-1e4, x_max_nm=1e4, y_min_nm=-1e4, y_max_nm=1e4)
        return Capabilities(
            max_fov_nm=2000.0, energy_min_eV=-10.0, energy_max_eV=2000.0, dispersion_eV=0.1,
            current_min_pA=1.0, current_max_pA=1000.0, probe_fwhm_nm=PROBE_FWHM_NM, stage=box,
        )  # fmt: skip

    def status(self) -> InstrumentStatus:
        return InstrumentStatus(
            name="fake", backend="fake", stage_x_nm=self.stage[0], stage_y_nm=self.stage[1],
            probe_x_nm=self.probe[0], probe_y_nm=self.probe[1], beam_blanked=self.blanked,
            current_pA=self.current_pA, clock_s=self.clock_s, acquisitions=0, total_dose_e=0.0,
            capabilities=self.capabilities(),
        )  # fmt: skip

    def now_s(self):
        return self.clock_s


BASE = dict(
    max_total_dose_e=1e12, max_dose_e_per_A2=1e6, max_current_pA=100.0, stage_x_min_nm=-1000.0,
    stage_x_max_nm=1000.0, stage_y_min_nm=-1000.0, stage_y_max_nm=1000.0, max_acquisitions=100,
    max_wall_time_s=3600.0,
)  # fmt: skip


def wrapped(current_pA: float = 10.0, **overrides):
    fake, events = FakeScope(current_pA), []
    safe = SafeMicroscope(fake, SafetyLimits(**{**BASE, **overrides}), on_event=events.append)
    safe.unblank_beam()
    return fake, safe, events


def image_dose_A2(current_pA, dwell_s, pixels, fov_nm):
    return electrons(current_pA, dwell_s * pixels**2) / (fov_nm**2 * NM2_TO_A2)


def refuse(fake, events, action, limit: str, op: str) -> SafetyLimitExceeded:
    """Run ``action``; check it was stopped: typed error, only a blank reached the instrument, event sent."""
    n_calls, n_events = len(fake.calls), len(events)
    with pytest.raises(SafetyLimitExceeded) as exc:
        action()
    err = exc.value
    assert err.limit == limit
    assert fake.calls[n_calls:] == ["blank_beam"] and fake.blanked
    (ev,) = events[n_events:]
    assert ev["kind"] == "safety_stop" and ev["limit"] == limit
    assert (ev["value"], ev["maximum"]) == (err.value, err.maximum)
    assert ev["request"]["op"] == op
    json.dumps(ev)  # plain JSON, ready for the run store
    return err


def test_wrapper_implements_every_protocol():
    assert isinstance(FakeScope(), Microscope)
    assert isinstance(wrapped()[1], Microscope)


def test_total_dose_limit():
    fake, safe, events = wrapped(max_total_dose_e=5e6)
    safe.acquire_image(100.0, 64, 1e-5)  # 2.6e6 e at 10 pA
    exc = refuse(
        fake, events, lambda: safe.acquire_image(100.0, 128, 1e-5), "max_total_dose_e", "acquire_image"
    )
    assert fake.calls.count("acquire_image") == 1
    expected = electrons(10.0, 1e-5 * 64**2) + electrons(10.0, 1e-5 * 128**2)
    assert exc.value == pytest.approx(expected, rel=1e-12) and exc.maximum == 5e6


def test_dose_per_area_accumulates_over_repeated_images():
    per_image = image_dose_A2(10.0, 1e-4, 64, 10.0)  # 2.6e3 e/Å² on a 10 nm field at 10 pA
    fake, safe, events = wrapped(max_dose_e_per_A2=2.5 * per_image)
    safe.acquire_image(10.0, 64, 1e-4)
    safe.acquire_image(10.0, 64, 1e-4)
    exc = refuse(
        fake, events, lambda: safe.acquire_image(10.0, 64, 1e-4), "max_dose_e_per_A2", "acquire_image"
    )
    assert fake.calls.count("acquire_image") == 2
    assert exc.value == pytest.approx(3 * per_image, rel=1e-9)
    assert "e/Å²" in str(exc) and "limits file" in str(exc)
    # a fresh area next to it is still allowed; the overlap counts
    safe.unblank_beam()
    safe.move_stage(10.0, 0.0)
    safe.acquire_image(10.0, 64, 1e-4)
    safe.move_stage(5.0, 0.0)
    with pytest.raises(SafetyLimitExceeded):
        safe.acquire_image(10.0, 64, 1e-4)


def test_dose_per_area_of_spots_in_a_large_travel_box():
    """Spot dose is averaged over 1 nm cells, not diluted over a 2 mm travel box."""
    n_e = electrons(10.0, 0.1)
    cell_dose = n_e / (1.0 * NM2_TO_A2)  # a 0.2 nm probe inside one 1 nm cell
    box = dict(stage_x_min_nm=-1e6, stage_x_max_nm=1e6, stage_y_min_nm=-1e6, stage_y_max_nm=1e6)
    fake, safe, events = wrapped(max_dose_e_per_A2=3.5 * cell_dose, **box)
    for _ in range(3):
        safe.acquire_spectrum(0.5, 0.5, 0.1, 0.0, 100.0)
    safe.acquire_spectrum(7.5, 0.5, 0.1, 0.0, 100.0)  # another cell
    exc = refuse(
        fake,
        events,
        lambda: safe.acquire_spectrum(0.4, 0.6, 0.1, 0.0, 100.0),
        "max_dose_e_per_A2",
        "acquire_spectrum",
    )
    assert fake.calls.count("acquire_spectrum") == 4
    assert exc.value == pytest.approx(4 * cell_dose, rel=1e-9)
    assert safe.peak_dose_e_per_A2(0.0, 1.0, 0.0, 1.0) == pytest.approx(3 * cell_dose, rel=1e-9)


def test_image_over_spots_adds_both():
    n_e = electrons(10.0, 0.1)
    cell_dose = n_e / NM2_TO_A2
    per_image = image_dose_A2(10.0, 1e-5, 64, 20.0)
    fake, safe, events = wrapped(max_dose_e_per_A2=cell_dose + 0.5 * per_image)
    safe.acquire_spectrum(3.5, 3.5, 0.1, 0.0, 100.0)
    exc = refuse(
        fake, events, lambda: safe.acquire_image(20.0, 64, 1e-5), "max_dose_e_per_A2", "acquire_image"
    )
    assert exc.value == pytest.approx(cell_dose + per_image, rel=1e-9)


def test_ledger_never_underestimates_the_cell_averaged_dose():
    """Against a plain DoseMap on 1 nm cells: the wrapper's peak is an upper bound, exact for images alone."""
    from autoscope.instruments.dose import DoseMap

    rng = np.random.default_rng(7)
    fake, safe, _ = wrapped(max_dose_e_per_A2=1e30)
    ref = DoseMap(-1000.0, 1000.0, -1000.0, 1000.0, 1.0)
    for _ in range(12):  # images on whole-nm fields
        x, y, fov = int(rng.integers(-40, 40)), int(rng.integers(-40, 40)), 2 * int(rng.integers(5, 30))
        safe.move_stage(float(x), float(y))
        rec = safe.acquire_image(float(fov), 16, float(rng.uniform(1e-6, 1e-4)))
        ref.add_rect(x - fov / 2, x + fov / 2, y - fov / 2, y + fov / 2, rec.dose_e_per_A2)
    region = (-100.0, 100.0, -100.0, 100.0)
    assert safe.peak_dose_e_per_A2(*region) == pytest.approx(ref.peak_in(*region), rel=1e-9)
    for _ in range(30):
        x, y = rng.uniform(-60, 60, size=2)
        rec = safe.acquire_spectrum(float(x), float(y), float(rng.uniform(0.01, 0.5)), 0.0, 100.0)
        ref.add_spot(rec.x_nm, rec.y_nm, rec.dose_e, PROBE_FWHM_NM)
    for _ in range(20):
        x0, y0 = rng.uniform(-80, 60, size=2)
        box = (x0, x0 + 20.0, y0, y0 + 20.0)
        assert safe.peak_dose_e_per_A2(*box) >= ref.peak_in(*box) * (1 - 1e-9)
    assert safe.peak_dose_e_per_A2(*region) <= 2 * ref.peak_in(*region)


@pytest.mark.parametrize(
    ("action", "limit", "op"),
    [
        (lambda s: s.move_stage(1200.0, 0.0), "stage_x_max_nm", "move_stage"),
        (lambda s: s.move_stage(0.0, -1000.5), "stage_y_min_nm", "move_stage"),
        (lambda s: s.acquire_spectrum(-1001.0, 0.0, 0.1, 0.0, 100.0), "stage_x_min_nm", "acquire_spectrum"),
        (lambda s: s.move_probe(0.0, 1500.0), "stage_y_max_nm", "move_probe"),
    ],
)
def test_stage_travel_box(action, limit, op):
    fake, safe, events = wrapped()
    refuse(fake, events, lambda: action(safe), limit, op)
    assert fake.stage == (0.0, 0.0) and fake.probe == (0.0, 0.0)


def test_image_field_must_lie_in_the_travel_box():
    fake, safe, events = wrapped()
    safe.move_stage(950.0, 0.0)
    safe.acquire_image(100.0, 16, 1e-6)  # x up to 1000: on the edge, allowed
    exc = refuse(fake, events, lambda: safe.acquire_image(120.0, 16, 1e-6), "stage_x_max_nm", "acquire_image")
    assert exc.value == pytest.approx(1010.0)


def test_beam_current_limit_on_set_and_on_acquire():
    fake, safe, events = wrapped()
    exc = refuse(fake, events, lambda: safe.set_beam_current(150.0), "max_current_pA", "set_beam_current")
    assert (exc.value, exc.maximum, fake.current_pA) == (150.0, 100.0, 10.0)
    safe.set_beam_current(100.0)
    assert fake.current_pA == 100.0
    hot, safe2, events2 = wrapped(current_pA=500.0)  # an instrument left at a high current
    exc2 = refuse(
        hot,
        events2,
        lambda: safe2.acquire_spectrum(0.0, 0.0, 0.01, 0.0, 100.0),
        "max_current_pA",
        "acquire_spectrum",
    )
    assert exc2.value == 500.0


def test_acquisition_count_limit_counts_failed_attempts():
    fake, safe, events = wrapped(max_acquisitions=3)
    safe.acquire_spectrum(0.0, 0.0, 0.01, 0.0, 100.0)
    fake.fail_next = True
    with pytest.raises(AcquisitionFailed):
        safe.acquire_image(50.0, 16, 1e-6)
    assert safe.acquisitions == 2
    assert safe.total_dose_e == pytest.approx(electrons(10.0, 0.01) + electrons(10.0, 1e-6 * 256), rel=1e-12)
    safe.acquire_spectrum(1.0, 0.0, 0.01, 0.0, 100.0)
    exc = refuse(
        fake,
        events,
        lambda: safe.acquire_spectrum(2.0, 0.0, 0.01, 0.0, 100.0),
        "max_acquisitions",
        "acquire_spectrum",
    )
    assert (exc.value, exc.maximum) == (4, 3)


def test_wall_time_limit_uses_the_instrument_clock():
    fake, safe, events = wrapped(max_wall_time_s=10.0)
    fake.clock_s = 500.0  # instrument clock before the wrapper existed does not count
    safe2 = SafeMicroscope(fake, SafetyLimits(**{**BASE, "max_wall_time_s": 10.0}), on_event=events.append)
    safe2.acquire_spectrum(0.0, 0.0, 6.0, 0.0, 100.0)
    exc = refuse(
        fake,
        events,
        lambda: safe2.acquire_spectrum(0.0, 1.0, 6.0, 0.0, 100.0),
        "max_wall_time_s",
        "acquire_spectrum",
    )
    assert exc.value == pytest.approx(12.0)
    fake.clock_s += 5.0
    with pytest.raises(SafetyLimitExceeded):
        safe2.move_stage(1.0, 1.0)
    assert fake.stage == (0.0, 0.0)


def test_within_limits_passes_through():
    fake, safe, events = wrapped()
    safe.move_stage(100.0, -50.0)
    safe.set_beam_current(20.0)
    img = safe.acquire_image(64.0, 32, 2e-6, Detector.BF)
    spec = safe.acquire_spectrum(110.0, -40.0, 0.05, 0.0, 100.0)
    safe.move_probe(90.0, -60.0)
    assert fake.calls == [
        "unblank_beam", "move_stage", "set_beam_current", "acquire_image", "acquire_spectrum", "move_probe"
    ]  # fmt: skip
    assert (img.center_x_nm, img.detector, spec.x_nm) == (100.0, Detector.BF, 110.0)
    assert safe.total_dose_e == pytest.approx(img.dose_e + spec.dose_e, rel=1e-12)
    assert not events and not safe.beam_blanked()
    assert safe.stage_position_nm() == (100.0, -50.0) and safe.probe_position_nm() == (90.0, -60.0)
    assert safe.status().name == "fake" and safe.now_s() == fake.clock_s
    with pytest.raises(InvalidRequest, match="pixels"):
        safe.acquire_image(64.0, 2, 1e-6)
    assert fake.calls.count("acquire_image") == 1


def test_limits_cannot_be_changed_at_run_time():
    limits = SafetyLimits(**{**BASE, "max_current_pA": 50.0})
    fake, events = FakeScope(), []
    safe = SafeMicroscope(fake, limits, on_event=events.append)
    with pytest.raises(ValidationError):
        safe.limits.max_current_pA = 1e6  # type: ignore[misc]
    with pytest.raises(AttributeError):
        safe.limits = SafetyLimits(max_current_pA=1e6)  # type: ignore[misc]
    with pytest.raises(AttributeError):
        safe._limits = SafetyLimits(max_current_pA=1e6)  # type: ignore[misc]
    looser = safe.limits.model_copy(update={"max_current_pA": 1e6})
    object.__setattr__(safe.limits, "max_current_pA", 1e6)
    object.__setattr__(limits, "max_current_pA", 1e6)  # the caller's object, behind pydantic's back
    assert looser.max_current_pA == 1e6 and safe.limits.max_current_pA == 50.0
    with pytest.raises(SafetyLimitExceeded):
        safe.set_beam_current(60.0)
    assert "set_beam_current" not in fake.calls
    with pytest.raises(ValidationError):
        SafeMicroscope(fake, SafetyLimits.model_construct(**{**BASE, "max_current_pA": -1.0}))


def test_limits_files(tmp_path):
    yaml_file = tmp_path / "limits.yaml"
    yaml_file.write_text("# set by the facility\n" + "\n".join(f"{k}: {v}" for k, v in BASE.items()))
    toml_file = tmp_path / "limits.toml"
    toml_file.write_text("\n".join(f"{k} = {v}" for k, v in BASE.items()))
    json_file = tmp_path / "limits.json"
    json_file.write_text(json.dumps(BASE))
    expected = SafetyLimits(**BASE)
    for f in (yaml_file, toml_file, json_file):
        assert SafetyLimits.from_file(f) == expected
    assert SafetyLimits.from_file(yaml_file).dose_cell_nm == 1.0

    def bad(name: str, text: str, field: str) -> None:
        p = tmp_path / name
        p.write_text(text)
        with pytest.raises(ConfigError) as exc:
            SafetyLimits.from_file(p)
        assert exc.value.field == field and str(p) in str(exc.value)

    bad("neg.yaml", "max_current_pA: -5\n", "max_current_pA")
    bad("typo.toml", "max_curent_pA = 5.0\n", "max_curent_pA")
    bad("box.yaml", "stage_x_min_nm: 10\nstage_x_max_nm: -10\n", "stage_x_min_nm")
    bad("inf.json", '{"max_total_dose_e": "inf"}', "max_total_dose_e")
    bad("count.yaml", "max_acquisitions: 2.5\n", "max_acquisitions")
    bad("broken.yaml", "max_current_pA: [1,\n", "file")
    bad("broken.toml", "max_current_pA = \n", "file")
    bad("list.yaml", "- 1\n- 2\n", "file")
    bad("limits.ini", "max_current_pA=5\n", "file")
    with pytest.raises(ConfigError, match="no such limits file") as exc:
        SafetyLimits.from_file(tmp_path / "missing.yaml")
    assert exc.value.field == "file"


def test_shipped_limits_file_matches_the_defaults():
    shipped = Path(__file__).resolve().parents[1] / "agents" / "limits.default.yaml"
    if not shipped.exists():
        pytest.skip("no shipped limits file in this checkout")
    assert SafetyLimits.from_file(shipped) == SafetyLimits()


def test_safety_stops_are_recorded_in_the_run_store(tmp_path):
    from autoscope.tools.store import RunStore

    with RunStore.create(tmp_path / "run") as store:
        fake = FakeScope()
        safe = SafeMicroscope(fake, SafetyLimits(**BASE), on_event=lambda e: store.append_event(**e))
        with pytest.raises(SafetyLimitExceeded):
            safe.move_stage(5000.0, 0.0)
    (ev,) = RunStore.open(tmp_path / "run", read_only=True).events("safety_stop")
    assert ev["limit"] == "stage_x_max_nm" and ev["value"] == 5000.0 and ev["maximum"] == 1000.0
    assert ev["request"] == {"op": "move_stage", "x_nm": 5000.0, "y_nm": 0.0} and ev["seq"] == 1


def test_digital_twin_behind_the_wrapper():
    scenarios = pytest.importorskip("autoscope.instruments.sim.scenarios")
    twin = scenarios.make_microscope("plasmonic", seed=0)
    caps = twin.capabilities()
    sx, sy = twin.stage_position_nm()
    fov = min(caps.max_fov_nm, 50.0)
    per_image = image_dose_A2(twin.beam_current_pA(), 2e-6, 64, fov)
    limits = SafetyLimits(
        max_dose_e_per_A2=1.5 * per_image, max_current_pA=caps.current_max_pA,
        stage_x_min_nm=caps.stage.x_min_nm, stage_x_max_nm=caps.stage.x_max_nm,
        stage_y_min_nm=caps.stage.y_min_nm, stage_y_max_nm=caps.stage.y_max_nm,
    )  # fmt: skip
    events: list[dict] = []
    safe = SafeMicroscope(twin, limits, on_event=events.append)
    safe.unblank_beam()
    first = safe.acquire_image(fov, 64, 2e-6)
    assert first.dose_e_per_A2 == pytest.approx(per_image, rel=1e-9)
    before = twin.status().acquisitions
    with pytest.raises(SafetyLimitExceeded) as exc:
        safe.acquire_image(fov, 64, 2e-6)
    assert exc.value.limit == "max_dose_e_per_A2" and twin.beam_blanked()
    assert twin.status().acquisitions == before and events[-1]["limit"] == "max_dose_e_per_A2"
    assert (sx, sy) == twin.stage_position_nm()
