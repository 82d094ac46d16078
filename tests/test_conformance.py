"""One conformance suite for every microscope backend.

The same tests run against the in-process twin, the replay of a spectrum image
recorded from the twin, and the remote client talking to a real server process
started with ``autoscope instrument serve``, and the Nion backend over Nion's own simulator
(``nionswift-usim``, started once in this process: its registries are global). A backend that
passes can stand in for any other behind the protocols.

What a backend cannot show physically is marked where the effect is tested: the test skips for
it with the reason in ``CANNOT_SHOW`` (pytest -rs lists them). Counting statistics: a replay
returns the one draw of noise its recording holds, and Nion's simulator adds noise of a fixed
level (its HAADF noise is additive Gaussian, its EELS noise ``nion.usim_device.Noise``), which
the Nion backend declares (``Capabilities.shot_noise_limited``; tests/test_nion.py checks that it
says so truthfully). Blanking changes neither usim's HAADF nor its EELS: every backend refuses to
acquire while blanked, which is what the protocols promise and what is tested. usim's drift is
off, and no test here asserts drift on any backend.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from autoscope.instruments.errors import BeamBlanked, InvalidRequest
from autoscope.instruments.protocols import Beam, Clock, Imaging, Microscope, Spectroscopy, Stage, Status
from autoscope.instruments.records import NM2_TO_A2, Detector, electrons
from autoscope.instruments.remote.client import RemoteMicroscope
from autoscope.instruments.replay import ReplayMicroscope
from autoscope.tests.datasets import record_from_twin
from autoscope.tests.servers import instrument_server

BACKENDS = ["twin", "replay", "remote", "nion"]
PIXELS = 16
DWELL_S = 2e-6
GRID = 10  # recorded spectrum image: GRID × GRID pixels


#: (backend, effect) → why that backend cannot show that physical effect
CANNOT_SHOW = {
    (
        "replay",
        "counting statistics",
    ): "a recording holds one draw of its noise: a repeat returns the same counts",
    (
        "nion",
        "counting statistics",
    ): "Nion's simulator adds noise of a fixed level (HAADF: additive Gaussian; "
    "EELS: nion.usim_device.Noise), not the counts' shot noise; the backend declares shot_noise_limited=False",
}


def _cannot_show(request, effect: str) -> None:
    reason = CANNOT_SHOW.get((request.node.callspec.params["scope"], effect))
    if reason:
        pytest.skip(f"{effect}: {reason}")


def _twin():
    from autoscope.instruments.sim.scenarios import make_microscope

    return make_microscope("plasmonic", seed=0)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    return record_from_twin(tmp_path_factory.mktemp("conformance") / "twin_si.h5", grid=GRID)


@pytest.fixture(scope="module")
def server_url(tmp_path_factory) -> Iterator[tuple[str, str]]:
    """A real instrument server process (the CLI), stopped at teardown (or when idle)."""
    with instrument_server(tmp_path_factory.mktemp("server"), "--scenario", "plasmonic") as url_token:
        yield url_token


@pytest.fixture(scope="module")
def nion_scope() -> Iterator[Microscope]:
    """The Nion backend on Nion's simulator, started once (one simulator per process)."""
    pytest.importorskip("nion.usim_device")
    from autoscope.instruments.factory import open_backend

    scope = open_backend(backend="nion")
    try:
        yield scope
    finally:
        scope.close()


@pytest.fixture(params=BACKENDS)
def scope(request) -> Iterator[Microscope]:
    """A microscope with the beam blanked (a fresh one, except the shared remote server and Nion)."""
    if request.param == "nion":
        nion = request.getfixturevalue("nion_scope")
        current_pA = nion.beam_current_pA()
        nion.move_stage(0.0, 0.0)
        nion.blank_beam()
        yield nion
        nion.blank_beam()
        nion.set_beam_current(current_pA)
    elif request.param == "twin":
        yield _twin()
    elif request.param == "replay":
        yield ReplayMicroscope(request.getfixturevalue("recorded"), seed=0)
    else:
        url, token = request.getfixturevalue("server_url")
        with RemoteMicroscope(url, token, timeout_s=30.0) as remote:
            current_pA = remote.beam_current_pA()
            yield remote
            remote.blank_beam()  # the next test starts blanked, like a new instrument
            remote.set_beam_current(current_pA)


