"""The deterministic planner: hypotheses and plans from the survey map, without an LLM, and it says so.

It is the ``--llm none`` backend and the fallback when an LLM's answer cannot be repaired.
Hypotheses come from the grounding, never from a fixed list: the goal's signal (the
campaign template's scalarizer) tested at the feature class where the survey spectra show
it strongest, a falsifiable control at the class where they show it weakest, each peak
or edge found in the survey spectra at the class it appeared on, and trends with the
structure (a rod dipole against aspect ratio, an onset against the distance to an
interface). On stacked flakes, the signal on the flakes against the bare film, then
whether it grows with the flakes stacked. Z-contrast orders the lattice classes: a light element's edge is looked for
first at the columns that are dimmer than their sublattice. A hypothesis already tested
in the run is never proposed again. Plans reuse the run's survey, give the verdict an
audit (or site spectra) over the hypothesis' classes and the rest of the round's share to
the active scan that maps the signal.
"""

from __future__ import annotations

import math

import numpy as np
from pymatgen.core import Element

from autoscope.agents.answer import answer_classes
from autoscope.agents.run_spec import RunSpec
from autoscope.instruments.records import Capabilities
from autoscope.tools.grounding.classes import KEY_CLASSES, SITE_CLASSES
from autoscope.tools.grounding.model import SurveyMap
from autoscope.tools.ml.scalarizers import BandIntensity, EdgeOnset, PeakPosition
from autoscope.tools.plan import (
    ActiveScanStep,
    AuditStep,
    Hypothesis,
    InterventionRule,
    Plan,
    SeedStep,
    SitesStep,
    StopCondition,
    SurveyStep,
    signal_window,
    verdict_strata,
)
from autoscope.tools.predictions import Contrast, LocalizedAt, Shift, Trend, Uniform
from autoscope.tools.theory_select import edges_in

AUTHOR = "deterministic planner (no LLM)"
#: share of a round's spectra for the verdict's audit or site steps (the rest maps the signal): the
#: verdict and the answer to the goal come from these alone
AUDIT_SHARE = 0.7
MIN_PER_CLASS = 6
#: repeats of a spectrum on one site, at most (a small class of sites gets its share this way)
MAX_REPEATS = 4


def _survey_signal(smap: SurveyMap, spectra, signal) -> dict[str, float]:
    """The signal of each survey spectrum, by the class it sits on (mean when several)."""
    out: dict[str, list[float]] = {}
    for s, rec in zip(smap.spectra, spectra, strict=False):
        try:
            y = float(signal(rec))
        except ValueError:
            continue
        if math.isfinite(y):
            out.setdefault(s.cls, []).append(y)
    return {c: float(np.mean(v)) for c, v in out.items()}


def _edge_element(signal) -> str | None:
    refs = edges_in(signal)
    return refs[0].element if refs else None


def _hyp(statement: str, signal, prediction, patch, expected: str, refuted_if: str) -> Hypothesis:
    return Hypothesis(
        statement=statement,
        signal=signal,
        patch=patch,
        expected=expected,
        refuted_if=refuted_if,
        prediction=prediction,
        author=AUTHOR,
    )


