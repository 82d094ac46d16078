"""Ground truth of hypotheses (evals/truth.py): geometry from the oracle, physics from the noise-free twin."""

from __future__ import annotations

import logging
import math
from collections import Counter

import numpy as np
import pytest

from autoscope.evals.truth import (
    goal_truth_plasmonic,
    hypothesis_truth,
    interface_signed_distance,
    particle_sdf,
    true_area_classes,
    true_sites,
)
from autoscope.instruments.sim.oracle import Oracle
from autoscope.instruments.sim.scenarios import make_microscope
from autoscope.tools.campaign import default_campaign_path, load_campaign
from autoscope.tools.grounding.classes import key_radius_nm
from autoscope.tools.ml.descriptors import PatchSpec
from autoscope.tools.ml.scalarizers import BandIntensity, EdgeOnset, PeakRatio
from autoscope.tools.plan import Hypothesis
from autoscope.tools.predictions import Contrast, LocalizedAt, Shift, Trend, Uniform

log = logging.getLogger(__name__)

PLASMONIC = {"spectrum_dwell_s": 0.02, "energy_min_eV": -1.0, "energy_max_eV": 4.0}
TMD = {"spectrum_dwell_s": 0.2, "energy_min_eV": 480.0, "energy_max_eV": 600.0}
OXIDE = {"spectrum_dwell_s": 0.1, "energy_min_eV": 430.0, "energy_max_eV": 480.0}
O_K = BandIntensity(
    lo_eV=530, hi_eV=560, background="power_law", pre_lo_eV=490, pre_hi_eV=525, normalize="dose"
)
TI_L3 = EdgeOnset(lo_eV=450, hi_eV=470, pre_lo_eV=435, pre_hi_eV=450, fraction=0.1)


def hyp(signal, prediction) -> Hypothesis:
    return Hypothesis(
        statement="a hypothesis under test",
        signal=signal,
        patch=PatchSpec(),
        expected="the claim holds",
        refuted_if="the claim fails",
        prediction=prediction,
    )


def survey(name: str, fov_nm: float, dwell_s: float):
    scope = make_microscope(name, seed=0)
    scope.unblank_beam()
    return scope.acquire_image(fov_nm, 256, dwell_s)


@pytest.fixture(scope="module")
def plasmonic_survey():
    return survey("plasmonic", 1000.0, 4e-6)


@pytest.fixture(scope="module")
def band():
    return load_campaign(default_campaign_path("plasmonic")).scalarizer


# ---------------------------------------------------------------------- geometry
def test_area_classes_of_a_synthetic_rod_and_triangle():
    rod = {
        "kind": "rod",
        "center_nm": [0.0, 0.0],
        "orientation_deg": 90.0,
        "size_nm": 100.0,
        "width_nm": 20.0,
    }
    tri = {"kind": "triangle", "size_nm": 100.0, "outline_nm": [[500, 0], [600, 0], [550, 50 * math.sqrt(3)]]}
    truth = {"particles": [rod, tri]}
    pts = {
        (0, 52): "rod_tip",  # 2 nm beyond the tip, on the axis
        (0, 0): "rod_side",
        (15, 0): "rod_side",  # 5 nm outside the long side
        (35, 0): "unassigned",  # beyond the near margin, inside the clearance
        (200, 0): "substrate",
        (501, 1): "triangle_corner",
        (550, 2): "triangle_edge",
        (550, 30): "triangle_face",
    }
    got = true_area_classes(truth, np.array(list(pts), float))
    assert dict(zip(pts, got, strict=True)) == pts
    # exact capsule distance: 2 nm past the tip, 5 nm past the side
    assert particle_sdf(rod, np.array([[0.0, 52.0], [15.0, 0.0]])) == pytest.approx([2.0, 5.0])


