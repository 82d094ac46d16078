"""``autoscope bench throughput``: many twin campaigns in this process and on a Dask LocalCluster.

``n`` whole runs of the agent graph with the deterministic planner (``--llm none``, autonomous,
3 rounds, ``spectra`` spectra each, no figures), spread over the three scenarios with seeds from
5000, run once one after the other in this process and once on a ``LocalCluster`` of ``workers``
processes (its start-up counted), through the evaluation harness itself (``evals/harness.py``)
with the scoring left out. Both use one torch/BLAS thread per campaign, so the runs are the same
and the speed-up is the cluster's alone; the result says whether every campaign ended with the
same spectra and verdicts in both.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from autoscope.evals.harness import run_eval
from autoscope.evals.tasks import Family, Suite, tasks

log = logging.getLogger(__name__)
SCENARIOS = ("plasmonic", "tmd-defects", "oxide-interface")


def campaign_suite(n: int, spectra: int) -> Suite:
    """``n`` campaigns, the scenarios taking turns."""
    per = {s: n // 3 + (1 if i < n % 3 else 0) for i, s in enumerate(SCENARIOS)}
    fams = [
        Family(name=f"throughput-{s}", scenario=s, seeds=k, seed_base=5000, budget=spectra, rounds=3)
        for s, k in per.items()
        if k
    ]
    return Suite(name="throughput", families=fams)


def bench_throughput(
    n: int = 100,
    spectra: int = 300,
    workers: int = 2,
    *,
    keep_dir: Path | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    suite = campaign_suite(n, spectra)
    with tempfile.TemporaryDirectory(prefix="autoscope-throughput-") as tmp:
        base = Path(keep_dir or tmp)
        t0 = time.perf_counter()
        here = run_eval(
            suite, ["none"], base / "in-process", split="all", in_process=True, score=False, progress=progress
        )
        t_here = time.perf_counter() - t0
        t0 = time.perf_counter()
        there = run_eval(
            suite, ["none"], base / "cluster", split="all", workers=workers, score=False, progress=progress
        )
        t_there = time.perf_counter() - t0
    same = [
        (a["spectra"], a["verdicts"]) == (b["spectra"], b["verdicts"])
        for a, b in zip(here, there, strict=True)
    ]
    return {
        "campaigns": len(tasks(suite, "all")),
        "spectra_each": spectra,
        "spectra_total": sum(r["spectra"] for r in here),
        "workers": workers,
        "in_process_s": round(t_here, 1),
        "cluster_s": round(t_there, 1),
        "speedup": round(t_here / t_there, 2) if t_there else None,
        "campaign_s_median": sorted(r["wall_s"] for r in here)[len(here) // 2],
        "errors": sum(r["error"] is not None for r in here + there),
        "identical": all(same),
        "differing": [a["task"] for a, s in zip(here, same, strict=True) if not s],
    }


__all__ = ["bench_throughput", "campaign_suite"]
