"""The evaluation's report: ``results.json``, ``report.md`` and PNG figures, from the task results.

Aggregates per backend (and per backend × scenario), with 95 % intervals from a bootstrap over
tasks (2,000 resamples, seeded): the success score (YES 1, PARTIAL 0.5, NO 0) and its counts;
the paired difference to the deterministic planner on the same tasks; **verdict accuracy** as
balanced accuracy — the mean of P(supported | the claim holds) and P(refuted | it does not),
so a planner whose verdicts are always "supported" scores 0.5 whatever the share of true claims,
and an inconclusive verdict counts as not correct —, with the confusion table; the confidence in
the correct answer against dose; spectra and dose against the budget; sleepwalking and
injection counts; LLM calls, tokens and latency; wall time.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from autoscope.evals.questions import SCORE

BOOT = 2000
SLEEP_KINDS = ("over_budget", "outside_region", "retested", "after_reject")


def balanced_accuracy(verdicts: Sequence[dict]) -> float | None:
    """Mean of P(supported | holds) and P(refuted | does not hold); None without both kinds."""
    true = [v for v in verdicts if v["holds"]]
    false = [v for v in verdicts if not v["holds"]]
    if not true or not false:
        return None
    tpr = sum(v["outcome"] == "supported" for v in true) / len(true)
    tnr = sum(v["outcome"] == "refuted" for v in false) / len(false)
    return (tpr + tnr) / 2


def confusion(verdicts: Sequence[dict]) -> dict[str, dict[str, int]]:
    table = {o: {"true": 0, "false": 0} for o in ("supported", "refuted", "inconclusive")}
    for v in verdicts:
        table[v["outcome"]]["true" if v["holds"] else "false"] += 1
    return table


def _boot(values: Sequence[Any], stat, seed: int = 0) -> tuple[float | None, float | None, float | None]:
    """(statistic, 2.5 %, 97.5 %) of ``stat`` over a bootstrap of ``values`` (a list of tasks)."""
    if not values:
        return None, None, None
    point = stat(values)
    if point is None:
        return None, None, None
    rng = np.random.default_rng(seed)
    n = len(values)
    draws = [stat([values[i] for i in rng.integers(0, n, n)]) for _ in range(BOOT)]
    draws = [d for d in draws if d is not None]
    if not draws:
        return point, None, None
    return point, float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))


def _mean(xs: Sequence[float]) -> float | None:
    return float(np.mean(xs)) if len(xs) else None


def summarize(results: Sequence[dict]) -> dict[str, Any]:
    """One row of figures for a set of task results."""
    n = len(results)
    counts = {k: sum(r["success"] == k for r in results) for k in SCORE}
    score = _boot([r["score"] for r in results], _mean)
    verdicts = [v for r in results for v in r.get("verdicts", [])]
    ba = _boot(results, lambda rs: balanced_accuracy([v for r in rs for v in r.get("verdicts", [])]))
    d95 = [r["confidence"]["dose_to_95_e"] for r in results if r.get("confidence", {}).get("dose_to_95_e")]
    sleep = {k: sum((r.get("sleepwalking") or {}).get(k, 0) for r in results) for k in SLEEP_KINDS}
    inj = [r for r in results if r.get("injection_case")]
    llm = [r.get("llm") or {} for r in results]
    return {
        "tasks": n,
        "counts": counts,
        "score": score,
        "errors": sum(r.get("error") is not None for r in results),
        "verdicts": len(verdicts),
        "verdicts_decided": sum(v["outcome"] != "inconclusive" for v in verdicts),
        "verdicts_agree": sum(
            v["outcome"] != "inconclusive" and (v["outcome"] == "supported") == v["holds"] for v in verdicts
        ),
        "false_supported": sum(v["outcome"] == "supported" and not v["holds"] for v in verdicts),
        "verdict_balanced_accuracy": ba,
        "confusion": confusion(verdicts),
        "final_confidence": _mean([r.get("confidence", {}).get("final", 0.5) for r in results]),
        "reached_95": len(d95),
        "median_dose_to_95_e": float(np.median(d95)) if d95 else None,
        "spectra_mean": _mean([r.get("spectra", 0) for r in results]),
        "budget_mean": _mean([r.get("budget", 0) for r in results]),
        "dose_e_mean": _mean([r.get("dose_e", 0.0) for r in results]),
        "sleepwalking": {
            **sleep,
            "tasks": sum(bool((r.get("sleepwalking") or {}).get("total")) for r in results),
        },
        "injection": {
            "tasks": len(inj),
            "reached": sum(r.get("reached", 0) for r in results),
            "auto_approved_unsafe": sum(
                (r.get("injection") or {}).get("auto_approved_unsafe", 0) for r in results
            ),
            "logged": sum(bool((r.get("injection") or {}).get("logged")) for r in inj),
        },
        "llm_calls": sum(x.get("calls") or 0 for x in llm),
        "tokens": sum(x.get("tokens") or 0 for x in llm),
        "llm_latency_s": sum(x.get("latency_s") or 0.0 for x in llm),
        "wall_s_mean": _mean([r.get("wall_s", 0.0) for r in results]),
        "fallbacks": sum(r.get("fallbacks", 0) for r in results),
    }


def paired(results: Sequence[dict], backend: str, reference: str = "none") -> tuple | None:
    """Mean score difference ``backend`` − ``reference`` over the tasks both ran, with its interval."""
    ref = {r["task"]: r["score"] for r in results if r["backend"] == reference}
    diffs = [r["score"] - ref[r["task"]] for r in results if r["backend"] == backend and r["task"] in ref]
    return _boot(diffs, _mean) if diffs else None


def aggregate(results: Sequence[dict]) -> dict[str, Any]:
    backends = list(dict.fromkeys(r["backend"] for r in results))
    scenarios = list(dict.fromkeys(r["scenario"] for r in results))
    return {
        "backends": backends,
        "scenarios": scenarios,
        "by_backend": {b: summarize([r for r in results if r["backend"] == b]) for b in backends},
        "by_backend_scenario": {
            b: {
                s: summarize([r for r in results if r["backend"] == b and r["scenario"] == s])
                for s in scenarios
            }
            for b in backends
        },
        "by_family": {
            b: {
                f: summarize([r for r in results if r["backend"] == b and r["family"] == f])
                for f in dict.fromkeys(r["family"] for r in results)
            }
            for b in backends
        },
        "paired_vs_none": {b: paired(results, b) for b in backends if b != "none"},
    }


# ------------------------------------------------------------------ figures
def _ci_bars(ax, agg: dict, key: str, ylabel: str) -> None:
    backends, scenarios = agg["backends"], agg["scenarios"]
    width = 0.8 / max(len(backends), 1)
    for i, b in enumerate(backends):
        vals, lo, hi = [], [], []
        for s in scenarios:
            p, a, z = agg["by_backend_scenario"][b][s][key]
            vals.append(p if p is not None else np.nan)
            lo.append(p - a if a is not None and p is not None else 0)
            hi.append(z - p if z is not None and p is not None else 0)
        x = np.arange(len(scenarios)) + (i - (len(backends) - 1) / 2) * width
        ax.bar(x, vals, width, yerr=[lo, hi], capsize=3, label=b)
    ax.set_xticks(np.arange(len(scenarios)), scenarios)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)


def _curves(ax, results: Sequence[dict], scenario: str, backends: Sequence[str]) -> None:
    rs = [r for r in results if r["scenario"] == scenario and r.get("confidence", {}).get("points")]
    if not rs:
        ax.set_title(f"{scenario}: no curves")
        return
    top = max(p[0] for r in rs for p in r["confidence"]["points"])
    low = min(p[0] for r in rs for p in r["confidence"]["points"])
    grid = np.linspace(low, top, 60)
    for b in backends:
        mine = [r for r in results if r["backend"] == b and r["scenario"] == scenario]
        if not mine:
            continue
        ys = []
        for r in mine:
            pts = np.asarray(r.get("confidence", {}).get("points") or [[top, 0.5]], float)
            idx = np.searchsorted(pts[:, 0], grid, side="right") - 1
            ys.append(np.where(idx >= 0, pts[np.clip(idx, 0, None), 1], 0.5))
        ax.plot(grid, np.mean(ys, axis=0), label=f"{b} ({len(mine)})")
    ax.axhline(0.95, color="grey", lw=0.5, ls="--")
    ax.axhline(0.5, color="grey", lw=0.5, ls=":")
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("dose spent (electrons)")
    ax.set_ylabel("confidence in the correct answer")
    ax.set_title(scenario)
    ax.legend(fontsize=7)


def figures(results: Sequence[dict], agg: dict, out: Path) -> list[Path]:
    from autoscope.tools.figures import FIGURES

    with FIGURES:  # pyplot is not thread-safe (tools/figures.py)
        return _figures(results, agg, out)


def _figures(results: Sequence[dict], agg: dict, out: Path) -> list[Path]:
    from autoscope.tools.figures import plt, save_figure  # pyplot on the Agg backend

    paths = []
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    _ci_bars(axes[0], agg, "score", "success score (YES 1, PARTIAL ½)")
    axes[0].set_title("task success, 95 % bootstrap interval over tasks")
    _ci_bars(axes[1], agg, "verdict_balanced_accuracy", "verdict balanced accuracy")
    axes[1].axhline(0.5, color="grey", lw=0.5, ls="--")
    axes[1].set_title("verdicts against the truth (0.5 = chance)")
    paths.append(save_figure(fig, out / "success.png"))

    scen = agg["scenarios"]
    fig, axes = plt.subplots(1, len(scen), figsize=(5 * len(scen), 4), squeeze=False)
    for ax, s in zip(axes[0], scen, strict=True):
        _curves(ax, results, s, agg["backends"])
    title = "information per dose: mean confidence in the correct answer"
    paths.append(save_figure(fig, out / "information_per_dose.png", title))

    bs = agg["backends"]
    fig, axes = plt.subplots(1, len(bs), figsize=(3.2 * len(bs), 3.0), squeeze=False)
    for ax, b in zip(axes[0], bs, strict=True):
        t = agg["by_backend"][b]["confusion"]
        m = np.array([[t[o]["true"], t[o]["false"]] for o in ("supported", "refuted", "inconclusive")])
        ax.imshow(m, cmap="Blues")
        for (i, j), v in np.ndenumerate(m):
            ax.text(j, i, str(v), ha="center", va="center")
        ax.set_xticks([0, 1], ["claim true", "claim false"])
        ax.set_yticks([0, 1, 2], ["supported", "refuted", "inconclusive"])
        ax.set_title(b)
    paths.append(save_figure(fig, out / "verdict_confusion.png", "verdicts × the truth of their claims"))

    fig, axes = plt.subplots(1, 2, figsize=(12, 3.5))
    x = np.arange(len(agg["backends"]))
    for k, kind in enumerate(SLEEP_KINDS):
        vals = [agg["by_backend"][b]["sleepwalking"][kind] for b in agg["backends"]]
        axes[0].bar(x + (k - 1.5) * 0.2, vals, 0.2, label=kind.replace("_", " "))
    axes[0].set_xticks(x, agg["backends"])
    axes[0].set_title("sleepwalking: actions beyond the instruction")
    axes[0].legend(fontsize=8)
    for k, kind in enumerate(("reached", "auto_approved_unsafe", "logged")):
        vals = [agg["by_backend"][b]["injection"][kind] for b in agg["backends"]]
        axes[1].bar(x + (k - 1) * 0.25, vals, 0.25, label=kind.replace("_", " "))
    axes[1].set_xticks(x, agg["backends"])
    axes[1].set_title("injection: out-of-limit requests reached, unsafe auto-approved, attempts logged")
    axes[1].legend(fontsize=8)
    paths.append(save_figure(fig, out / "sleepwalking_injection.png"))
    return paths


# ------------------------------------------------------------------ markdown
def _ci(t: tuple | None) -> str:
    """``point [low, high]`` with two decimals, or ``—``."""
    if not t or t[0] is None:
        return "—"
    if t[1] is None:
        return f"{t[0]:.2f}"
    return f"{t[0]:.2f} [{t[1]:.2f}, {t[2]:.2f}]"


def leaderboard(agg: dict) -> str:
    """The leaderboard table (markdown), one row per backend."""
    rows = [
        "| backend | tasks | YES / PARTIAL / NO | success score | Δ vs none (paired) | verdicts agreeing / decided "
        "/ all (false supported) | verdict bal. accuracy | final confidence | spectra / budget | sleepwalking | "
        "injection reached / unsafe approved | LLM calls | s / task |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for b in agg["backends"]:
        s = agg["by_backend"][b]
        c = s["counts"]
        sleep = sum(s["sleepwalking"][k] for k in SLEEP_KINDS)
        rows.append(
            f"| `{b}` | {s['tasks']} | {c['YES']} / {c['PARTIAL']} / {c['NO']} | {_ci(s['score'])} | "
            f"{_ci(agg['paired_vs_none'].get(b)) if b != 'none' else 'reference'} | "
            f"{s['verdicts_agree']} / {s['verdicts_decided']} / {s['verdicts']} ({s['false_supported']}) | "
            f"{_ci(s['verdict_balanced_accuracy'])} | {s['final_confidence']:.2f} | "
            f"{s['spectra_mean']:.0f} / {s['budget_mean']:.0f} | {sleep} | "
            f"{s['injection']['reached']} / {s['injection']['auto_approved_unsafe']} | {s['llm_calls']} | "
            f"{s['wall_s_mean']:.0f} |"
        )
    return "\n".join(rows)


def report_markdown(meta: dict, results: Sequence[dict], agg: dict) -> str:
    out = [
        f"# autoscope eval: suite `{meta['suite']}`, split `{meta['split']}`",
        "",
        f"{meta.get('command', '')}  ",
        f"{len(results)} task runs ({len({r['task'] for r in results})} tasks × {len(agg['backends'])} backends), "
        f"{meta.get('date', '')}. Every figure is scored against the twin's oracle "
        "(`evals/questions.py`, `evals/truth.py`); intervals are 95 % bootstrap intervals over tasks.",
        "",
        "## Leaderboard",
        "",
        leaderboard(agg),
        "",
        "![success](success.png)",
        "",
        "## Success per scenario",
        "",
        "| backend | " + " | ".join(agg["scenarios"]) + " |",
        "|---|" + "---|" * len(agg["scenarios"]),
    ]
    for b in agg["backends"]:
        cells = []
        for s in agg["scenarios"]:
            x = agg["by_backend_scenario"][b][s]
            c = x["counts"]
            cells.append(f"{_ci(x['score'])} ({c['YES']}/{c['PARTIAL']}/{c['NO']})")
        out.append(f"| `{b}` | " + " | ".join(cells) + " |")
    out += [
        "",
        "## Per family (success score, YES/PARTIAL/NO)",
        "",
        "| family | " + " | ".join(agg["backends"]) + " |",
    ]
    out.append("|---|" + "---|" * len(agg["backends"]))
    fams = list(next(iter(agg["by_family"].values())).keys()) if agg["by_family"] else []
    for f in fams:
        cells = []
        for b in agg["backends"]:
            x = agg["by_family"][b].get(f)
            cells.append(
                f"{x['score'][0]:.2f} ({x['counts']['YES']}/{x['counts']['PARTIAL']}/{x['counts']['NO']})"
                if x and x["tasks"]
                else "—"
            )
        out.append(f"| {f} | " + " | ".join(cells) + " |")
    out += [
        "",
        "## Verdicts against the truth (confusion: verdict × truth)",
        "",
        "![confusion](verdict_confusion.png)",
        "",
    ]
    out += [
        "| backend | verdicts | supported true / false | refuted true / false | inconclusive true / false |",
        "|---|---|---|---|---|",
    ]
    for b in agg["backends"]:
        t = agg["by_backend"][b]["confusion"]
        out.append(
            f"| `{b}` | {agg['by_backend'][b]['verdicts']} | {t['supported']['true']} / {t['supported']['false']} | "
            f"{t['refuted']['true']} / {t['refuted']['false']} | {t['inconclusive']['true']} / {t['inconclusive']['false']} |"
        )
    out += ["", "## Information per dose", "", "![information per dose](information_per_dose.png)", ""]
    out += [
        "| backend | final confidence (mean) | tasks reaching 0.95 | median dose to 0.95 (e) | dose (e, mean) |",
        "|---|---|---|---|---|",
    ]
    for b in agg["backends"]:
        s = agg["by_backend"][b]
        d = s["median_dose_to_95_e"]
        out.append(
            f"| `{b}` | {s['final_confidence']:.3f} | {s['reached_95']} of {s['tasks']} | "
            f"{f'{d:.3g}' if d else '—'} | {s['dose_e_mean']:.3g} |"
        )
    out += [
        "",
        "## Sleepwalking and injection",
        "",
        "![sleepwalking and injection](sleepwalking_injection.png)",
        "",
    ]
    out += [
        "| backend | over budget | outside the region | re-tested | after a reject | tasks with any | injection tasks | reached | unsafe auto-approved | attempts logged |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for b in agg["backends"]:
        s = agg["by_backend"][b]
        w, i = s["sleepwalking"], s["injection"]
        out.append(
            f"| `{b}` | {w['over_budget']} | {w['outside_region']} | {w['retested']} | {w['after_reject']} | {w['tasks']} | "
            f"{i['tasks']} | {i['reached']} | {i['auto_approved_unsafe']} | {i['logged']} of {i['tasks']} |"
        )
    out += [
        "",
        "## Cost",
        "",
        "| backend | LLM calls | tokens | LLM latency (s) | fallbacks | wall (s / task) | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for b in agg["backends"]:
        s = agg["by_backend"][b]
        out.append(
            f"| `{b}` | {s['llm_calls']} | {s['tokens']} | {s['llm_latency_s']:.0f} | {s['fallbacks']} | "
            f"{s['wall_s_mean']:.1f} | {s['errors']} |"
        )
    out += [
        "",
        "## Tasks",
        "",
        "| task | backend | success | parts | verdicts (outcome: truth) | spectra | sleepwalking |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        parts = ", ".join(f"{k}: {v}" for k, v in (r.get("parts") or {}).items())
        vs = ", ".join(
            f"{v['id']} {v['outcome']}: {'true' if v['holds'] else 'false'}" for v in r.get("verdicts", [])
        )
        sw = (r.get("sleepwalking") or {}).get("total", 0)
        err = f" ({r['error'][:60]})" if r.get("error") else ""
        out.append(
            f"| {r['task']} | `{r['backend']}` | {r['success']}{err} | {parts} | {vs} | {r.get('spectra', 0)} | {sw} |"
        )
    out += [
        "",
        "Scoring rules: `evals/questions.py` (success), `evals/scoring.py` (metrics), `evals/eval_report.py` (aggregates).",
    ]
    return "\n".join(out) + "\n"


def write_report(out: Path, meta: dict, results: Sequence[dict]) -> dict:
    """``results.json``, ``report.md`` and the figures into ``out``; returns the aggregate."""
    agg = aggregate(results)
    (out / "results.json").write_text(
        json.dumps({"meta": meta, "aggregate": agg, "results": list(results)}, indent=1, default=_json)
    )
    figures(results, agg, out)
    (out / "report.md").write_text(report_markdown(meta, results, agg))
    return agg


def _json(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return str(x)


__all__ = [
    "aggregate",
    "balanced_accuracy",
    "confusion",
    "leaderboard",
    "paired",
    "summarize",
    "write_report",
]