def test_area_classes_of_the_true_plasmonic_sample():
    truth = Oracle(make_microscope("plasmonic", seed=0)).truth()
    rod = next(p for p in truth["particles"] if p["kind"] == "rod")
    a = math.radians(rod["orientation_deg"])
    u = np.array([math.cos(a), math.sin(a)])
    tip_out = np.asarray(rod["center_nm"]) + (rod["size_nm"] / 2 + 2.0) * u
    far = np.array([1500.0, 0.0])
    dmin = min(float(particle_sdf(p, far[None])[0]) for p in truth["particles"])
    assert dmin >= 300.0
    assert list(true_area_classes(truth, np.stack([tip_out, far]))) == ["rod_tip", "substrate"]
    assert key_radius_nm(rod["size_nm"]) >= 12.0


def test_interface_sides_and_signed_distance():
    a = 0.4
    profile = {"y_nm": list(np.arange(-10, 10, a)), "interface_x_nm": [0.0] * 25 + [2.0] * 25}
    xy = np.array([[-5.0, -8.0], [5.0, -8.0], [1.0, -8.0], [-1.0, 8.0], [5.0, 8.0]])
    assert list(true_area_classes({"interface_profile": profile}, xy)) == [
        "bright_side",
        "dim_side",
        "interface",
        "bright_side",  # 3 nm left of the stepped-out interface at x = 2
        "dim_side",
    ]
    d = interface_signed_distance(profile, xy)
    assert d[:2] == pytest.approx([-5.0, 5.0])
    assert d[3] == pytest.approx(-3.0)


def test_true_sites_match_the_seeded_defects():
    oracle = Oracle(make_microscope("tmd-defects", seed=0))
    truth, sample = oracle.truth(), oracle._sample
    kinds = Counter(d["type"] for d in truth["defects"])
    n = {c: len(true_sites(truth, c, sample)) for c in ("bright_site_brighter", "dim_site_dimmer")}
    assert n["bright_site_brighter"] == kinds["W_Mo"]
    assert n["dim_site_dimmer"] == kinds["O_S"] + kinds["V_S"] + kinds["V_S2"]
    assert len(true_sites(truth, "dim_site_brighter", sample)) == kinds["Se_S"]
    assert len(true_sites(truth, "sublattice_bright", sample)) == truth["n_metal_columns"] - kinds["W_Mo"]
    inner = true_sites(truth, "sublattice_dim", sample, field=((0.0, 0.0), 8.0))
    assert len(inner) and np.abs(inner).max() <= 3.7 + 1e-9


# ---------------------------------------------------------------------- physics
def test_plasmonic_band_is_localized_at_rod_tips(plasmonic_survey, band):
    at_tip = hypothesis_truth(
        hyp(band, LocalizedAt(at="rod_tip", versus="substrate", min_ratio=2.0)),
        "plasmonic",
        0,
        plasmonic_survey,
        **PLASMONIC,
    )
    log.info("rod_tip vs substrate: %s", at_tip)
    assert at_tip.holds and at_tip.effect > 0
    assert at_tip.means["rod_tip"] > 5 * at_tip.means["substrate"] > 0
    assert at_tip.members["substrate"] > at_tip.evaluated["substrate"] == 400
    assert at_tip.non_finite == {"rod_tip": 0, "substrate": 0}
    reverse = hypothesis_truth(
        hyp(band, LocalizedAt(at="substrate", versus="rod_tip")),
        "plasmonic",
        0,
        plasmonic_survey,
        **PLASMONIC,
    )
    assert not reverse.holds
    same = hypothesis_truth(
        hyp(band, Uniform(over=["rod_tip", "substrate"])), "plasmonic", 0, plasmonic_survey, **PLASMONIC
    )
    assert not same.holds and same.means == pytest.approx(at_tip.means)


