"""Survey node: the overview image, spectra on each kind of feature, and the survey map.

The map (``tools/grounding``: particles with shape and size, lattice sites with their
intensity class, an interface; peaks and edges of the survey spectra) is built from the
stored image and spectra only, written to the run directory (``survey_map.json``) and
summarised for the hypothesis agent. The acquisitions are store steps (read back on
resume, never repeated); the state gets references and the summary, never arrays.
"""

from __future__ import annotations

import logging

from langgraph.runtime import Runtime

from autoscope.agents.context import SURVEY_MAP, RunContext
from autoscope.agents.state import GraphState
from autoscope.instruments.records import Capabilities, ImageRecord
from autoscope.tools.figures import map_figure, survey_figure
from autoscope.tools.grounding import build_survey_map, describe_spectrum, population_grid
from autoscope.tools.grounding.summary import map_summary, spectrum_positions
from autoscope.tools.survey import IMAGE_STEP, choose_spectrum_positions, run_survey, spectrum_step

log = logging.getLogger(__name__)
SURVEY_SPECTRA = 6


def survey_window(caps: Capabilities) -> tuple[float, float]:
    """The widest energy window the spectrometer records in one spectrum (survey spectra look for
    every peak and edge, not only the template's)."""
    return caps.energy_min_eV, min(
        caps.energy_max_eV, caps.energy_min_eV + caps.dispersion_eV * caps.max_channels
    )


def survey(state: GraphState, runtime: Runtime[RunContext]) -> GraphState:
    ctx = runtime.context
    tpl = ctx.spec.template
    lo, hi = survey_window(ctx.microscope.capabilities())
    plan = tpl.survey.model_copy(update={"spectra": SURVEY_SPECTRA, "energy_min_eV": lo, "energy_max_eV": hi})
    ctx.status("survey")
    maps = {}

    def positions(image: ImageRecord, n: int) -> list[tuple[float, float]]:
        maps["image"] = build_survey_map(image)
        return spectrum_positions(
            maps["image"], population_grid(image).xy_nm, n
        ) or choose_spectrum_positions(image, n)

    result = run_survey(ctx.microscope, ctx.store, plan, positions=positions)
    img = result.image
    smap = maps["image"].model_copy(
        update={
            "spectra": [
                describe_spectrum(maps["image"], spectrum_step(i), s) for i, s in enumerate(result.spectra)
            ]
        }
    )
    ctx.store.write_artifact(SURVEY_MAP, smap.model_dump_json())
    grid = population_grid(img).xy_nm
    png = map_png = None
    if ctx.figures:
        png = survey_figure(
            img, result.spectra, ctx.run_dir / "survey.png", title=f"{ctx.spec.scenario} survey"
        )
        map_png = map_figure(
            img, smap, grid, ctx.run_dir / "survey_map.png", title="survey map: feature classes"
        )
    ref = {
        "step": IMAGE_STEP,
        "spectra": [spectrum_step(i) for i in range(len(result.spectra))],
        "fov_nm": img.fov_nm,
        "pixels": int(img.data.shape[0]),
        "pixel_size_nm": img.pixel_size_nm,
        "dwell_s": plan.dwell_s,
        "current_pA": float(plan.current_pA or ctx.microscope.beam_current_pA()),
        "center_nm": [img.center_x_nm, img.center_y_nm],
        "dose_e": img.dose_e + sum(s.dose_e for s in result.spectra),
        "map": SURVEY_MAP,
        "summary": map_summary(smap, grid),
        "classes": smap.classes_present(grid),
        "figure": str(png) if png else None,
        "map_figure": str(map_png) if map_png else None,
    }
    log.info(
        "survey: %.0f nm field; %d particles, %s lattice, %s interface",
        img.fov_nm,
        len(smap.particles),
        "a" if smap.lattice else "no",
        "an" if smap.interface else "no",
    )
    return {
        "survey": ref,
        "round": 0,
        "spent_spectra": len(result.spectra),  # the survey's spectra are part of the run's budget
        "status": "running",
        "max_rounds": ctx.spec.rounds,
        "budget": ctx.spec.total_budget,
        "goal": state.get("goal") or ctx.spec.goal,
        "notes": state.get("notes") or ctx.spec.notes,
    }
