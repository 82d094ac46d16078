"""Theory in the loop, as typed tools: build candidates, simulate an image, rank
candidates against a measurement, compute an energy — each with a cost estimate so
the planner can budget them (``simulate_cost``, ``rank_cost``, ``energy_cost``).

The tools take pydantic requests and return pydantic results (the analysis node cites
``RankResult.statement``); arrays stay out of the results (images go to PNG or the
run store).
"""

from __future__ import annotations

import logging
import math
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from pymatgen.core import Structure

from autoscope.instruments.errors import InvalidRequest
from autoscope.instruments.records import ImageRecord
from autoscope.theory import structures as st
from autoscope.theory.compare import RankResult, rank_candidates
from autoscope.theory.haadf import simulate_haadf
from autoscope.theory.jobs import CostEstimate, Job, JobKind, JobResult, JobRunner, estimate
from autoscope.theory.probe import ProbeSpec

log = logging.getLogger(__name__)

#: measured on 2 CPU cores: fast HAADF model, per atom and per pixel (14 ms for 504 atoms at 128²)
_SIM_S_PER_ATOM_PIXEL = 14e-3 / (504 * 128 * 128)
_SIM_FIXED_S = 2e-3


def simulate_cost(n_atoms: int, pixels: int, backend: Literal["fast", "abtem"] = "fast") -> CostEstimate:
    if backend == "abtem":
        s = 0.5 + 2e-6 * n_atoms * pixels * pixels
        return CostEstimate(
            seconds=s, memory_MB=200 + pixels * pixels * 1e-3, basis="abTEM multislice, rough"
        )
    s = _SIM_FIXED_S + _SIM_S_PER_ATOM_PIXEL * n_atoms * pixels * pixels
    return CostEstimate(
        seconds=s, memory_MB=8 * 4 * pixels * pixels / 1e6 + 1, basis="fast incoherent model: atoms × pixels²"
    )


class RankRequest(BaseModel):
    """Rank defect models at a position of a measured (survey) image of the 2D crystal."""

    model_config = ConfigDict(extra="forbid")

    x_nm: float
    y_nm: float
    defect: st.DefectSpec = st.DefectSpec(kind="substitution", host="Mo", species="W")
    wrong_sites: int = Field(
        3, ge=1, le=12, description="the same defect at this many neighbouring host sites"
    )
    include_pristine: bool = True
    include_s_vacancy: bool = True
    patch_nm: float = Field(2.0, gt=0.3, le=10.0)
    probe: ProbeSpec = ProbeSpec()
    max_shift_px: int = Field(6, ge=0, le=64)


class RankOutcome(BaseModel):
    """The ranking and the candidates it ranked (their structures are in ``candidates``)."""

    result: RankResult
    candidates: list[st.CandidateModel]
    patch_px: int
    pixel_size_nm: float
    cost: CostEstimate


def _patch(
    image: ImageRecord, x_nm: float, y_nm: float, side_px: int
) -> tuple[np.ndarray, tuple[float, float]]:
    """A side_px square of the image centred on (x, y), and the sample-frame centre of that patch."""
    r, c = (int(round(v)) for v in image.nm_to_pixel(x_nm, y_nm))
    h = side_px // 2
    if r - h < 0 or c - h < 0 or r - h + side_px > image.pixels or c - h + side_px > image.pixels:
        raise InvalidRequest(
            "x_nm", f"a {side_px}-pixel patch at ({x_nm:.2f}, {y_nm:.2f}) nm leaves the image"
        )
    patch = image.data[r - h : r - h + side_px, c - h : c - h + side_px].astype(np.float64)
    x0, y0 = image.pixel_to_nm(r - h, c - h)
    p = image.pixel_size_nm
    return patch, (x0 + (side_px - 1) * p / 2, y0 + (side_px - 1) * p / 2)


def mos2_candidates(
    req: RankRequest, centre_nm: tuple[float, float], extent_nm: float
) -> list[st.CandidateModel]:
    """The true-site hypothesis (the defect at the host site nearest the position), the same
    defect at neighbouring host sites, and optionally pristine and an S vacancy."""
    cells = (max(4, math.ceil(extent_nm / 0.316) + 2), max(3, math.ceil(extent_nm / 0.547) + 2))
    base = st.mos2_monolayer(cells, center_nm=centre_nm)
    near = st.sites_near(base, req.x_nm, req.y_nm, 0.9, species=req.defect.host)
    if len(near) < req.wrong_sites + 1:
        raise InvalidRequest(
            "wrong_sites", f"only {len(near) - 1} neighbouring {req.defect.host} sites in reach"
        )
    cands = st.candidate_models(
        base, req.defect, near[: req.wrong_sites + 1], include_pristine=req.include_pristine
    )
    if req.include_s_vacancy:
        v_s = st.DefectSpec(kind="vacancy", host="S")
        cands += st.candidate_models(base, v_s, [st.site_near(base, req.x_nm, req.y_nm, species="S")])
    return cands