def _fov_nm(scope: Microscope) -> float:
    return min(scope.capabilities().max_fov_nm / 2, 20.0)


def _window_eV(scope: Microscope) -> tuple[float, float]:
    caps = scope.capabilities()
    lo = caps.energy_min_eV + 10.3 * caps.dispersion_eV
    return lo, lo + 40 * caps.dispersion_eV


def _near_stage(scope: Microscope) -> tuple[float, float]:
    sx, sy = scope.stage_position_nm()
    off = _fov_nm(scope) / 5
    return sx + off, sy - off


def test_implements_every_protocol(scope):
    for protocol in (Imaging, Spectroscopy, Beam, Stage, Status, Clock, Microscope):
        assert isinstance(scope, protocol), protocol.__name__


def test_starts_blanked_and_refuses_to_acquire_while_blanked(scope):
    assert scope.beam_blanked() and scope.status().beam_blanked
    before = scope.status().acquisitions
    with pytest.raises(BeamBlanked):
        scope.acquire_image(_fov_nm(scope), PIXELS, DWELL_S)
    with pytest.raises(BeamBlanked):
        scope.acquire_spectrum(*_near_stage(scope), 0.01, *_window_eV(scope))
    scope.unblank_beam()
    assert not scope.beam_blanked()
    scope.acquire_image(_fov_nm(scope), PIXELS, DWELL_S)
    scope.blank_beam()
    with pytest.raises(BeamBlanked):
        scope.acquire_image(_fov_nm(scope), PIXELS, DWELL_S)
    assert scope.status().acquisitions == before + 1


def test_a_rectangular_field_has_its_rows_its_height_and_its_dose(scope):
    """``rows`` down beside ``pixels`` across (square pixels), the same on every backend, wire included."""
    scope.unblank_beam()
    fov_nm, rows = _fov_nm(scope), PIXELS // 2
    rec = scope.acquire_image(fov_nm, PIXELS, DWELL_S, rows=rows)
    assert rec.data.shape == (rows, PIXELS) and rec.data.std() > 0
    assert (rec.rows, rec.fov_y_nm, rec.pixel_size_nm) == (rows, fov_nm / 2, fov_nm / PIXELS)
    assert rec.dose_e >= electrons(rec.current_pA, rows * PIXELS * DWELL_S)
    assert rec.dose_e_per_A2 == pytest.approx(rec.dose_e / (fov_nm * fov_nm / 2 * NM2_TO_A2), rel=1e-6)
    x, y = rec.pixel_to_nm(rows - 1, PIXELS - 1)  # the last pixel's centre, half a pixel inside
    cx, cy = scope.stage_position_nm()
    assert (x, y) == pytest.approx(
        (cx + fov_nm / 2 - rec.pixel_size_nm / 2, cy + fov_nm / 4 - rec.pixel_size_nm / 2)
    )


def test_image_record_fields(scope):
    scope.unblank_beam()
    fov_nm = _fov_nm(scope)
    t0 = scope.now_s()
    rec = scope.acquire_image(fov_nm, PIXELS, DWELL_S)
    assert rec.data.shape == (PIXELS, PIXELS)
    assert np.issubdtype(rec.data.dtype, np.number) and not np.iscomplexobj(rec.data)
    assert np.all(np.isfinite(rec.data)) and rec.data.std() > 0
    assert (rec.fov_nm, rec.pixels, rec.dwell_s, rec.detector) == (fov_nm, PIXELS, DWELL_S, Detector.HAADF)
    assert (rec.center_x_nm, rec.center_y_nm) == pytest.approx(scope.stage_position_nm())
    assert rec.current_pA == pytest.approx(scope.beam_current_pA())
    beam_on_pixels_e = electrons(rec.current_pA, PIXELS * PIXELS * DWELL_S)
    assert beam_on_pixels_e <= rec.dose_e <= 1.5 * beam_on_pixels_e
    assert rec.dose_e_per_A2 == pytest.approx(rec.dose_e / (fov_nm**2 * NM2_TO_A2), rel=1e-6)
    assert t0 <= rec.t_start_s < rec.t_end_s <= scope.now_s()
    assert rec.t_end_s - rec.t_start_s >= PIXELS * PIXELS * DWELL_S