def candidates(spec: RunSpec, smap: SurveyMap, present: dict[str, int], survey_spectra) -> list[Hypothesis]:
    """Every hypothesis the map supports, best-grounded first."""
    tpl = spec.template
    sig, patch = tpl.scalarizer, tpl.patch
    seen = _survey_signal(smap, survey_spectra, sig)
    out: list[Hypothesis] = []
    keys = [c for c in ("rod_tip", "triangle_corner", "cube_corner") if present.get(c, 0) >= 2]
    if keys and present.get("substrate"):
        ref = seen.get("substrate")
        score = {c: (seen.get(c, 0.0) / ref if ref and ref > 0 else seen.get(c, 0.0)) for c in keys}
        order = sorted(keys, key=lambda c: -score[c])
        best, worst = order[0], order[-1]
        out.append(
            _hyp(
                f"{sig.describe()} is localized at {best}: at least twice as strong as on the substrate",
                sig,
                LocalizedAt(at=best, versus="substrate", min_ratio=2.0),
                patch,
                f"the signal at {best} is several times that on the substrate",
                f"the signal at {best} is less than twice that on the substrate",
            )
        )
        if worst != best:
            out.append(
                _hyp(
                    f"Control: {sig.describe()} at {worst} is no stronger than on the substrate (within 2×)",
                    sig,
                    Uniform(over=[worst, "substrate"], max_ratio=2.0),
                    patch,
                    f"{worst} and the substrate carry the same signal within a factor 2",
                    f"{worst} carries more than twice (or less than half) the substrate's signal",
                )
            )
        for s in smap.spectra:
            if s.cls not in keys:
                continue
            for pk in s.peaks:
                if 0.5 < pk.energy_eV < 3.5 and not (
                    sig.model_dump().get("lo_eV", 0) <= pk.energy_eV <= sig.model_dump().get("hi_eV", 0)
                ):
                    band = BandIntensity(
                        lo_eV=round(pk.energy_eV - 0.25, 2), hi_eV=round(pk.energy_eV + 0.25, 2)
                    )
                    out.append(
                        _hyp(
                            f"The {pk.energy_eV:.2f} eV mode seen at {s.cls} is localized there: {band.describe()} "
                            "at least twice as strong as on the substrate",
                            band,
                            LocalizedAt(at=s.cls, versus="substrate", min_ratio=2.0),
                            patch,
                            f"the band is several times stronger at {s.cls}",
                            f"the band at {s.cls} is less than twice the substrate's",
                        )
                    )
        rods = [p for p in smap.particles if p.shape == "rod"]
        if len(rods) >= 4:
            peak = PeakPosition(lo_eV=0.9, hi_eV=3.0, smooth_eV=0.08)
            out.append(
                _hyp(
                    "The rod dipole red-shifts with aspect ratio (Gans): the strongest low-loss peak at rod tips "
                    "falls in energy as the rods get longer for their width",
                    peak,
                    Trend(over="rod_tip", covariate="aspect_ratio", sign="decreasing", law="gans_rod_dipole"),
                    patch,
                    "the tip peak energy decreases with aspect ratio",
                    "the tip peak energy does not decrease with aspect ratio",
                )
            )
    if smap.lattice is not None:
        element = _edge_element(sig)
        light = element is not None and Element(element).Z <= 10
        defect = ["dim_site_dimmer", "dim_site_brighter", "bright_site_brighter"]
        if not light:
            defect = defect[::-1]
        defect = [c for c in defect if present.get(c, 0) >= 2]
        regular = {
            "dim_site_dimmer": "sublattice_dim",
            "dim_site_brighter": "sublattice_dim",
            "bright_site_brighter": "sublattice_bright",
        }
        what = f"{element} " if element else ""
        if defect:
            best = defect[0]
            out.append(
                _hyp(
                    f"{what}{sig.describe()} is localized at the {best} columns: at least twice that of the "
                    f"regular {regular[best]} columns",
                    sig,
                    LocalizedAt(at=best, versus=regular[best], min_ratio=2.0),
                    patch,
                    f"the {best} sites carry the signal, the regular columns not",
                    f"the {best} sites carry less than twice the regular columns' signal",
                )
            )
        for c in defect[1:]:
            # a falsifiable control: another kind of candidate site carrying twice what the first does
            # (a ratio against the regular columns, where a background-subtracted edge is ~0, cannot decide)
            out.append(
                _hyp(
                    f"Control: {what}{sig.describe()} at the {c} columns is at least twice that at the {best} columns",
                    sig,
                    Contrast(a=c, b=best, direction="higher", min_ratio=2.0),
                    patch,
                    f"the {c} sites carry more of the signal than the {best} sites",
                    f"the {c} sites carry less than twice the {best} sites' signal",
                )
            )
        if (
            sig.model_dump().get("background", "none") == "none"
            and present.get("sublattice_bright")
            and present.get("sublattice_dim")
        ):
            out.append(
                _hyp(
                    f"Control: {sig.describe()} is the same on the regular columns of both sublattices (within 2×)",
                    sig,
                    Uniform(over=["sublattice_bright", "sublattice_dim"], max_ratio=2.0),
                    patch,
                    "regular columns carry no more of it on one sublattice than the other",
                    "one sublattice's regular columns carry more than twice the other's",
                )
            )
    flake_classes = [c for c in ("single_flake", "stacked_flakes") if present.get(c, 0) >= MIN_PER_CLASS]
    if smap.flakes is not None and present.get("bare_film", 0) >= MIN_PER_CLASS and flake_classes:
        what = f"{el} " if (el := _edge_element(sig)) else ""
        at = "flake" if len(flake_classes) == 2 else flake_classes[0]
        out.append(
            _hyp(
                f"{what}{sig.describe()} comes from the flakes: on them at least twice that on the bare film",
                sig,
                LocalizedAt(at=at, versus="bare_film", min_ratio=2.0),
                patch,
                "the flakes carry the signal, the bare film not",
                "the flakes carry less than twice the bare film's signal",
            )
        )
        if len(flake_classes) == 2:
            out.append(
                _hyp(
                    f"{what}{sig.describe()} grows with the flakes stacked: at least 1.5× higher where two or "
                    "more flakes lie than on a single flake",
                    sig,
                    Contrast(a="stacked_flakes", b="single_flake", direction="higher", min_ratio=1.5),
                    patch,
                    "stacked flakes carry more of the signal than single ones",
                    "stacked flakes carry less than 1.5× a single flake's signal",
                )
            )
    if smap.interface is not None and present.get("bright_side") and present.get("dim_side"):
        onset = sig if isinstance(sig, EdgeOnset) else None
        if onset is not None:
            onset = onset.model_copy(
                update={"fraction": 0.1}
            )  # the conventional onset: 10 % of the edge maximum
            vals = _survey_signal(smap, survey_spectra, onset)
            up = vals.get("dim_side", 0.0) >= vals.get("bright_side", 0.0)
            out.append(
                _hyp(
                    f"The {onset.describe()} shifts {'up' if up else 'down'} by at least 0.5 eV from the bright to "
                    "the dim side of the interface (a change of valence across it)",
                    onset,
                    Shift(a="bright_side", b="dim_side", direction="up" if up else "down", min_shift_eV=0.5),
                    patch,
                    "the onset differs by more than 0.5 eV between the sides",
                    "the onset differs by less than 0.5 eV between the sides",
                )
            )
            if present.get("interface"):
                out.append(
                    _hyp(
                        "Across the interface band the onset rises steadily toward the dim side",
                        onset,
                        Trend(
                            over="interface",
                            covariate="distance_to_interface_nm",
                            sign="increasing" if up else "decreasing",
                        ),
                        patch,
                        "the onset is monotone in the distance to the interface",
                        "the onset does not change monotonically across the interface",
                    )
                )
            out.append(
                _hyp(
                    "Control: the onset is the same on both sides of the interface (within 0.3 eV)",
                    onset,
                    Uniform(over=["bright_side", "dim_side"], max_shift_eV=0.3),
                    patch,
                    "no shift across the interface",
                    "a shift of more than 0.3 eV across the interface",
                )
            )
        else:
            out.append(
                _hyp(
                    f"{sig.describe()} differs across the interface: 1.5× higher on the bright side",
                    sig,
                    Contrast(a="bright_side", b="dim_side", direction="higher", min_ratio=1.5),
                    patch,
                    "the bright side carries more of the signal",
                    "the sides carry the same signal within 1.5×",
                )
            )
    return out