def rank_at(image: ImageRecord, req: RankRequest) -> RankOutcome:
    """Simulate each candidate at the image's pixel size and rank them against the measured patch."""
    p = image.pixel_size_nm
    side = max(16, int(round(req.patch_nm / p)))
    measured, centre = _patch(image, req.x_nm, req.y_nm, side)
    pad = req.max_shift_px + 2
    cands = mos2_candidates(req, centre, (side + 2 * pad) * p + 1.0)
    sims = [
        simulate_haadf(
            c.to_structure(),
            fov_nm=(side + 2 * pad) * p,
            pixels=side + 2 * pad,
            center_nm=centre,
            probe=req.probe,
        )
        for c in cands
    ]
    result = rank_candidates(measured, sims, labels=[c.label for c in cands], max_shift_px=req.max_shift_px)
    n_atoms = len(cands[0].to_structure())
    cost = simulate_cost(n_atoms, side + 2 * pad)
    cost = cost.model_copy(
        update={"seconds": cost.seconds * len(cands), "basis": f"{len(cands)} × " + cost.basis}
    )
    log.info("ranked %d candidates at (%.2f, %.2f) nm: %s", len(cands), req.x_nm, req.y_nm, result.statement)
    return RankOutcome(result=result, candidates=cands, patch_px=side, pixel_size_nm=p, cost=cost)


def rank_cost(image: ImageRecord, req: RankRequest) -> CostEstimate:
    """Cost of ``rank_at`` without running it."""
    side = max(16, int(round(req.patch_nm / image.pixel_size_nm))) + 2 * (req.max_shift_px + 2)
    n_atoms = int(3 * (side * image.pixel_size_nm / 0.316) * (side * image.pixel_size_nm / 0.274))
    n = req.wrong_sites + 1 + int(req.include_pristine) + int(req.include_s_vacancy)
    one = simulate_cost(n_atoms, side)
    return one.model_copy(update={"seconds": one.seconds * n, "basis": f"{n} × " + one.basis})


def load_structure(path) -> Structure:
    """A structure from CIF, our JSON, or any format pymatgen reads; errors name the file."""
    from pathlib import Path

    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise InvalidRequest("structure", f"cannot read {p}: {exc}") from None
    try:
        if p.suffix.lower() == ".cif":
            return st.from_cif(text)
        if p.suffix.lower() == ".json":
            return st.from_json(text)
        return Structure.from_file(str(p))
    except Exception as exc:  # pymatgen raises many kinds on malformed files
        raise InvalidRequest("structure", f"{p} is not a readable structure: {exc}") from None


def simulate_candidate(
    candidate: st.CandidateModel, *, fov_nm: float, pixels: int, probe: ProbeSpec | None = None
) -> np.ndarray:
    """The fast HAADF image of a candidate, centred on its defect (or its cell centre)."""
    structure = candidate.to_structure()
    if candidate.x_nm is not None:
        centre = (candidate.x_nm, candidate.y_nm)
    else:
        xy = st.sample_xy_nm(structure)
        centre = tuple(float(v) for v in (xy.min(axis=0) + xy.max(axis=0)) / 2)
    return simulate_haadf(
        structure, fov_nm=fov_nm, pixels=pixels, center_nm=centre, probe=probe or ProbeSpec()
    )


def energy_job(candidate: st.CandidateModel, kind: JobKind = "chgnet_energy", **params) -> Job:
    return Job(kind=kind, structure=candidate.structure, params=params)


def energy_cost(candidate: st.CandidateModel, kind: JobKind = "chgnet_energy", **params) -> CostEstimate:
    """Cost of ``candidate_energy`` before it runs (CHGNet seconds, GPAW minutes to hours)."""
    return estimate(energy_job(candidate, kind, **params))


def candidate_energy(
    runner: JobRunner, candidate: st.CandidateModel, kind: JobKind = "chgnet_energy", **params
) -> JobResult:
    """The candidate's energy through the job interface (cached by structure; local or Dask)."""
    return runner.run(energy_job(candidate, kind, **params))