def test_dose_and_signal_scale_with_dwell(scope):
    """Twice the dwell: twice the electrons, twice the detected counts (shot-noise physics)."""
    scope.unblank_beam()
    fov_nm = _fov_nm(scope)
    short = scope.acquire_image(fov_nm, 32, 5e-6)
    long = scope.acquire_image(fov_nm, 32, 1e-5)
    assert long.dose_e / short.dose_e == pytest.approx(2.0, rel=0.05)
    assert long.dose_e_per_A2 / short.dose_e_per_A2 == pytest.approx(2.0, rel=0.05)
    assert long.data.mean() / short.data.mean() == pytest.approx(2.0, rel=0.15)
    assert (long.t_end_s - long.t_start_s) > (short.t_end_s - short.t_start_s)


def test_repeated_spectra_show_counting_statistics(scope, request):
    """A spectrum's counts are detected electrons: repeats at one point scatter as Poisson
    (variance ≈ mean in every channel with counts), and the backend says so."""
    _cannot_show(request, "counting statistics")
    assert scope.capabilities().shot_noise_limited
    scope.unblank_beam()
    x, y = _near_stage(scope)
    lo, hi = _window_eV(scope)
    counts = np.array([scope.acquire_spectrum(x, y, 0.01, lo, hi).counts for _ in range(30)])
    mean, var = counts.mean(axis=0), counts.var(axis=0, ddof=1)
    busy = mean > 20
    assert busy.sum() >= 10
    assert np.median(var[busy] / mean[busy]) == pytest.approx(1.0, abs=0.3)


def test_image_noise_falls_with_the_square_root_of_the_dwell(scope, request):
    """Four times the dwell: four times the counts, half the relative noise (from two repeats)."""
    _cannot_show(request, "counting statistics")
    scope.unblank_beam()
    fov_nm = _fov_nm(scope)

    def relative_noise(dwell_s: float) -> float:
        a, b = (scope.acquire_image(fov_nm, 32, dwell_s).data for _ in range(2))
        return float(np.std(a - b) / np.sqrt(2) / np.mean(a))

    assert relative_noise(2e-5) / relative_noise(5e-6) == pytest.approx(0.5, abs=0.1)


def test_clock_advances_with_acquisitions(scope):
    scope.unblank_beam()
    t0 = scope.now_s()
    image = scope.acquire_image(_fov_nm(scope), PIXELS, DWELL_S)
    t1 = scope.now_s()
    spectrum = scope.acquire_spectrum(*_near_stage(scope), 0.02, *_window_eV(scope))
    t2 = scope.now_s()
    assert t0 < t1 < t2
    assert image.t_end_s <= spectrum.t_start_s < spectrum.t_end_s <= t2
    assert spectrum.t_end_s - spectrum.t_start_s >= 0.02


def test_spectrum_energy_axis_matches_requested_window(scope):
    caps = scope.capabilities()
    lo, hi = _window_eV(scope)
    x_nm, y_nm = _near_stage(scope)
    scope.unblank_beam()
    rec = scope.acquire_spectrum(x_nm, y_nm, 0.05, lo, hi)
    assert rec.counts.shape == (round((hi - lo) / caps.dispersion_eV),)
    assert rec.dispersion_eV == pytest.approx(caps.dispersion_eV)
    assert abs(rec.energy_eV[0] - lo) <= caps.dispersion_eV / 2 + 1e-9
    assert abs(rec.energy_eV[-1] + rec.dispersion_eV - hi) <= caps.dispersion_eV / 2 + 1e-9
    assert np.all(np.isfinite(rec.counts)) and rec.counts.sum() > 0
    assert (rec.x_nm, rec.y_nm, rec.dwell_s) == pytest.approx((x_nm, y_nm, 0.05))
    assert rec.dose_e == pytest.approx(electrons(rec.current_pA, 0.05), rel=0.05)
    assert rec.dose_e_per_A2 > rec.dose_e / (caps.max_fov_nm**2 * NM2_TO_A2)


