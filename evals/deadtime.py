"""``autoscope bench deadtime``: how long the column waits for the software, with and without pipelining.

Campaigns on the twin with real-time pacing (``SimConfig.real_time``: each spectrum's dwell and
readout, each scan and stage move, last their simulated time on the wall clock, as a real
detector's do), each run once sequentially (fit and choose after every spectrum, before the
next) and once pipelined (``tools/pipeline.py``: the model runs beside the instrument), at each
dwell in ``dwells``. A campaign's **dead time** is the share of its loop's wall time the column
was not inside an acquire call (``tools/campaign.Timing``: waiting for a decision, but also
scalarising, writing the store, the monitors); the **decision wait** is the part spent waiting
for the model, and ``after %`` the dead time once the first model decision (a cold fit, paid
once, column ``1st s``) is made.

Recall is scored as in the discovery benchmark (``evals/discovery.run_one``: target regions
from the twin's noise-free spectra, never from the model) over ``seeds`` seeds at
``recall_dwell``, sequential and pipelined paired by seed (same sample, same seed points). The
pipelined campaign is **within noise** of the sequential one when the mean paired difference in
recall at the budget is no larger than two means of ``seeds`` sequential campaigns would differ
by at two standard errors, from the sequential campaigns' own seed-to-seed spread
(``2 · sd · √(2 / seeds)``).
"""

from __future__ import annotations

import logging
import math
import os
import statistics
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from autoscope.evals.discovery import run_one
from autoscope.tools.campaign import default_campaign_path, load_campaign
from autoscope.tools.figures import plt, save_figure, serialised

log = logging.getLogger(__name__)

MODES = ("sequential", "pipelined")


def _paired(seq: list[float], pipe: list[float]) -> dict[str, Any]:
    diff = [p - s for s, p in zip(seq, pipe, strict=True)]
    n = len(diff)
    mean = statistics.fmean(diff)
    se = statistics.stdev(diff) / math.sqrt(n) if n > 1 else math.inf
    spread = statistics.stdev(seq) if n > 1 else math.inf
    # what two means of n sequential campaigns would differ by at two standard errors
    tolerance = 2.0 * spread * math.sqrt(2.0 / n) if n > 1 else math.inf
    return {
        "mean_difference": mean,
        "standard_error": se,
        "sequential_seed_sd": spread,
        "tolerance": tolerance,
        "within_noise": bool(abs(mean) <= tolerance),
    }


