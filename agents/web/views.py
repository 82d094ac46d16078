"""What the run page draws, read from the run directory (never from the running thread).

``run_state`` is one JSON document: the run's file and status, the survey field, every
measured position (in order, by phase), the monitors' events, the hypotheses with their plans,
dry runs and verdicts, the decisions, the pending gate (with where its dose will go) and which
figures and predictions exist. The page gets it again whenever the event log or the summary
changes; arrays (the survey image, a spectrum, a prediction) have their own routes.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from autoscope.agents import session
from autoscope.agents.context import SURVEY_MAP
from autoscope.agents.gates import effective_decisions
from autoscope.tools.plan_engine import prediction_artifact
from autoscope.tools.store import EVENTS, RunStore
from autoscope.tools.survey import IMAGE_STEP

#: events the monitors panel shows
MONITOR_EVENTS = (
    "monitor",
    "campaign_stopped",
    "safety_stop",
    "acquisition_failed",
    "model_recovered",
    "injection_suspected",
    "planner_fallback",
    "hypotheses_exhausted",
    "run_started",
    "run_resumed",
    "run_complete",
)
_DROP = ("kind", "seq", "time_utc")


def _clean(e: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in e.items() if k not in _DROP}


def _phase(step_id: str) -> str:
    if step_id.startswith("survey"):
        return "survey"
    parts = step_id.split("-")
    return parts[1] if len(parts) > 1 else "other"


def change_stamp(run_dir: Path) -> tuple:
    """What changes whenever the page's state may have: the log's size, the summary's mtime."""
    out = []
    for name in (EVENTS, session.SUMMARY, session.WRITER_OPEN):
        p = Path(run_dir) / name
        try:
            st = p.stat()
            out.append((st.st_size, st.st_mtime_ns))
        except OSError:
            out.append(None)
    return tuple(out)


def run_state(run_dir: Path, status: str, error: str | None = None) -> dict[str, Any]:
    run_dir = Path(run_dir)
    record = json.loads((run_dir / session.RUN_FILE).read_text())
    summ = session._read_json(run_dir / session.SUMMARY) or {}
    spec = record.get("spec") or {}
    state: dict[str, Any] = {
        "name": run_dir.name,
        "status": status,
        "error": error,
        "run": {
            "run_id": record.get("run_id"),
            "scenario": spec.get("scenario"),
            "instrument": record.get("remote") or record.get("replay") or record.get("backend") or "twin",
            "goal": spec.get("goal", ""),
            "notes": spec.get("notes", ""),
            "autonomy": record.get("autonomy"),
            "llm": record.get("llm"),
            "budget": spec.get("budget") or (spec.get("template") or {}).get("budget"),
            "rounds": spec.get("rounds"),
        },
        "summary": {
            k: summ.get(k) for k in ("status", "stop_reason", "measurements", "dose_e", "dose_e_per_A2")
        },
        "answer": (summ.get("answer") or {}).get("text"),
        "survey": None,
        "points": [],
        "monitors": [],
        "hypotheses": [],
        "decisions": [],
        "pending": None,
        "figures": sorted(p.name for p in run_dir.glob("*.png")),
        "predictions": [],
        "report": (run_dir / "report.md").exists(),
        "seq": -1,
    }
    if not (run_dir / EVENTS).exists():
        return state
    store = RunStore.open(run_dir, read_only=True)
    events = store.events()
    state["seq"] = events[-1]["seq"] if events else -1
    rounds: dict[str, dict[str, Any]] = {}
    for e in events:
        kind = e["kind"]
        if kind == "acquisition":
            if e["step_id"] == IMAGE_STEP:
                state["survey"] = {
                    k: e.get(k) for k in ("fov_nm", "center_x_nm", "center_y_nm", "pixels", "dose_e")
                }
                state["survey"]["fov_y_nm"] = e["fov_nm"] * (e.get("rows") or e["pixels"]) / e["pixels"]
            elif e.get("record") == "spectrum":
                state["points"].append(
                    {
                        "step_id": e["step_id"],
                        "x_nm": e.get("x_nm"),
                        "y_nm": e.get("y_nm"),
                        "phase": _phase(e["step_id"]),
                        "stratum": e.get("stratum"),
                        "dose_e": e.get("dose_e"),
                    }
                )
        elif kind in MONITOR_EVENTS:
            state["monitors"].append({"kind": kind, "seq": e["seq"], "time_utc": e["time_utc"], **_clean(e)})
        elif kind == "hypothesis":
            rounds.setdefault(e["id"], {"id": e["id"]})["hypothesis"] = _clean(e)
        elif kind == "plan":
            rounds.setdefault(e["hypothesis_id"], {"id": e["hypothesis_id"]})["plan"] = _clean(e)
        elif kind == "dry_run":
            rounds.setdefault(e["hypothesis_id"], {"id": e["hypothesis_id"]})["dry_run"] = _clean(e)
        elif kind == "verdict":
            v = _clean(e)
            if v.get("figure"):
                v["figure"] = Path(v["figure"]).name
            rounds.setdefault(e["hypothesis_id"], {"id": e["hypothesis_id"]})["verdict"] = v
        elif kind == "round_executed":
            r = _clean(e)
            if r.get("figure"):
                r["figure"] = Path(r["figure"]).name
            rounds.setdefault(e["hypothesis_id"], {"id": e["hypothesis_id"]})["result"] = r
    state["hypotheses"] = [
        rounds[k] for k in sorted(rounds, key=lambda k: int(k[1:]) if k[1:].isdigit() else 0)
    ]
    state["decisions"] = [
        _clean(e) for e in effective_decisions([e for e in events if e["kind"] == "decision"])
    ]
    state["predictions"] = [
        h["id"] for h in state["hypotheses"] if (run_dir / prediction_artifact(h["id"])).exists()
    ]
    if status == "stopped":
        pending = session.pending_gate(run_dir)
        if pending is not None:
            p = pending.as_json()
            p["field_errors"] = session.error_field(pending.request.error)
            p["edit_base"] = edit_base(state, pending.request)
            if pending.request.gate == "plan" and pending.request.dry_run is not None:
                p["dose_targets"] = dose_targets(store, pending.request)
            state["pending"] = p
    return state