def test_stage_and_probe_moves_round_trip(scope):
    limits = scope.capabilities().stage
    target = (
        limits.x_min_nm + 0.4 * (limits.x_max_nm - limits.x_min_nm),
        limits.y_min_nm + 0.6 * (limits.y_max_nm - limits.y_min_nm),
    )
    t0 = scope.now_s()
    scope.move_stage(*target)
    assert scope.stage_position_nm() == pytest.approx(target)
    assert scope.now_s() > t0  # moving the stage takes time
    probe = _near_stage(scope)
    scope.move_probe(*probe)
    assert scope.probe_position_nm() == pytest.approx(probe)
    status = scope.status()
    assert (status.stage_x_nm, status.stage_y_nm) == pytest.approx(target)
    assert (status.probe_x_nm, status.probe_y_nm) == pytest.approx(probe)
    scope.unblank_beam()
    assert (scope.acquire_image(_fov_nm(scope), PIXELS, DWELL_S).center_x_nm) == pytest.approx(target[0])


def _field_of(call) -> str:
    with pytest.raises(InvalidRequest) as exc:
        call()
    return exc.value.field


def test_invalid_requests_name_the_field_and_acquire_nothing(scope):
    caps = scope.capabilities()
    scope.unblank_beam()
    before = scope.status().acquisitions
    x_nm, y_nm = _near_stage(scope)
    lo, hi = _window_eV(scope)
    assert _field_of(lambda: scope.acquire_image(-1.0, PIXELS, DWELL_S)) == "fov_nm"
    assert _field_of(lambda: scope.acquire_image(_fov_nm(scope), 3, DWELL_S)) == "pixels"
    assert _field_of(lambda: scope.acquire_image(_fov_nm(scope), PIXELS, 0.0)) == "dwell_s"
    assert _field_of(lambda: scope.acquire_image(caps.max_fov_nm * 2, PIXELS, DWELL_S)) == "fov_nm"
    assert _field_of(lambda: scope.acquire_spectrum(x_nm, y_nm, -1.0, lo, hi)) == "dwell_s"
    far_x = scope.stage_position_nm()[0] + caps.max_fov_nm
    assert _field_of(lambda: scope.acquire_spectrum(far_x, y_nm, 0.01, lo, hi)) == "x_nm"
    assert (
        _field_of(lambda: scope.acquire_spectrum(x_nm, y_nm, 0.01, lo, caps.energy_max_eV + 10))
        == "energy_max_eV"
    )
    assert (
        _field_of(lambda: scope.acquire_spectrum(x_nm, y_nm, 0.01, caps.energy_min_eV - 10, hi))
        == "energy_min_eV"
    )
    assert _field_of(lambda: scope.move_stage(caps.stage.x_min_nm, caps.stage.y_max_nm + 1.0)) == "y_nm"
    assert _field_of(lambda: scope.move_probe(far_x, y_nm)) == "x_nm"
    assert _field_of(lambda: scope.set_beam_current(caps.current_min_pA / 10)) == "current_pA"
    assert scope.status().acquisitions == before


def test_status_is_consistent_with_the_instrument(scope):
    scope.set_beam_current(scope.capabilities().current_min_pA * 2)
    scope.unblank_beam()
    s0 = scope.status()
    image = scope.acquire_image(_fov_nm(scope), PIXELS, DWELL_S)
    spectrum = scope.acquire_spectrum(*_near_stage(scope), 0.01, *_window_eV(scope))
    s1 = scope.status()
    assert s1.acquisitions == s0.acquisitions + 2
    assert s1.total_dose_e - s0.total_dose_e >= image.dose_e + spectrum.dose_e - 1e-6 * s1.total_dose_e
    assert s1.current_pA == pytest.approx(scope.beam_current_pA()) == pytest.approx(image.current_pA)
    assert s1.beam_blanked is scope.beam_blanked() is False
    assert (s1.stage_x_nm, s1.stage_y_nm) == pytest.approx(scope.stage_position_nm())
    assert (s1.probe_x_nm, s1.probe_y_nm) == pytest.approx(scope.probe_position_nm())
    assert spectrum.t_end_s <= s1.clock_s <= scope.now_s()
    assert s1.capabilities == scope.capabilities()
    assert s1.name and s1.backend
