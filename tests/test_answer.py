"""The answer to the goal: which particle shapes host a signal, by the question's own criterion."""

from __future__ import annotations

from autoscope.agents.answer import HOST_MIN_RATIO, goal_answer, shape_hosts


def est(cls: str, n: int, mean: float, sd: float) -> dict:
    return {"cls": cls, "n": n, "mean": mean, "sd": sd, "df": n - 1}


def hyp(min_ratio: float, signal: dict | None = None, kind: str = "localized_at") -> dict:
    pred = {"kind": kind, "at": "rod_tip", "versus": "substrate", "min_ratio": min_ratio}
    if kind != "localized_at":
        pred = {"kind": kind, "a": "rod_tip", "b": "substrate", "min_ratio": min_ratio}
    return {
        "id": "H1",
        "statement": "tips",
        "signal": signal or {"kind": "band_intensity", "lo_eV": 1.1, "hi_eV": 1.7},
        "prediction": pred,
    }


def verdict(*ests: dict) -> dict:
    return {
        "outcome": "supported",
        "claim": "band at rod_tip is at least 1.5× at substrate",
        "by_class": list(ests),
    }


def test_the_host_criterion_is_the_questions_not_the_hypothesis_factor() -> None:
    """A cube corner at 1.6× the substrate (tight interval) does not host a band by the goal's 2×,
    although the hypothesis framed its own claim with 1.5×."""
    assert HOST_MIN_RATIO == 2.0
    v = verdict(
        est("substrate", 20, 1.0, 0.05),
        est("rod_tip", 20, 10.0, 1.0),
        est("cube_corner", 20, 1.6, 0.05),
        est("triangle_corner", 20, 2.0, 1.5),
    )
    hosts = shape_hosts(v, hyp(1.5))
    assert hosts["rod"]["hosts"] == "yes" and hosts["rod"]["min_ratio"] == HOST_MIN_RATIO
    assert hosts["cube"]["hosts"] == "no", hosts["cube"]
    assert 1.5 < hosts["cube"]["ratio_ci"][0] < hosts["cube"]["ratio_ci"][1] < HOST_MIN_RATIO
    assert hosts["triangle"]["hosts"] == "undecided"  # 2.0× with a wide interval
    # the same verdict under a hypothesis with a 3× factor gives the same answer
    assert shape_hosts(v, hyp(3.0)) == hosts
    text = goal_answer("which shapes host it", [{"hypothesis": hyp(1.5), "verdict": v}])["text"]
    assert "rods (rod_tip: 10×" in text and "cubes (cube_corner: 1.6×" in text and "do not" in text
    assert "undecided for triangles" in text


def test_rounds_on_the_same_signal_are_pooled_and_others_are_not() -> None:
    band = {"kind": "band_intensity", "lo_eV": 1.1, "hi_eV": 1.7}
    other = {"kind": "band_intensity", "lo_eV": 2.3, "hi_eV": 2.8}
    r1 = {
        "hypothesis": hyp(2.0, band),
        "verdict": verdict(est("substrate", 3, 1.0, 0.1), est("cube_corner", 3, 1.2, 0.1)),
    }
    r2 = {
        "hypothesis": hyp(2.0, band),
        "verdict": verdict(est("substrate", 4, 1.0, 0.1), est("cube_corner", 4, 1.3, 0.1)),
    }
    r3 = {
        "hypothesis": hyp(2.0, other),
        "verdict": verdict(est("substrate", 9, 5.0, 0.1), est("cube_corner", 9, 50.0, 1.0)),
    }
    hosts = shape_hosts(r1["verdict"], r1["hypothesis"], [r1, r2, r3])
    assert hosts["cube"]["n"] == 7
    assert abs(hosts["cube"]["ratio"] - (3 * 1.2 + 4 * 1.3) / 7) < 1e-9
    assert hosts["cube"]["hosts"] == "no"


def test_no_shape_answer_without_a_substrate_comparison() -> None:
    v = verdict(est("substrate", 5, 1.0, 0.1), est("rod_tip", 5, 9.0, 0.5))
    assert shape_hosts(v, hyp(2.0, kind="contrast")) is None
    assert shape_hosts(verdict(est("rod_tip", 5, 9.0, 0.5)), hyp(2.0)) is None
    out = goal_answer("g", [{"hypothesis": hyp(2.0), "verdict": {}}])
    assert out["hosts"] is None and "not answered" in out["text"]