def bench_deadtime(
    scenario: str = "plasmonic",
    *,
    dwells: Sequence[float] = (0.01, 0.02, 0.1),
    budget: int = 300,
    seeds: int = 5,
    recall_dwell: float = 0.02,
    method: str = "dkl",
    campaign: Path | None = None,
    keep_dir: Path | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Dead time per dwell and mode (seed 0), and paired recall over ``seeds`` seeds (module doc)."""
    if not dwells or any(d <= 0 for d in dwells) or recall_dwell <= 0:
        raise ValueError("dwells must be positive seconds")
    base = load_campaign(campaign or default_campaign_path(scenario)).with_(budget=budget, method=method)
    runs: dict[tuple[float, str, int], dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="autoscope-deadtime-") as tmp:
        sim = Path(tmp) / "real-time.yaml"
        sim.write_text("real_time: true\n")

        def run(dwell: float, mode: str, seed: int) -> dict[str, Any]:
            key = (dwell, mode, seed)
            if key not in runs:
                cfg = base.with_(spectrum_dwell_s=dwell, pipeline=mode == "pipelined")
                where = Path(keep_dir or tmp) / f"{mode}-{dwell * 1e3:g}ms"
                where.mkdir(parents=True, exist_ok=True)
                r = run_one(
                    cfg, scenario=scenario, seed=seed, sim_config=sim, run_dir=where, progress=progress
                )
                runs[key] = r
                t = r["timing"]
                log.info(
                    "%s %g ms seed %d: dead %.1f %% (waiting for the model %.1f %%), recall %.2f",
                    mode, dwell * 1e3, seed, 100 * t["dead_fraction"], 100 * t["wait_fraction"],
                    r["robust"]["recall_at_budget"] or 0.0,
                )  # fmt: skip
            return runs[key]

        deadtime = []
        for dwell in dwells:
            for mode in MODES:
                r = run(dwell, mode, 0)
                deadtime.append(
                    {
                        "dwell_s": dwell,
                        "mode": mode,
                        **r["timing"],
                        "measurements": r["measurements"],
                        "recall_robust": r["robust"]["recall_at_budget"],
                        "recall_raw": r["raw"]["recall_at_budget"],
                    }
                )
        recall: dict[str, Any] = {"dwell_s": recall_dwell, "seeds": seeds}
        for mode in MODES:
            rs = [run(recall_dwell, mode, s) for s in range(seeds)]
            recall[mode] = {
                d: {
                    "per_seed": [r[d]["recall_at_budget"] for r in rs],
                    "to_recall_90": [r[d]["to_recall_90"] for r in rs],
                    "median": statistics.median(r[d]["recall_at_budget"] or 0.0 for r in rs),
                }
                for d in ("raw", "robust")
            }
            recall[mode]["dead_fraction"] = [r["timing"]["dead_fraction"] for r in rs]
        for d in ("raw", "robust"):
            recall[f"paired_{d}"] = _paired(
                [v or 0.0 for v in recall["sequential"][d]["per_seed"]],
                [v or 0.0 for v in recall["pipelined"][d]["per_seed"]],
            )
    return {
        "scenario": scenario,
        "method": method,
        "budget": budget,
        "cpu_count": os.cpu_count(),
        "deadtime": deadtime,
        "recall": recall,
    }


def format_deadtime(result: dict[str, Any]) -> str:
    """The dead-time table and the paired recall comparison as text."""
    lines = [
        f"dead time on the {result['scenario']} twin (real-time dwell), {result['method']}, "
        f"{result['budget']} spectra, {result['cpu_count']} CPUs",
        f"{'dwell':>8} {'mode':<11}{'wall s':>8}{'dead %':>8}{'wait %':>8}{'1st s':>7}{'after %':>8}"
        f"{'model s':>9}{'batch':>7}{'recall':>8}",
    ]
    for row in result["deadtime"]:
        lines.append(
            f"{row['dwell_s'] * 1e3:>6g}ms {row['mode']:<11}{row['wall_s']:>8.1f}"
            f"{100 * row['dead_fraction']:>8.1f}{100 * row['wait_fraction']:>8.1f}"
            f"{row['first_decision_s']:>7.2f}{100 * row['steady_dead_fraction']:>8.1f}{row['model_s']:>9.1f}"
            f"{row['median_batch']:>7g}{row['recall_robust'] or 0.0:>8.2f}"
        )
    rec = result["recall"]
    lines.append(
        f"recall at the budget, {rec['seeds']} seeds at {rec['dwell_s'] * 1e3:g} ms (paired by seed):"
    )
    for d in ("raw", "robust"):
        p = rec[f"paired_{d}"]
        seq = ", ".join(f"{v or 0:.2f}" for v in rec["sequential"][d]["per_seed"])
        pipe = ", ".join(f"{v or 0:.2f}" for v in rec["pipelined"][d]["per_seed"])
        lines.append(
            f"  {d:<7} sequential [{seq}]  pipelined [{pipe}]  difference {p['mean_difference']:+.3f} "
            f"± {p['standard_error']:.3f} (SE), tolerance {p['tolerance']:.3f}: "
            f"{'within noise' if p['within_noise'] else 'NOT within noise'}"
        )
    return "\n".join(lines)


@serialised
def deadtime_figure(result: dict[str, Any], path: Path) -> Path:
    """Dead time (the column not acquiring) and the part spent waiting for the model, per dwell."""
    rows = result["deadtime"]
    dwells = sorted({r["dwell_s"] for r in rows})
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    x = np.arange(len(dwells))
    for j, (mode, colour) in enumerate(
        zip(("sequential", "pipelined"), ("tab:red", "tab:blue"), strict=True)
    ):
        dead = [
            next(100 * r["dead_fraction"] for r in rows if r["dwell_s"] == d and r["mode"] == mode)
            for d in dwells
        ]
        wait = [
            next(100 * r["wait_fraction"] for r in rows if r["dwell_s"] == d and r["mode"] == mode)
            for d in dwells
        ]
        ax.bar(x + (j - 0.5) * 0.38, dead, 0.36, color=colour, alpha=0.35, label=f"{mode}: dead time")
        ax.bar(x + (j - 0.5) * 0.38, wait, 0.36, color=colour, label=f"{mode}: waiting for the model")
    ax.axhline(10, color="k", lw=0.8, ls="--")
    ax.set_xticks(x, [f"{d * 1e3:g} ms" for d in dwells])
    ax.set_xlabel("spectrum dwell")
    ax.set_ylabel("share of the campaign's wall time (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    title = (
        f"{result['scenario']}, {result['method']}, {result['budget']} spectra, {result['cpu_count']} CPUs"
    )
    return save_figure(fig, path, title)
