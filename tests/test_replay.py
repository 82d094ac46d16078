"""Replay backend: dataset round trips and the statistics of replayed acquisitions."""

from __future__ import annotations

import numpy as np
import pytest

from autoscope.instruments.errors import InvalidRequest
from autoscope.instruments.replay import (
    NoiseModel,
    ReplayMicroscope,
    SpectrumImage,
    choose_noise,
    load_spectrum_image,
    save_spectrum_image,
)

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
        # the synthetic recording holds expectations: a replay draws Poisson counts about them
        image_noise=NoiseModel("poisson"),
        spectrum_noise=NoiseModel("poisson"),
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


def _counts_recording(lam: np.ndarray, rng, **noise) -> SpectrumImage:
    """A recording of whole counts drawn at expectation ``lam`` (H, W), one channel per pixel."""
    image = rng.poisson(lam).astype(np.float64)
    return SpectrumImage(image, image[..., None].copy(), 1.0, 0.0, 1.0, 1e-3, 1e-3, 10.0, **noise)


def test_thinning_is_poisson_at_the_lower_dose_without_counting_the_recorded_noise_twice():
    """A recording of Poisson(λ) counts replayed at dose s ≤ 1: mean sλ and variance sλ across the
    recordings (binomial thinning), where Poisson resampling of the recorded counts gives sλ + s²λ."""
    rng = np.random.default_rng(0)
    lam, s, n = 400.0, 0.5, 4000
    m = NoiseModel("poisson")
    recorded = rng.poisson(lam, n).astype(np.float64)
    thinned = m.resample(recorded, s, np.random.default_rng(1))
    assert thinned.mean() == pytest.approx(s * lam, rel=0.01)
    assert thinned.var() == pytest.approx(s * lam, rel=0.08)  # Poisson at the lower dose
    doubled = np.random.default_rng(1).poisson(s * recorded)
    assert doubled.var() == pytest.approx(s * lam + s * s * lam, rel=0.08)  # what the old replay did
    # above the recorded dose the counts are scaled: nothing is drawn on top of the recorded noise
    np.testing.assert_allclose(m.resample(recorded, 3.0, np.random.default_rng(2)), 3.0 * recorded)
    # a detector with a black level and a gain: the offset stays, the counts are thinned
    det = NoiseModel("poisson", gain=4.0, offset=1000.0)
    values = 1000.0 + 4.0 * recorded
    out = det.resample(values, s, np.random.default_rng(1))
    np.testing.assert_allclose(out, 1000.0 + 4.0 * thinned)


def test_signed_data_are_kept_and_the_noise_model_says_why():
    signed = np.array([[-3.0, 5.0], [10.0, 2.0]])
    m = choose_noise(signed, "spectra")
    assert m.kind == "none" and "negative" in m.why
    np.testing.assert_allclose(m.resample(signed, 0.5, np.random.default_rng(0)), 0.5 * signed)
    assert choose_noise(np.array([1.0, 2.0, 7.0]), "image").kind == "poisson"
    assert choose_noise(np.array([1.5, 2.0, 7.0]), "image").kind == "none"
    assert "pedestal" in choose_noise(np.array([55000.0, 55100.0, 56000.0]), "image").why
    with pytest.raises(InvalidRequest, match="gain"):
        NoiseModel("poisson", gain=0.0)


def test_replayed_survey_warns_naming_the_scale_when_it_is_mostly_shot_noise(caplog):
    """At the recorded dwell the survey is the recording; at 1/1000 of it the replay warns with the
    expected correlation it predicts, and the measured correlation is near that prediction."""
    rng = np.random.default_rng(4)
    yy, xx = np.mgrid[0:32, 0:32]
    lam = 50.0 + 40.0 * np.sin(xx / 4.0) * np.cos(yy / 5.0)
    si = _counts_recording(lam, rng)
    scope = ReplayMicroscope(si, seed=0)
    assert scope.image_noise.kind == "poisson"
    scope.unblank_beam()
    same = scope.acquire_image(fov_nm=32.0, pixels=32, dwell_s=1e-3)
    np.testing.assert_array_equal(same.data, si.image)  # s = 1: thinning keeps every count
    with caplog.at_level("WARNING"):
        short = scope.acquire_image(fov_nm=32.0, pixels=32, dwell_s=1e-6)
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "0.001×" in text and "mostly shot noise" in text
    predicted = scope.image_noise.expected_correlation(si.image, 1e-3)
    measured = float(np.corrcoef(short.data.ravel(), si.image.ravel())[0, 1])
    assert predicted < 0.9 and measured == pytest.approx(predicted, abs=0.1)


def test_a_rectangular_recording_is_surveyed_over_its_whole_field_pixel_for_pixel():
    """41 rows × 50 columns (odd H − W): the default survey is the recorded scan itself, every
    candidate sits on its own recorded pixel, and they cover every pixel with a full patch."""
    from autoscope.instruments.factory import survey_defaults
    from autoscope.tools.ml.descriptors import candidate_grid
    from autoscope.tools.survey import SurveyPlan

    rng = np.random.default_rng(9)
    h, w, e = 41, 50, 16
    lam = 30.0 + 20.0 * rng.random((h, w))
    image = rng.poisson(lam).astype(np.float64)
    spectra = rng.poisson(np.repeat(lam[..., None], e, axis=2)).astype(np.float64)
    si = SpectrumImage(
        image, spectra, 2.0, 100.0, 1.0, 1e-4, 0.01, 50.0, origin_x_nm=-50.0, origin_y_nm=-41.0
    )
    scope = ReplayMicroscope(si, seed=0)
    caps = scope.capabilities()
    d = survey_defaults(caps, max_current_pA=25.0)
    plan = SurveyPlan(**{**d, "spectra": 0})
    assert (plan.pixels, plan.rows, plan.fov_nm, plan.fov_y_nm) == (50, 41, 100.0, 82.0)
    assert d["current_pA"] == 25.0 and d["dwell_s"] == pytest.approx(2e-4)  # same electrons per pixel
    plan.check_against(caps, scope.stage_position_nm())  # the whole field fits the recorded stage box
    scope.set_beam_current(plan.current_pA)
    scope.unblank_beam()
    survey = scope.acquire_image(plan.fov_nm, plan.pixels, plan.dwell_s, rows=plan.rows)
    assert survey.data.shape == (41, 50) and (survey.fov_y_nm, survey.area_nm2) == (82.0, 8200.0)
    np.testing.assert_array_equal(survey.data, image)  # scale 1: thinning keeps every recorded count
    window = 5
    grid = candidate_grid(survey, 1, window // 2)
    half = window // 2
    full = [(r, c) for r in range(h) for c in range(w) if half <= r < h - half and half <= c < w - half]
    cands = set(zip(grid.rows.tolist(), grid.cols.tolist(), strict=True))
    assert len(cands & set(full)) / len(full) >= 0.95
    # each candidate's spectrum is the one recorded at its own pixel (none shared, none shifted)
    for i in rng.choice(len(grid.rows), 60, replace=False):
        x, y = grid.xy_nm[i]
        rec = scope.acquire_spectrum(x, y, 0.02, 100.0, 100.0 + e)  # 25 pA × 0.02 s = the recorded dose
        np.testing.assert_array_equal(rec.counts, spectra[grid.rows[i], grid.cols[i]])
