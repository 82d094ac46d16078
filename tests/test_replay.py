"""Replay backend: dataset round trips and the statistics of replayed acquisitions."""

from __future__ import annotations

import numpy as np
import pytest

from autoscope.instruments.errors import InvalidRequest
from autoscope.instruments.replay import ReplayMicroscope, load_spectrum_image, save_spectrum_image

H, W, E = 24, 32, 120
PIXEL_NM = 0.5
OFFSET_EV, DISPERSION_EV = -2.0, 0.1
DWELL_S, SPECTRUM_DWELL_S, CURRENT_PA = 10e-6, 0.01, 20.0
ORIGIN = (100.0, -40.0)


def _dataset() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:H, 0:W]
    image = 200.0 + 150.0 * np.sin(xx / 3.0) * np.cos(yy / 4.0) + rng.uniform(0, 10, (H, W))
    energy = OFFSET_EV + DISPERSION_EV * np.arange(E)
    # a loss peak whose position encodes the pixel: 2 eV + 0.05 eV per column + 0.02 eV per row
    centre = 2.0 + 0.05 * xx[..., None] + 0.02 * yy[..., None]
    spectra = 50.0 + 400.0 * np.exp(-0.5 * ((energy - centre) / 0.3) ** 2)
    return image, spectra


def _save(path):
    image, spectra = _dataset()
    return save_spectrum_image(
        path,
        image,
        spectra,
        pixel_size_nm=PIXEL_NM,
        energy_offset_eV=OFFSET_EV,
        dispersion_eV=DISPERSION_EV,
        dwell_s=DWELL_S,
        spectrum_dwell_s=SPECTRUM_DWELL_S,
        current_pA=CURRENT_PA,
        origin_x_nm=ORIGIN[0],
        origin_y_nm=ORIGIN[1],
    )


@pytest.fixture(scope="module")
def dataset_path(tmp_path_factory):
    return _save(tmp_path_factory.mktemp("replay") / "si.h5")


@pytest.mark.parametrize("suffix", [".h5", ".npz"])
def test_round_trip(tmp_path, suffix):
    si = load_spectrum_image(_save(tmp_path / f"si{suffix}"))
    image, spectra = _dataset()
    np.testing.assert_array_equal(si.image, image)
    np.testing.assert_array_equal(si.spectra, spectra)
    assert (si.pixel_size_nm, si.energy_offset_eV, si.dispersion_eV) == (PIXEL_NM, OFFSET_EV, DISPERSION_EV)
    assert (si.dwell_s, si.spectrum_dwell_s, si.current_pA) == (DWELL_S, SPECTRUM_DWELL_S, CURRENT_PA)
    assert (si.origin_x_nm, si.origin_y_nm) == ORIGIN
    assert si.extent_nm == (100.0, 100.0 + W * PIXEL_NM, -40.0, -40.0 + H * PIXEL_NM)


def test_load_rejects_incomplete_and_unknown_files(tmp_path):
    image, spectra = _dataset()
    np.savez(tmp_path / "bad.npz", image=image, spectra=spectra, pixel_size_nm=1.0)
    with pytest.raises(ValueError, match="dispersion_eV"):
        load_spectrum_image(tmp_path / "bad.npz")
    with pytest.raises(ValueError, match="format"):
        save_spectrum_image(
            tmp_path / "x.tif", image, spectra, pixel_size_nm=1, energy_offset_eV=0, dispersion_eV=1,
            dwell_s=1e-6, spectrum_dwell_s=0.1, current_pA=1,
        )  # fmt: skip


def test_geometry_from_dataset(dataset_path):
    scope = ReplayMicroscope(dataset_path)
    caps = scope.capabilities()
    assert caps.max_fov_nm == pytest.approx(W * PIXEL_NM)
    assert (caps.stage.x_min_nm, caps.stage.x_max_nm) == (100.0, 116.0)
    assert (caps.stage.y_min_nm, caps.stage.y_max_nm) == (-40.0, -28.0)
    assert scope.stage_position_nm() == pytest.approx((108.0, -34.0))
    assert caps.energy_min_eV == OFFSET_EV and caps.dispersion_eV == DISPERSION_EV


def test_deterministic_replay_equals_scaled_recording(dataset_path):
    """poisson=False at the recorded grid returns the recording × (current·dwell ratio)."""
    image, _ = _dataset()
    scopes = [ReplayMicroscope(dataset_path, poisson=False, seed=s) for s in (0, 1)]
    records = []
    for scope in scopes:
        scope.unblank_beam()
        scope.move_stage(100.0 + W * PIXEL_NM / 2, -40.0 + H * PIXEL_NM / 2 + 2.0)  # field rows 4..19+
        scope.set_beam_current(2 * CURRENT_PA)
        records.append(scope.acquire_image(fov_nm=8.0, pixels=16, dwell_s=3 * DWELL_S))
    np.testing.assert_array_equal(records[0].data, records[1].data)
    # field of 16 px × 0.5 nm centred on the data centre (+2 nm in y): rows 8..23, cols 8..23
    np.testing.assert_allclose(records[0].data, 6.0 * image[8:24, 8:24], rtol=1e-12)


