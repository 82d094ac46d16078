"""Candidate grids and patch descriptors of the active-learning engine, on twin images."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from autoscope.instruments.sim.config import SimConfig
from autoscope.instruments.sim.scenarios import make_microscope
from autoscope.tools.ml.descriptors import (
    PatchFeaturizer,
    PatchSpec,
    candidate_grid,
    extract_patches,
    in_field,
    patches_at_nm,
    ring_harmonics,
)

STILL = SimConfig(drift_velocity_nm_per_s=(0.0, 0.0), drift_random_walk_nm_per_sqrt_s=0.0, line_jitter_px=0.0)


@pytest.fixture(scope="module")
def images():
    """Two images of the same plasmonic field at the same dose, and one at 20× the dose."""
    m = make_microscope("plasmonic", seed=5, config=STILL)
    m.unblank_beam()
    a = m.acquire_image(1000.0, 128, 4e-6)
    b = m.acquire_image(1000.0, 128, 4e-6)
    c = m.acquire_image(1000.0, 128, 8e-5)
    return a, b, c


def test_candidate_grid_keeps_the_margin_and_maps_to_the_sample_frame(images):
    img = images[0]
    g = candidate_grid(img, stride_px=10, margin_px=8)
    assert len(g) == 12 * 12 and g.stride_px == 10
    for idx in (g.rows, g.cols):
        assert idx.min() >= 8 and idx.max() <= 127 - 8
        assert set(np.diff(np.unique(idx))) == {10}
        assert idx.min() - 8 in (127 - 8 - idx.max(), 127 - 8 - idx.max() - 1)  # centred
    k = 37
    assert g.xy_nm[k] == pytest.approx(img.pixel_to_nm(g.rows[k], g.cols[k]))
    with pytest.raises(ValueError, match="margin_px"):
        candidate_grid(img, 4, 64)


def test_shifted_grid_reaims_and_nearest_finds_candidates(images):
    g = candidate_grid(images[0], 16, 8)
    s = g.shifted(3.0, -2.0)
    assert np.array_equal(s.rows, g.rows) and np.array_equal(s.cols, g.cols)
    assert s.xy_nm - g.xy_nm == pytest.approx(np.tile([3.0, -2.0], (len(g), 1)))
    k = 20
    x, y = s.xy_nm[k]
    assert s.nearest(x + 1.0, y - 1.0) == k and g.nearest(*g.xy_nm[k]) == k


def test_patches_are_centred_and_reflect_padded():
    data = np.arange(20 * 30, dtype=float).reshape(20, 30)
    p = extract_patches(data, np.array([5, 0, 19]), np.array([7, 0, 29]), 5)
    assert p.shape == (3, 25) and p.dtype == np.float64
    assert np.array_equal(p[0].reshape(5, 5), data[3:8, 5:10])
    corner = p[1].reshape(5, 5)
    assert corner[2, 2] == data[0, 0] and corner[0, 0] == data[2, 2] and corner[2, 4] == data[0, 2]
    assert p[2].reshape(5, 5)[2, 2] == data[19, 29]
    even = extract_patches(data, np.array([10]), np.array([10]), 4).reshape(4, 4)
    assert even[2, 2] == data[10, 10]
    with pytest.raises(ValueError, match="outside"):
        extract_patches(data, np.array([20]), np.array([0]), 5)


def test_patches_at_nm_take_the_nearest_pixel(images):
    img = images[0]
    g = candidate_grid(img, 16, 8)
    p = img.pixel_size_nm
    jitter = np.array([0.3 * p, -0.4 * p])  # stays within half a pixel
    assert np.array_equal(
        patches_at_nm(img, g.xy_nm + jitter, 8), extract_patches(img.data, g.rows, g.cols, 8)
    )
    far = g.xy_nm[:3] + np.array([2000.0, 0.0])
    assert not in_field(img, far).any()
    with pytest.raises(ValueError, match="outside the image"):
        patches_at_nm(img, far, 8)


def test_featurizer_is_deterministic_and_orthonormal(images):
    img = images[0]
    g = candidate_grid(img, 4, 8)
    patches = extract_patches(img.data, g.rows, g.cols, 12)
    spec = PatchSpec(window_px=12, pca_components=10)
    f1 = PatchFeaturizer(spec).fit_transform(patches)
    f2 = PatchFeaturizer(spec).fit_transform(patches)
    assert f1.shape == (len(g), 10) and f1.dtype == np.float64
    assert np.array_equal(f1, f2)
    fz = PatchFeaturizer(spec).fit(patches)
    c = fz.components_
    assert c @ c.T == pytest.approx(np.eye(10), abs=1e-10)
    assert f1.mean(axis=0) == pytest.approx(np.zeros(10), abs=1e-9)
    assert np.all(np.diff(f1.var(axis=0)) <= 1e-9)  # variance ordered like the components
    few = PatchFeaturizer(spec).fit(patches[::40])  # fewer patches than pixels: Gram-matrix path
    assert few.components_ @ few.components_.T == pytest.approx(np.eye(10), abs=1e-8)
    z = (patches[::40] - patches[::40].mean()) / patches[::40].std()
    sv = np.linalg.svd(z - z.mean(axis=0), compute_uv=False)
    assert few.explained_variance_ratio_ == pytest.approx(sv[:10] ** 2 / (sv**2).sum(), rel=1e-8)
    raw = PatchFeaturizer(PatchSpec(window_px=12, pca_components=None)).fit_transform(patches)
    assert raw.shape == (len(g), 144)
    with pytest.raises(ValueError, match="window_px=12"):
        fz.transform(patches[:, :100])


def test_global_features_compare_across_images_at_the_same_dose_only(images):
    a, b, c = images
    g = candidate_grid(a, 4, 8)
    spec = PatchSpec(window_px=12, pca_components=8)
    fz = PatchFeaturizer(spec).fit(extract_patches(a.data, g.rows, g.cols, 12))
    fa, fb, fc = (fz.transform(extract_patches(im.data, g.rows, g.cols, 12)) for im in (a, b, c))
    spread = np.linalg.norm(fa - fa.mean(axis=0), axis=1).mean()
    same = np.linalg.norm(fa - fb, axis=1).mean()  # shot noise only
    other = np.linalg.norm(fa - fc, axis=1).mean()  # 20× the counts
    assert same < 0.3 * spread < other
    # per-patch normalisation ignores brightness and offset: only the shape counts
    pp = PatchFeaturizer(PatchSpec(window_px=12, normalize="per_patch", pca_components=8))
    patches = extract_patches(a.data, g.rows, g.cols, 12)
    ref = pp.fit_transform(patches)
    assert pp.transform(3.0 * patches + 50.0) == pytest.approx(ref, abs=1e-6)


def test_patch_spec_validates():
    with pytest.raises(ValidationError, match="window_px"):
        PatchSpec(window_px=1)
    with pytest.raises(ValidationError, match="normalize"):
        PatchSpec(normalize="local")
    assert PatchSpec.model_validate(PatchSpec(pca_components=None).model_dump()).pca_components is None


def _rod_patch(angle: float, offset_px: tuple[float, float], window: int = 17) -> np.ndarray:
    """A window×window patch of a bright rod (half-length 12 px, radius 3 px) rotated by ``angle``,
    sampled at the patch pixels with the patch centre at ``offset_px`` (along, across) in the rod frame."""
    c = window // 2
    r, q = np.mgrid[0:window, 0:window].astype(float)
    dy, dx = r - c, q - c
    u = offset_px[0] + dx * np.cos(angle) + dy * np.sin(angle)  # along the rod
    v = offset_px[1] - dx * np.sin(angle) + dy * np.cos(angle)
    d = np.hypot(np.clip(np.abs(u) - 12.0, 0.0, None), v) - 3.0  # capsule signed distance
    return (1.0 / (1.0 + np.exp(d / 0.7))).reshape(1, -1)


def test_ring_harmonics_ignore_orientation_but_see_shape():
    tip = (15.0, 0.0)  # just beyond the rod's end
    a, b = ring_harmonics(_rod_patch(0.0, tip), 17), ring_harmonics(_rod_patch(0.65, tip), 17)
    assert a.shape == (1, 1 + 8 * 7)
    scale = np.linalg.norm(a)
    assert np.linalg.norm(a - b) < 0.05 * scale  # rotated by 37°: nearly the same descriptor
    assert np.linalg.norm(_rod_patch(0.0, tip) - _rod_patch(0.65, tip)) > 0.3 * np.linalg.norm(
        _rod_patch(0.0, tip)
    )  # while the pixels differ a lot
    side = ring_harmonics(_rod_patch(0.0, (0.0, 6.0)), 17)  # beside the rod's middle
    assert np.linalg.norm(a - side) > 0.3 * scale
    # a 90° rotation permutes the ring samples exactly; the featurizer uses the same map
    patch = np.random.default_rng(0).normal(size=(1, 17 * 17))
    turned = np.rot90(patch.reshape(17, 17)).reshape(1, -1)
    assert ring_harmonics(turned, 17) == pytest.approx(ring_harmonics(patch, 17), abs=1e-9)
    spec = PatchSpec(window_px=17, descriptor="rings", pca_components=None)
    fz = PatchFeaturizer(spec).fit(np.vstack([patch, turned, 2 * patch]))
    assert fz.n_features == 57
    assert fz.transform(turned) == pytest.approx(fz.transform(patch), abs=1e-9)
