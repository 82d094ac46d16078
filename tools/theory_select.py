"""Theory in the loop, chosen by what a hypothesis says (never by the scenario's name).

- an energy signal over a core-loss edge (an edge onset, a shift): each class's mean onset
  against the literature edge table (``check_edge_energy``), and a theory value of a shift
  against the measured interval;
- a rod-dipole trend with the Gans law named: ``check_plasmon_scaling`` on the features;
- an intensity over a core-loss edge at the defect sites of a lattice: defect models ranked
  against the survey image at the site with the strongest signal (``rank_at``), when a
  structure model exists for the lattice (MoS2's nearest-neighbour distance).
Each tool's cost estimate is logged before it runs; a tool that fails is evidence missing,
never a failed run.
"""

from __future__ import annotations

import logging
import math

from autoscope.instruments.records import ImageRecord
from autoscope.theory.compare import EDGE_TABLE, check_edge_energy, check_plasmon_scaling
from autoscope.tools.grounding.classes import CLASS_GROUPS, members
from autoscope.tools.plan import Hypothesis
from autoscope.tools.predictions import Shift, Trend

log = logging.getLogger(__name__)
#: projected Mo–S distance of 1H-MoS2 (nm): the lattice the defect-model tool can build
MOS2_NN_NM = 0.3160 / math.sqrt(3)


def edges_in(signal) -> list:
    """Literature edges whose onset lies in (or up to 5 eV below) the band a signal reads."""
    s = signal.model_dump()
    lo, hi = s.get("lo_eV"), s.get("hi_eV")
    if lo is None:
        return []
    return [r for r in EDGE_TABLE if lo - 5 <= r.onset_eV <= hi]


def theory_evidence(
    h: Hypothesis, strata: dict, smap, survey: ImageRecord, features
) -> tuple[list[str], dict | None]:
    """Evidence lines and a JSON record of the theory tools the hypothesis' content calls for."""
    lines: list[str] = []
    record: dict = {}
    edges = edges_in(h.signal)
    p = h.prediction
    if edges and h.signal.kind == "edge_onset":
        ref = edges[0]
        checks = {}
        for cls, vals in strata.items():
            ys = [v.value for v in vals if v.value == v.value]
            if ys:
                chk = check_edge_energy(sum(ys) / len(ys), ref.element, ref.edge, tolerance_eV=1.0)
                checks[cls] = chk.model_dump(mode="json")
                lines.append(f"theory ({cls}, mean onset): {chk.statement}")
        record["check_edge_energy"] = checks
    if isinstance(p, Shift) and p.expected_eV is not None:
        a = [v.value for v in strata.get(p.a, []) if v.value == v.value]
        b = [v.value for v in strata.get(p.b, []) if v.value == v.value]
        if a and b:
            d = sum(b) / len(b) - sum(a) / len(a)
            lines.append(f"theory: expected shift {p.expected_eV:+.2f} eV, measured {d:+.2f} eV")
            record["expected_shift_eV"] = {"expected": p.expected_eV, "measured": d}
    if isinstance(p, Trend) and p.law == "gans_rod_dipole" and h.signal.kind == "peak_position":
        good = [(c, e) for c, e in features if c >= 1 and e > 0]
        if len(good) >= 3:
            chk = check_plasmon_scaling([c for c, _ in good], [e for _, e in good])
            lines.append(f"theory: {chk.statement}")
            record["check_plasmon_scaling"] = chk.model_dump(mode="json")
    named = set()
    for c in p.classes():
        if c != "elsewhere":
            named.update(members(c))
    defect_classes = named & set(CLASS_GROUPS["defect_site"])
    if edges and h.signal.kind == "band_intensity" and defect_classes and smap.lattice is not None:
        lines_r, rec = _rank(edges[0].element, sorted(defect_classes), strata, smap, survey)
        lines += lines_r
        if rec:
            record["rank_at"] = rec
    return lines, (record or None)


def identity_wins(
    p, smap, survey: ImageRecord, rng_seed: int = 0, max_sites: int = 24
) -> list[tuple[float, float, float]]:
    """(x_nm, y_nm, won) for the sites of an identity claim's class: the defect-model ranking on the
    survey image picks the named model at the site, at least 2σ above every alternative (1), or not (0)."""
    import numpy as np

    from autoscope.instruments.errors import InvalidRequest
    from autoscope.theory.structures import DefectSpec
    from autoscope.tools.theory import RankRequest, rank_at

    pts = [xy for c in members(p.at) for xy in smap.site_positions(c)]
    if smap.lattice is None or abs(smap.lattice.nn_distance_nm - MOS2_NN_NM) > 0.08 * MOS2_NN_NM:
        return []
    if len(pts) > max_sites:
        pick = np.random.default_rng(rng_seed).choice(len(pts), max_sites, replace=False)
        pts = [pts[i] for i in sorted(pick)]
    out = []
    defect = DefectSpec(kind="substitution", host=p.host, species=p.species)
    for x, y in pts:
        try:
            req = RankRequest(x_nm=float(x), y_nm=float(y), defect=defect, patch_nm=1.2)
            r = rank_at(survey, req).result
        except (InvalidRequest, ValueError) as exc:  # near the border, or a host the model lacks there
            log.info("identity: no ranking at (%.2f, %.2f) nm: %s", x, y, exc)
            continue
        at_site = next(
            i for i, label in enumerate(r.labels) if label.startswith(f"{defect.label}@")
        )  # nearest
        won = r.best_index == at_site and (r.margin_sigma or 0.0) >= 2.0
        out.append((float(x), float(y), 1.0 if won else 0.0))
    return out


def _rank(element: str, classes: list[str], strata: dict, smap, survey: ImageRecord):
    if abs(smap.lattice.nn_distance_nm - MOS2_NN_NM) > 0.08 * MOS2_NN_NM:
        return [
            f"theory: no structure model for a lattice of {smap.lattice.nn_distance_nm:.3f} nm spacing"
        ], None
    from autoscope.theory.structures import DefectSpec
    from autoscope.tools.theory import RankRequest, rank_at, rank_cost

    vals = sorted(
        (v for c in classes for v in strata.get(c, []) if v.value == v.value), key=lambda v: -v.value
    )
    host = "Mo" if any(c.startswith("bright") for c in classes) else "S"
    from autoscope.instruments.errors import InvalidRequest

    for best in vals:  # the strongest site whose patch lies inside the survey image
        req = RankRequest(
            x_nm=best.x_nm, y_nm=best.y_nm, defect=DefectSpec(kind="substitution", host=host, species=element)
        )
        try:
            log.info("theory: ranking defect models, estimated %.2f s", rank_cost(survey, req).seconds)
            r = rank_at(survey, req).result
            break
        except InvalidRequest:
            continue
        except Exception as exc:  # noqa: BLE001 - a theory tool failing is evidence missing, not a failed run
            log.warning("theory ranking failed: %s", exc)
            return [f"theory: ranking at ({best.x_nm:.2f}, {best.y_nm:.2f}) nm failed: {exc}"], None
    else:
        return ["theory: no measured site lies far enough inside the image to rank defect models"], None
    return [f"theory (defect models at the strongest {element} site, {best.step_id}): {r.statement}"], {
        "position_nm": [best.x_nm, best.y_nm],
        "labels": r.labels,
        "scores": r.scores,
        "best": r.best_label,
    }