def test_bilinear_resampling_between_pixels(dataset_path):
    """Half-resolution scan: each pixel centre falls between four recorded pixels."""
    image, _ = _dataset()
    scope = ReplayMicroscope(dataset_path, poisson=False)
    scope.unblank_beam()
    scope.move_stage(100.0 + 8.0, -40.0 + 6.0)
    rec = scope.acquire_image(fov_nm=8.0, pixels=8, dwell_s=DWELL_S)
    # pixel size 1 nm: centres at recorded fractional index 8.5, 10.5, ... (rows 4.5, 6.5, ...)
    expected = 0.25 * (
        image[4:19:2, 8:23:2] + image[5:20:2, 8:23:2] + image[4:19:2, 9:24:2] + image[5:20:2, 9:24:2]
    )
    np.testing.assert_allclose(rec.data, expected, rtol=1e-12)


def test_poisson_statistics_match_scaled_expectation(dataset_path):
    image, _ = _dataset()
    scope = ReplayMicroscope(dataset_path, seed=3)
    scope.unblank_beam()
    scope.move_stage(100.0 + 8.0, -40.0 + 6.0)
    dwell_s = 0.5 * DWELL_S
    recs = [scope.acquire_image(fov_nm=12.0, pixels=24, dwell_s=dwell_s) for _ in range(20)]
    expected = 0.5 * image[0:24, 4:28]
    stack = np.stack([r.data for r in recs])
    assert np.all(stack == np.round(stack)) and stack.min() >= 0
    # mean over 20 frames within 4 standard errors per pixel on average, and Poisson variance
    z = (stack.mean(axis=0) - expected) / np.sqrt(expected / len(recs))
    assert abs(z.mean()) < 0.2 and 0.8 < z.std() < 1.2
    normalised_var = stack.var(axis=0, ddof=1) / expected
    assert normalised_var.mean() == pytest.approx(1.0, abs=0.05)
    again = ReplayMicroscope(dataset_path, seed=3)
    again.unblank_beam()
    again.move_stage(108.0, -34.0)
    np.testing.assert_array_equal(
        again.acquire_image(fov_nm=12.0, pixels=24, dwell_s=dwell_s).data, recs[0].data
    )


def test_spectrum_window_is_cut_from_nearest_pixel(dataset_path):
    _, spectra = _dataset()
    scope = ReplayMicroscope(dataset_path, poisson=False)
    scope.unblank_beam()
    # (x, y) = (103.2, -36.9) lies in column 6, row 6 of the recording
    rec = scope.acquire_spectrum(103.2, -36.9, dwell_s=0.05, energy_min_eV=1.0, energy_max_eV=4.0)
    assert rec.counts.shape == (30,)
    assert rec.energy_offset_eV == pytest.approx(1.0) and rec.dispersion_eV == DISPERSION_EV
    np.testing.assert_allclose(rec.counts, 5.0 * spectra[6, 6, 30:60], rtol=1e-12)
    np.testing.assert_allclose(rec.energy_eV, np.linspace(1.0, 3.9, 30), atol=1e-9)
    # the loss peak sits where that pixel put it: 2 + 0.05·6 + 0.02·6 = 2.42 eV
    assert rec.energy_eV[np.argmax(rec.counts)] == pytest.approx(2.42, abs=0.051)


def test_spectrum_poisson_mean(dataset_path):
    _, spectra = _dataset()
    scope = ReplayMicroscope(dataset_path, seed=11)
    scope.unblank_beam()
    stack = np.stack(
        [
            scope.acquire_spectrum(110.1, -30.2, 0.02, OFFSET_EV, OFFSET_EV + E * DISPERSION_EV).counts
            for _ in range(50)
        ]
    )
    expected = 2.0 * spectra[19, 20]
    z = (stack.mean(axis=0) - expected) / np.sqrt(expected / 50)
    assert abs(z.mean()) < 0.3 and 0.75 < z.std() < 1.25


def test_requests_outside_the_data_name_the_field(dataset_path):
    scope = ReplayMicroscope(dataset_path)
    scope.unblank_beam()
    with pytest.raises(InvalidRequest) as exc:
        scope.acquire_spectrum(99.0, -35.0, 0.01, 0.0, 5.0)
    assert exc.value.field == "x_nm"
    with pytest.raises(InvalidRequest) as exc:
        scope.acquire_spectrum(105.0, -27.0, 0.01, 0.0, 5.0)
    assert exc.value.field == "y_nm"
    with pytest.raises(InvalidRequest) as exc:
        scope.acquire_spectrum(105.0, -35.0, 0.01, 0.0, 50.0)
    assert exc.value.field == "energy_max_eV"
    with pytest.raises(InvalidRequest) as exc:
        scope.move_stage(120.0, -35.0)
    assert exc.value.field == "x_nm"
    with pytest.raises(InvalidRequest) as exc:
        scope.acquire_image(fov_nm=40.0, pixels=16, dwell_s=1e-6)
    assert exc.value.field == "fov_nm"
    with pytest.raises(InvalidRequest) as exc:
        scope.acquire_image(fov_nm=4.0, pixels=16, dwell_s=1e-6, detector="bf")
    assert exc.value.field == "detector"