def test_flipping_a_claim_flips_holds(plasmonic_survey, band):
    kw = {"max_points": 150, **PLASMONIC}
    up = hypothesis_truth(
        hyp(band, Contrast(a="rod_tip", b="rod_side")), "plasmonic", 0, plasmonic_survey, **kw
    )
    down = hypothesis_truth(
        hyp(band, Contrast(a="rod_tip", b="rod_side", direction="lower")),
        "plasmonic",
        0,
        plasmonic_survey,
        **kw,
    )
    log.info("contrast rod_tip/rod_side: %s / %s", up.effect, down.effect)
    assert up.holds and not down.holds
    rising = Trend(over="rod_tip", covariate="aspect_ratio", sign="increasing")
    falling = rising.model_copy(update={"sign": "decreasing"})
    t_up = hypothesis_truth(hyp(band, rising), "plasmonic", 0, plasmonic_survey, **kw)
    t_down = hypothesis_truth(hyp(band, falling), "plasmonic", 0, plasmonic_survey, **kw)
    log.info("rod-tip band vs aspect ratio: rho %s", t_up.trend_rho)
    assert t_up.holds and not t_down.holds and t_up.effect == pytest.approx(-t_down.effect)


def test_plasmonic_goal_truth(plasmonic_survey, band):
    scope = make_microscope("plasmonic", seed=0)
    hosts, means = goal_truth_plasmonic(Oracle(scope).truth(), scope, plasmonic_survey, band, **PLASMONIC)
    log.info("hosts %s, means %s", hosts, means)
    assert set(hosts) == {"rod", "triangle", "cube"}
    assert hosts["rod"] and means["rod_tip"] >= 2 * means["substrate"]
    keys = {"rod": "rod_tip", "triangle": "triangle_corner", "cube": "cube_corner"}
    assert all(hosts[s] == (means[k] >= 2 * means["substrate"]) for s, k in keys.items())


def test_non_finite_values_are_dropped_and_counted(plasmonic_survey):
    # below the linear baseline of a convex tail, band B is ≤ 0 and the ratio NaN at some points
    ratio = PeakRatio(a_lo_eV=1.1, a_hi_eV=1.7, b_lo_eV=2.0, b_hi_eV=2.5, background="linear")
    logging.getLogger("autoscope.tools.ml.scalarizers").setLevel(logging.ERROR)
    t = hypothesis_truth(
        hyp(ratio, LocalizedAt(at="rod_tip", versus="substrate")),
        "plasmonic",
        0,
        plasmonic_survey,
        max_points=100,
        **PLASMONIC,
    )
    assert t.non_finite["rod_tip"] > 0 and math.isfinite(t.means["rod_tip"])


def test_tmd_oxygen_is_localized_at_dimmer_sites():
    img = survey("tmd-defects", 8.0, 8e-6)
    dimmer = hypothesis_truth(
        hyp(O_K, LocalizedAt(at="dim_site_dimmer", versus="sublattice_dim")), "tmd-defects", 0, img, **TMD
    )
    regular = hypothesis_truth(
        hyp(O_K, LocalizedAt(at="sublattice_bright", versus="sublattice_dim")), "tmd-defects", 0, img, **TMD
    )
    log.info("O K dimmer: %s; regular: %s", dimmer, regular)
    assert dimmer.holds and dimmer.means["dim_site_dimmer"] > 0
    assert not regular.holds  # no O on regular columns: both means are background residuals → 0
    assert set(regular.zeroed) == {"sublattice_bright", "sublattice_dim"}


def test_oxide_ti_onset_shifts_up_on_the_dim_side():
    img = survey("oxide-interface", 30.0, 4e-6)
    truth = Oracle(make_microscope("oxide-interface", seed=0)).truth()
    claim = Shift(a="bright_side", b="dim_side", direction="up", min_shift_eV=1.0)
    one = hypothesis_truth(hyp(TI_L3, claim), "oxide-interface", 0, img, max_points=200, **OXIDE)
    three = hypothesis_truth(
        hyp(TI_L3, claim.model_copy(update={"min_shift_eV": 3.0})),
        "oxide-interface",
        0,
        img,
        max_points=200,
        **OXIDE,
    )
    shift = one.effect + 1.0
    log.info("Ti L3 shift %.3f eV (twin: %.3f eV), means %s", shift, truth["onset_shift_eV"], one.means)
    assert one.holds and not three.holds
    assert shift == pytest.approx(truth["onset_shift_eV"], abs=0.15)