def key(h: Hypothesis) -> str:
    """What makes two hypotheses the same test: the signal and the prediction."""
    return h.signal.model_dump_json() + h.prediction.model_dump_json()


def hypothesis(
    spec: RunSpec,
    smap: SurveyMap,
    present: dict[str, int],
    survey_spectra,
    round_no: int,
    tested: list[Hypothesis] = (),
    feedback: str | None = None,
) -> Hypothesis | None:
    """The next hypothesis the map supports that the run has not tested; None when none is left."""
    done = {key(h) for h in tested}
    for h in candidates(spec, smap, present, survey_spectra):
        if key(h) not in done:
            note = f" (after: {feedback})" if feedback else ""
            return h.model_copy(update={"id": f"H{round_no}", "statement": h.statement + note})
    return None


def plan(
    spec: RunSpec,
    h: Hypothesis,
    survey: SurveyStep,
    caps: Capabilities,
    *,
    budget_left: int,
    rounds_left: int,
    present: dict[str, int] | None = None,
    max_stay_s: float = float("inf"),
    feedback: str | None = None,
) -> Plan:
    """A plan for ``h``: the run's survey, unbiased spectra for the verdict, an active scan, monitors.

    ``max_stay_s``: the longest the probe may stay on one spot within the dose-per-area limit
    (``tools/dry_run.longest_stay_s``); repeats on a site never exceed it.
    """
    tpl = spec.template
    present = present or {}
    budget = max(1, budget_left // max(rounds_left, 1))
    lo, hi = _window(h, tpl, caps)
    strata = [c for c in verdict_strata(h)] or [c for c in h.prediction.classes() if c in SITE_CLASSES]
    # the answers drawn from these spectra (the goal's question, which shapes host the signal)
    strata += [c for c in answer_classes(spec.question, h, present) if c not in strata]
    site_strata = [
        c for c in strata if c in SITE_CLASSES or isinstance(h.prediction, Trend) and c in KEY_CLASSES
    ]
    audit_strata = [c for c in strata if c not in site_strata]
    share = max(int(budget * AUDIT_SHARE), MIN_PER_CLASS * max(len(strata), 1))
    share = min(share, budget)
    steps: list = [survey]
    per = max(2, share // max(len(strata), 1))
    # site classes, smallest first: a small class is measured whole (a census, with repeats on each
    # site as far as the dose limit allows); what it leaves goes to the larger classes
    left = share
    ordered = sorted(site_strata, key=lambda c: present.get(c, per) if c in SITE_CLASSES else per)
    for k, c in enumerate(ordered):
        fair = max(2, left // (len(ordered) - k + len(audit_strata)))
        n_sites = present.get(c, fair) if c in SITE_CLASSES else fair
        repeats = max(
            1, min(MAX_REPEATS, fair // max(n_sites, 1), _repeats_within(max_stay_s, tpl.spectrum_dwell_s))
        )
        step = SitesStep(
            at=c,
            max_sites=max(1, min(fair // repeats, n_sites)),
            repeats=repeats,
            dwell_s=tpl.spectrum_dwell_s,
            energy_min_eV=lo,
            energy_max_eV=hi,
        )
        left -= step.spectra
        steps.append(step)
    per = max(2, left // max(len(audit_strata), 1)) if site_strata else per
    if audit_strata:
        steps.append(
            AuditStep(
                classes=audit_strata,
                per_class=per,
                allocation=spec.audit_allocation,
                spectrum_dwell_s=tpl.spectrum_dwell_s,
                energy_min_eV=lo,
                energy_max_eV=hi,
            )
        )
    used = sum(s.spectra for s in steps[1:])  # an upper bound: the share of the verdict
    scan = budget - used
    if scan >= 3:  # two seeds and one model-chosen spectrum at the least
        seeds = max(2, min(tpl.seed_points, scan // 4))
        steps += [
            SeedStep(points=seeds),
            ActiveScanStep(
                model=tpl.method,
                acquisition=tpl.acquisition,
                budget=scan,
                stride_px=tpl.stride_px,
                spectrum_dwell_s=tpl.spectrum_dwell_s,
                energy_min_eV=lo,
                energy_max_eV=hi,
                y_transform=tpl.y_transform
                if h.signal.kind == tpl.scalarizer.kind == "band_intensity"
                else "none",
            ),
        ]
    steps += [
        InterventionRule(monitor="drift", action="ask", check_every=tpl.drift_check_every),
        InterventionRule(monitor="ood", action="ask"),
        InterventionRule(monitor="stuck", action="stop"),
        StopCondition(max_measurements=budget),
    ]
    why = (
        f"Test {h.id} on {budget} of the {budget_left} spectra left: {used} unbiased spectra over "
        f"{', '.join(strata)} for the verdict, the rest to map the signal with the template's {tpl.method} scan"
    )
    if feedback:
        why += f"; revised after: {feedback}"
    return Plan(hypothesis_id=h.id, rationale=why + ".", steps=steps, author=AUTHOR)


def _repeats_within(max_stay_s: float, dwell_s: float) -> int:
    """Repeats of a spectrum on one spot that stay within the dose limit (at least one)."""
    return MAX_REPEATS if not math.isfinite(max_stay_s) else max(1, int(max_stay_s // dwell_s))


def _window(h: Hypothesis, tpl, caps: Capabilities) -> tuple[float, float]:
    """The template's window when it covers the signal, else one around the signal's energies."""
    a, b = signal_window(h)
    lo, hi = max(tpl.energy_min_eV, caps.energy_min_eV), min(tpl.energy_max_eV, caps.energy_max_eV)
    if lo <= a and b <= hi - caps.dispersion_eV:
        return lo, hi
    pad = max(0.25 * (b - a), 5 * caps.dispersion_eV)
    return max(caps.energy_min_eV, a - pad), min(caps.energy_max_eV, b + pad)
