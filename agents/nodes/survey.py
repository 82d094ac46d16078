"""Survey node: the overview image, a few spectra and unsupervised clusters of its patches.

The acquisitions are store steps (read back on resume, never repeated); the state gets
a reference (step ids, field, statistics, cluster fractions), never the image.
"""

from __future__ import annotations

import logging

import numpy as np
from langgraph.runtime import Runtime
from sklearn.cluster import KMeans

from autoscope.agents.context import RunContext
from autoscope.agents.state import GraphState
from autoscope.tools.figures import survey_figure
from autoscope.tools.ml.descriptors import PatchFeaturizer, candidate_grid, extract_patches
from autoscope.tools.survey import IMAGE_STEP, run_survey, spectrum_step

log = logging.getLogger(__name__)
CLUSTERS = 4


def survey(state: GraphState, runtime: Runtime[RunContext]) -> GraphState:
    ctx = runtime.context
    tpl = ctx.spec.template
    plan = tpl.survey.model_copy(update={"spectra": 4})
    ctx.status("survey")
    result = run_survey(ctx.microscope, ctx.store, plan)
    img = result.image
    grid = candidate_grid(img, max(tpl.stride_px, 8), tpl.patch.window_px // 2)
    feats = PatchFeaturizer(tpl.patch).fit_transform(
        extract_patches(img.data, grid.rows, grid.cols, tpl.patch.window_px)
    )
    labels = KMeans(n_clusters=CLUSTERS, n_init=4, random_state=0).fit_predict(feats)
    brightness = img.data[grid.rows, grid.cols]
    clusters = sorted(
        (
            {
                "cluster": int(c),
                "fraction": round(float(np.mean(labels == c)), 3),
                "mean_intensity": round(float(brightness[labels == c].mean()), 4),
            }
            for c in range(CLUSTERS)
        ),
        key=lambda d: -d["fraction"],
    )
    png = survey_figure(img, result.spectra, ctx.run_dir / "survey.png", title=f"{ctx.spec.scenario} survey")
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
        "intensity_mean": round(float(img.data.mean()), 4),
        "intensity_std": round(float(img.data.std()), 4),
        "clusters": clusters,
        "figure": str(png),
    }
    log.info("survey: %.0f nm field, %d clusters of patches", img.fov_nm, CLUSTERS)
    return {
        "survey": ref,
        "round": 0,
        "spent_spectra": 0,
        "status": "running",
        "max_rounds": ctx.spec.rounds,
        "budget": ctx.spec.total_budget,
        "goal": state.get("goal") or ctx.spec.goal,
        "notes": state.get("notes") or ctx.spec.notes,
    }