def edit_base(state: dict[str, Any], request) -> dict[str, Any]:
    """What an edit at this gate changes: the proposal, or at an intervention the round's plan."""
    if request.gate != "intervention":
        return request.proposal
    current = next((h for h in state["hypotheses"] if h["id"] == f"H{request.round}"), {})
    return current.get("plan") or {}


def dose_targets(store: RunStore, request) -> list[dict[str, Any]] | None:
    """Where the pending plan's dose may go (``tools/dry_run.dose_targets``), or None."""
    from autoscope.tools.dry_run import dose_targets as targets
    from autoscope.tools.grounding import population_grid
    from autoscope.tools.grounding.model import SurveyMap
    from autoscope.tools.plan import Plan

    text = store.read_artifact(SURVEY_MAP)
    if text is None or not store.has_step(IMAGE_STEP):
        return None
    try:
        plan = Plan.model_validate(request.proposal)
    except ValueError:
        return None
    smap = SurveyMap.model_validate_json(text)
    grid = population_grid(store.load(IMAGE_STEP)).xy_nm
    return targets(plan, request.dry_run, smap, grid)


def survey_png(run_dir: Path) -> bytes:
    """The survey image alone, row 0 at the top, as a grey PNG (the page draws over it)."""
    from matplotlib.image import imsave

    image = RunStore.open(run_dir, read_only=True).load(IMAGE_STEP)
    data = np.asarray(image.data, dtype=float)
    lo, hi = np.nanpercentile(data, [0.5, 99.5])
    buf = io.BytesIO()
    imsave(buf, np.clip((data - lo) / max(hi - lo, 1e-12), 0, 1), cmap="gray", format="png")
    return buf.getvalue()


def spectrum(run_dir: Path, step_id: str) -> dict[str, Any]:
    store = RunStore.open(run_dir, read_only=True)
    rec = store.load(step_id)
    if not hasattr(rec, "counts"):
        raise KeyError(step_id)
    e = store.step_event(step_id)
    return {
        "step_id": step_id,
        "x_nm": rec.x_nm,
        "y_nm": rec.y_nm,
        "energy_eV": [round(float(v), 4) for v in rec.energy_eV],
        "counts": [float(v) for v in np.nan_to_num(rec.counts)],
        "stratum": e.get("stratum"),
        "dose_e": e.get("dose_e"),
    }


def prediction(run_dir: Path, hypothesis_id: str) -> dict[str, Any]:
    text = RunStore.open(run_dir, read_only=True).read_artifact(prediction_artifact(hypothesis_id))
    if text is None:
        raise KeyError(hypothesis_id)
    return json.loads(text)
