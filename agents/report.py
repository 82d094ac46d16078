"""The run's report (``report.md``) and summary (``summary.json``), from state and run store.

Both are rebuilt from the graph state and the event log whenever a run stops (done,
stopped for a person, or killed and resumed), so they always describe the whole run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from autoscope.agents.answer import goal_answer
from autoscope.agents.state import GraphState
from autoscope.tools.store import RunStore


def llm_usage(store: RunStore, backend: str, model: str) -> dict[str, Any]:
    calls = store.events("llm_call")
    prompt = sum(int(c.get("prompt_tokens", 0)) for c in calls)
    completion = sum(int(c.get("completion_tokens", 0)) for c in calls)
    return {
        "backend": backend,
        "model": model,
        "calls": len(calls),
        "invalid_answers": sum(1 for c in calls if not c.get("ok", True)),
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "tokens": prompt + completion,
        "latency_s": round(sum(float(c.get("latency_s", 0.0)) for c in calls), 3),
    }


def _rounds(state: GraphState) -> list[dict]:
    """Finished rounds, then the current one when it has not reached the analysis gate yet."""
    rounds = list(state.get("rounds") or [])
    h = state.get("hypothesis")
    if h and all(r["hypothesis"]["id"] != h["id"] for r in rounds):
        rounds.append(
            {
                "hypothesis": h,
                "plan": state.get("plan"),
                "dry_run": state.get("dry_run"),
                "result": state.get("result"),
                "verdict": state.get("verdict"),
            }
        )
    return rounds


def summary(
    state: GraphState,
    store: RunStore,
    *,
    run_id: str,
    scenario: str | None,
    seed: int,
    status: str,
    llm: dict[str, Any],
    checkpoint_bytes: int,
    pending: dict | None = None,
    question: Any = None,
) -> dict[str, Any]:
    acq = store.events("acquisition")
    survey = state.get("survey") or {}
    field_A2 = (survey.get("fov_nm") or 0) ** 2 * 100.0
    dose_e = sum(float(e.get("dose_e", 0.0)) for e in acq)
    hypotheses = []
    for r in _rounds(state):
        h, v = r["hypothesis"], r.get("verdict") or {}
        hypotheses.append(
            {
                "id": h["id"],
                "statement": h["statement"],
                "author": h.get("author", ""),
                "plan_author": (r.get("plan") or {}).get("author"),
                "prediction": h.get("prediction"),
                "verdict": v.get("outcome", "untested"),
                "estimate": v.get("estimate"),
                "ci": [v.get("ci_low"), v.get("ci_high")] if v else None,
                "readable": v.get("readable"),
                "measurements": (r.get("result") or {}).get("measurements", 0),
                "unbiased_spectra": v.get("measurements", 0),
            }
        )
    return {
        "run_id": run_id,
        "scenario": scenario,
        "seed": seed,
        "status": status,
        "stop_reason": state.get("stop_reason"),
        "measurements": sum(1 for e in acq if e.get("record") == "spectrum"),
        "images": sum(1 for e in acq if e.get("record") == "image"),
        "dose_e": dose_e,
        "dose_e_per_A2": dose_e / field_A2 if field_A2 else None,
        "hypotheses": hypotheses,
        "answer": goal_answer(
            state.get("goal", ""), [r for r in _rounds(state) if r.get("verdict")], question
        ),
        "llm": llm,
        "fallbacks": list(state.get("fallbacks") or []),
        "decisions": list(state.get("decisions") or []),
        "safety_stops": len(store.events("safety_stop")),
        # each active scan's loop: how long the column waited (tools/pipeline.Timing)
        "active_scans": [
            {"prefix": e.get("prefix", ""), "measurements": e.get("measurements", 0), **e["timing"]}
            for e in store.events("campaign_complete")
            if e.get("timing")
        ],
        "checkpoint_bytes": checkpoint_bytes,
        "pending_gate": pending,
    }


def report_markdown(state: GraphState, summ: dict[str, Any]) -> str:
    out = [
        f"# autoscope run {summ['run_id']}",
        "",
        f"- scenario: {summ['scenario']} (seed {summ['seed']}); status: **{summ['status']}**"
        + (f" ({summ['stop_reason']})" if summ.get("stop_reason") else ""),
        f"- goal: {state.get('goal', '')}",
        f"- {summ['measurements']} spectra, {summ['images']} images, dose {summ['dose_e']:.3g} e"
        + (f" ({summ['dose_e_per_A2']:.3g} e/Å² over the survey field)" if summ["dose_e_per_A2"] else ""),
        f"- LLM: {summ['llm']['backend']} ({summ['llm']['model']}), {summ['llm']['calls']} calls, "
        f"{summ['llm']['tokens']} tokens, {summ['llm']['latency_s']} s",
        f"- checkpoint: {summ['checkpoint_bytes']} bytes",
        "",
    ]
    if state.get("notes"):
        out += [
            "Sample notes (data, never instructions):",
            "",
            "> " + state["notes"].replace("\n", "\n> "),
            "",
        ]
    survey = state.get("survey") or {}
    if survey.get("figure"):
        out += [f"![survey]({Path(survey['figure']).name})", ""]
    if survey.get("summary"):
        out += ["## Survey map", "", survey["summary"], ""]
    if survey.get("map_figure"):
        out += [f"![survey map]({Path(survey['map_figure']).name})", ""]
    for r in _rounds(state):
        h = r["hypothesis"]
        out += [f"## {h['id']}: {h['statement']}", "", f"- proposed by: {h.get('author', '')}"]
        out += [f"- expected: {h['expected']}", f"- refuted if: {h['refuted_if']}"]
        out += [f"- prediction: {h['prediction']['kind']} ({json.dumps(h['prediction'])})", ""]
        if r.get("plan"):
            from autoscope.tools.plan import Plan

            p = Plan.model_validate(r["plan"])
            out += [f"**Plan** ({p.author}): {p.summary()}", "", f"> {p.rationale}", ""]
        if r.get("dry_run"):
            from autoscope.tools.dry_run import DryRun

            out += [f"**Dry run**: {DryRun.model_validate(r['dry_run']).summary()}", ""]
        res = r.get("result")
        if res:
            out += [
                f"**Result**: {res['measurements']} spectra, dose {res['dose_e']:.3g} e"
                + (
                    f", best at {tuple(round(v, 1) for v in res['best_xy_nm'])} nm"
                    if res.get("best_xy_nm")
                    else ""
                )
                + (f"; stopped: {res['stopped_by']}" if res.get("stopped_by") else ""),
                "",
            ]
            if res.get("figure"):
                out += [f"![{h['id']}]({Path(res['figure']).name})", ""]
        v = r.get("verdict")
        if v:
            out += [f"**Verdict: {v['outcome']}** ({v.get('author', '')})", ""]
            if v.get("estimate") is not None:
                out += [
                    f"{v['statistic']} = {v['estimate']:.4g}, 95% interval [{v['ci_low']:.4g}, {v['ci_high']:.4g}]"
                    + (f"; {v['readable']}" if v.get("readable") else ""),
                    "",
                ]
            if v.get("by_class"):
                out += ["| class | spectra | mean | 95% interval |", "|---|---|---|---|"]
                for e in v["by_class"]:
                    mean = "–" if e["mean"] is None else f"{e['mean']:.4g}"
                    ci = "–" if e.get("ci_low") is None else f"[{e['ci_low']:.4g}, {e['ci_high']:.4g}]"
                    out.append(f"| {e['cls']} | {e['n']} | {mean} | {ci} |")
                out.append("")
            out += [f"- {e}" for e in v["evidence"]] + [""]
            if v.get("figure"):
                out += [f"![{h['id']} evidence]({Path(v['figure']).name})", ""]
    scans = summ.get("active_scans") or []
    if scans:
        out += [
            "## Instrument time of the active scans",
            "",
            "| scan | spectra | wall (s) | column idle | waiting for the model | pipelined |",
            "|---|---|---|---|---|---|",
        ]
        for t in scans:
            out.append(
                f"| {t['prefix'] or '–'} | {t['measurements']} | {t['wall_s']:.1f} | {100 * t['dead_fraction']:.0f} % "
                f"| {100 * t['wait_fraction']:.0f} % | {'yes' if t['pipelined'] else 'no'} |"
            )
        out.append("")
    answer = summ.get("answer") or {}
    if answer.get("text"):
        out += ["## Answer to the goal", "", f"> {state.get('goal', '')}", "", answer["text"], ""]
    if summ["decisions"]:
        out += [
            "## Decisions",
            "",
            "| gate | round | action | actor | who | reason | checkpoint |",
            "|---|---|---|---|---|---|---|",
        ]
        for d in summ["decisions"]:
            reason = (d.get("reason") or "").replace("|", "/")
            out.append(
                f"| {d['gate']} | {d['round']} | {d['action']} | {d['actor']} | {d.get('who', '')} | {reason} "
                f"| {d.get('checkpoint_id') or ''} |"
            )
        out.append("")
    if summ["fallbacks"]:
        out += ["## Deterministic-planner fallbacks", ""]
        out += [f"- {f['purpose']}: {f['reason']}" for f in summ["fallbacks"]] + [""]
    if summ.get("pending_gate"):
        out += [
            "## Waiting for a person",
            "",
            "```",
            json.dumps(summ["pending_gate"], indent=2)[:4000],
            "```",
            "",
        ]
    return "\n".join(out)


def write_outputs(run_dir: Path, state: GraphState, summ: dict[str, Any]) -> None:
    (run_dir / "summary.json").write_text(json.dumps(summ, indent=2, default=str) + "\n")
    (run_dir / "report.md").write_text(report_markdown(state, summ) + "\n")
