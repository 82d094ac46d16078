"""Read-only questions about a run, answered from its store (the chat's data tools).

Every function takes a ``RunStore`` (opened read-only is enough) and returns plain
text a scientist can read; none of them touches the instrument.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from autoscope.tools.plan import Hypothesis
from autoscope.tools.store import RunStore

log = logging.getLogger(__name__)


def signal_values(store: RunStore, h: Hypothesis) -> list[tuple[str, float, float, float]]:
    """(step id, signal, x_nm, y_nm) of every spectrum measured for ``h``, read back from the store;
    non-finite values are left out."""
    out = []
    seen: set[str] = set()
    for e in _spectra(store):
        sid = e["step_id"]
        if sid.startswith(f"{h.id}-") and sid not in seen:
            seen.add(sid)
            y = float(h.signal(store.load(sid)))
            if np.isfinite(y):
                out.append((sid, y, float(e["x_nm"]), float(e["y_nm"])))
    return out


class StratumValue(NamedTuple):
    step_id: str
    value: float
    x_nm: float
    y_nm: float
    feature: int | None
    site: int | None  # the site index of a sites step (its repeats share it)
    sd: float = float("nan")  # the value's shot-noise sd (nan when not asked for)


def with_shot_noise(h: Hypothesis, caps) -> bool:
    """Whether a verdict on ``h`` takes each value's shot noise from its counts: not for energies
    (located by trimmed means), nor on a backend whose noise does not follow the signal
    (``Capabilities.shot_noise_limited``), where a class's spread comes from its values alone."""
    return not h.energy_signal and caps.shot_noise_limited


def strata_values(store: RunStore, h: Hypothesis, *, noise: bool = False) -> dict[str, list[StratumValue]]:
    """The audit and site spectra of ``h`` grouped by their stratum (class), with the signal of each,
    read back from the store; non-finite values are kept (the verdict counts and drops them).
    ``noise``: also each value's shot-noise sd (the scalarizer's seeded parametric bootstrap)."""
    out: dict[str, list[StratumValue]] = {}
    seen: set[str] = set()
    for e in _spectra(store):
        sid = e["step_id"]
        if not sid.startswith(f"{h.id}-") or "stratum" not in e or sid in seen:
            continue
        seen.add(sid)
        rec = store.load(sid)
        try:
            y = float(h.signal(rec))
            sd = float(h.signal.uncertainty(rec)) if noise else float("nan")
        except ValueError as exc:  # a spectrum the signal cannot be read from is a failed measurement
            log.warning("%s: %s", sid, exc)
            y = sd = float("nan")
        out.setdefault(e["stratum"], []).append(
            StratumValue(sid, y, float(e["x_nm"]), float(e["y_nm"]), e.get("feature"), e.get("site"), sd)
        )
    return out


def per_site(values: list[StratumValue]) -> list[StratumValue]:
    """One value per measured site: repeats on a site are averaged (they are not independent
    draws from the class, so counting them apart would narrow an interval falsely)."""
    groups: dict[object, list[StratumValue]] = {}
    for v in values:
        groups.setdefault(v.step_id if v.site is None else ("site", v.site), []).append(v)
    out = []
    for vs in groups.values():
        finite = [v for v in vs if v.value == v.value]
        mean = sum(v.value for v in finite) / len(finite) if finite else float("nan")
        sd = (
            (sum(v.sd**2 for v in finite) / len(finite)) ** 0.5 / len(finite) ** 0.5
            if finite
            else float("nan")
        )
        out.append(vs[0]._replace(value=mean, sd=sd))
    return out


def _spectra(store: RunStore) -> list[dict]:
    return [e for e in store.events("acquisition") if e.get("record") == "spectrum"]


def measurements(store: RunStore, **_: object) -> str:
    acq = store.events("acquisition")
    spectra = _spectra(store)
    dose = sum(float(e.get("dose_e", 0.0)) for e in acq)
    return f"{len(spectra)} spectra and {len(acq) - len(spectra)} images so far; dose {dose:.3g} electrons."


def _hypotheses(store: RunStore) -> list[Hypothesis]:
    """Every hypothesis of the run, latest first."""
    out = []
    for e in reversed(store.events("hypothesis")):
        out.append(
            Hypothesis.model_validate({k: v for k, v in e.items() if k not in ("kind", "seq", "time_utc")})
        )
    return out


def best(store: RunStore, n: int = 5, **_: object) -> str:
    """The strongest signal of the latest hypothesis that has spectra."""
    hyps = _hypotheses(store)
    if not hyps:
        return "No hypothesis yet, so no signal to rank spectra by."
    for h in hyps:
        rows = sorted(((y, sid, x, yy) for sid, y, x, yy in signal_values(store, h)), reverse=True)
        if rows:
            lines = [f"Strongest {h.signal.describe()} of {h.id} ({len(rows)} spectra):"]
            lines += [
                f"  {sid}: {y:.4g} at ({x:.1f}, {yy:.1f}) nm" for y, sid, x, yy in rows[: max(1, int(n))]
            ]
            return "\n".join(lines)
    return "No spectra measured for any hypothesis yet."


def verdicts(store: RunStore, **_: object) -> str:
    vs = store.events("verdict")
    if not vs:
        return "No verdicts yet."
    return "\n".join(f"{v['hypothesis_id']}: {v['outcome']} — {'; '.join(v['evidence'])}" for v in vs)


def safety(store: RunStore, **_: object) -> str:
    stops = store.events("safety_stop")
    if not stops:
        return "No request has reached a safety limit."
    return "\n".join(f"{s['limit']}: {s['message']}" for s in stops)


def nearest(store: RunStore, x_nm: float | None = None, y_nm: float | None = None, **_: object) -> str:
    spectra = _spectra(store)
    if not spectra or x_nm is None or y_nm is None:
        return "Give a position (x_nm, y_nm) and measure something first."
    e = min(spectra, key=lambda s: (s["x_nm"] - x_nm) ** 2 + (s["y_nm"] - y_nm) ** 2)
    return (
        f"Nearest spectrum to ({x_nm:g}, {y_nm:g}) nm: {e['step_id']} at ({e['x_nm']:.1f}, {e['y_nm']:.1f}) nm, "
        f"dose {e['dose_e']:.3g} e."
    )


TOOLS: dict[str, tuple[Callable[..., str], str]] = {
    "measurements": (measurements, "how many spectra and images, and the dose so far"),
    "best": (best, "the strongest signal of the current hypothesis, with positions"),
    "verdicts": (verdicts, "the verdict on each tested hypothesis and its evidence"),
    "safety": (safety, "requests that reached a safety limit"),
    "nearest": (nearest, "the measured spectrum nearest a position x_nm, y_nm"),
}


def answer(store: RunStore, tool: str, **args: object) -> str:
    if tool not in TOOLS:
        return f"No tool {tool!r}; ask about: {', '.join(TOOLS)}."
    return TOOLS[tool][0](store, **args)
