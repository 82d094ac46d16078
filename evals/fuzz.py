"""Property-based fuzzing of everything a person, a model or a client can hand autoscope.

Five targets, each a ``hypothesis`` strategy of generated inputs (well-formed, malformed,
extreme and absurd): limits files, run files, plans (validated, dry-run, and executed on the
twin), tool calls on the interlocked instrument, and HTTP request bodies to the instrument
server. Each case ends in one of three outcomes:

- **accepted**: the input was valid and was carried out;
- **rejected**: a clear error that names the field (``ConfigError.field``,
  ``InvalidRequest.field``, ``SafetyLimitExceeded.limit``, a 4xx body with ``field``/``limit``
  or a validation ``loc``) — a rejection that names nothing counts as a finding;
- **crash**: anything else (an unexpected exception type, an HTTP 500, a server that stops
  answering) — a finding.

Independently of the interlocks, a ``LimitRecorder`` sits between ``SafeMicroscope`` and
the twin and checks every request that reaches the twin against the limits itself (beam
current, the travel box for the stage, the probe and every image field, the total dose and
the acquisition count). Any request it sees beyond a limit is a **violation**; the
benchmark's claim is zero.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from autoscope.agents.run_spec import RunSpec
from autoscope.instruments.config_files import validated
from autoscope.instruments.errors import ConfigError, InstrumentError, InvalidRequest, SafetyLimitExceeded
from autoscope.instruments.records import electrons
from autoscope.instruments.safety import SafeMicroscope, SafetyLimits
from autoscope.instruments.sim.scenarios import make_microscope

#: tight limits for the fuzzed instrument: low enough that generated requests often cross them
FUZZ_LIMITS = SafetyLimits(
    max_total_dose_e=5.0e10,
    max_dose_e_per_A2=2.0e5,
    dose_cell_nm=2.0,
    max_current_pA=60.0,
    stage_x_min_nm=-800.0,
    stage_x_max_nm=800.0,
    stage_y_min_nm=-800.0,
    stage_y_max_nm=800.0,
    max_acquisitions=25,
    max_wall_time_s=30.0,
)
_LIMIT_NAMES = set(SafetyLimits.model_fields)


@dataclass
class Tally:
    """Outcomes of one fuzz target."""

    target: str
    cases: int = 0
    accepted: int = 0
    rejected: int = 0
    unnamed: list[str] = field(default_factory=list)  # rejections that named no field
    crashes: list[str] = field(default_factory=list)
    executed: int = 0  # plans carried out on the twin

    def row(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "cases": self.cases,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "unnamed_rejections": len(self.unnamed),
            "crashes": len(self.crashes),
            "executed": self.executed,
            "examples": (self.crashes + self.unnamed)[:3],
        }


class LimitRecorder:
    """Wraps the twin; checks every request that reaches it against ``limits`` on its own."""

    def __init__(self, inner: Any, limits: SafetyLimits) -> None:
        self._inner, self._lim = inner, limits
        self.requests = 0
        self.violations: list[str] = []
        self._dose_e = 0.0
        self._acquisitions = 0

    def _box(self, what: str, x0: float, x1: float, y0: float, y1: float) -> None:
        lim = self._lim
        if not (
            lim.stage_x_min_nm <= x0 <= x1 <= lim.stage_x_max_nm
            and lim.stage_y_min_nm <= y0 <= y1 <= lim.stage_y_max_nm
        ):
            self.violations.append(f"{what} [{x0:g}, {x1:g}] × [{y0:g}, {y1:g}] nm outside the travel box")

    def _exposure(self, what: str, seconds: float) -> None:
        current = float(self._inner.beam_current_pA())
        if current > self._lim.max_current_pA:
            self.violations.append(f"{what} at {current:g} pA > {self._lim.max_current_pA:g} pA")
        self._dose_e += electrons(current, seconds)
        self._acquisitions += 1
        if self._dose_e > self._lim.max_total_dose_e:
            self.violations.append(f"{what}: total dose {self._dose_e:.3g} e beyond the limit")
        if self._acquisitions > self._lim.max_acquisitions:
            self.violations.append(f"{what}: acquisition {self._acquisitions} beyond the limit")

    def acquire_image(self, fov_nm, pixels, dwell_s, detector=None, rows=None):  # type: ignore[no-untyped-def]
        self.requests += 1
        sx, sy = self._inner.stage_position_nm()
        h = fov_nm * (rows or pixels) / pixels / 2
        self._box("image field", sx - fov_nm / 2, sx + fov_nm / 2, sy - h, sy + h)
        self._exposure("image", dwell_s * pixels * (rows or pixels))
        kw = {} if rows is None else {"rows": rows}
        return self._inner.acquire_image(
            fov_nm, pixels, dwell_s, *(() if detector is None else (detector,)), **kw
        )

    def acquire_spectrum(self, x_nm, y_nm, dwell_s, lo, hi):  # type: ignore[no-untyped-def]
        self.requests += 1
        self._box("spectrum", x_nm, x_nm, y_nm, y_nm)
        self._exposure("spectrum", dwell_s)
        return self._inner.acquire_spectrum(x_nm, y_nm, dwell_s, lo, hi)

    def move_stage(self, x_nm, y_nm):  # type: ignore[no-untyped-def]
        self.requests += 1
        self._box("stage", x_nm, x_nm, y_nm, y_nm)
        return self._inner.move_stage(x_nm, y_nm)

    def move_probe(self, x_nm, y_nm):  # type: ignore[no-untyped-def]
        self.requests += 1
        self._box("probe", x_nm, x_nm, y_nm, y_nm)
        return self._inner.move_probe(x_nm, y_nm)

    def set_beam_current(self, current_pA):  # type: ignore[no-untyped-def]
        self.requests += 1
        if not current_pA <= self._lim.max_current_pA:
            self.violations.append(f"current set to {current_pA!r} pA")
        return self._inner.set_beam_current(current_pA)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def fuzzed_instrument(
    seed: int = 0, limits: SafetyLimits = FUZZ_LIMITS
) -> tuple[SafeMicroscope, LimitRecorder]:
    twin = make_microscope("plasmonic", seed=seed)
    twin.set_beam_current(40.0)
    twin.move_stage(0.0, 0.0)
    rec = LimitRecorder(twin, limits)
    return SafeMicroscope(rec, limits), rec


# ------------------------------------------------------------------ strategies
_numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-1e4, max_value=1e4),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.sampled_from([0, 0.0, -0.0, 1e-300, 1e300, -1, 8, 4096, 4097, 600.0, 1e9]),
)
_junk = st.one_of(
    _numbers, st.text(max_size=20), st.none(), st.booleans(), st.lists(st.integers(), max_size=3)
)
_values = st.one_of(_numbers, _junk)


def _mapping(keys: list[str]) -> st.SearchStrategy[dict]:
    """Mappings over known keys (and some unknown), each value anything."""
    known = st.dictionaries(st.sampled_from(keys), _values, max_size=len(keys))
    extra = st.dictionaries(st.text(min_size=1, max_size=12), _values, max_size=2)
    return st.builds(lambda a, b, drop: {**a, **(b if drop else {})}, known, extra, st.booleans())


def _run(strategy: st.SearchStrategy, n: int, check: Callable[[Any], None], seed: int) -> None:
    @settings(
        max_examples=n,
        database=None,
        deadline=None,
        derandomize=False,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def case(value: Any) -> None:
        check(value)

    from hypothesis import seed as hyp_seed

    hyp_seed(seed)(case)()


def _classify(tally: Tally, action: Callable[[], Any], names: Callable[[Exception], str | None]) -> Any:
    tally.cases += 1
    try:
        out = action()
    except Exception as exc:
        if not isinstance(exc, ConfigError | InstrumentError | ValueError):
            tally.crashes.append(f"{type(exc).__name__}: {exc}"[:300])
            return None
        named = names(exc)
        tally.rejected += 1
        if not named:
            tally.unnamed.append(f"{type(exc).__name__}: {exc}"[:300])
        return None
    tally.accepted += 1
    return out


#: errors about the instrument's state rather than a field (the code names what is wrong)
_STATE_CODES = {"beam_blanked", "step_conflict"}


def _named(exc: Exception) -> str | None:
    if isinstance(exc, SafetyLimitExceeded):
        return exc.limit if exc.limit in _LIMIT_NAMES else None
    if getattr(exc, "code", None) in _STATE_CODES:
        return exc.code  # type: ignore[union-attr]
    return getattr(exc, "field", None) or None


# ------------------------------------------------------------------ targets
def fuzz_limits(n: int, seed: int = 0) -> Tally:
    tally = Tally("limits files")
    keys = list(SafetyLimits.model_fields)
    _run(
        _mapping(keys),
        n,
        lambda v: _classify(tally, lambda: SafetyLimits.checked(v, "limits.yaml"), _named),
        seed,
    )
    return tally


def fuzz_run_files(n: int, seed: int = 0) -> Tally:
    tally = Tally("run files")
    from autoscope.tools.campaign import default_campaign_path, load_campaign

    template = load_campaign(default_campaign_path("plasmonic")).model_dump(mode="json")
    keys = [k for k in RunSpec.model_fields if k != "template"]

    def check(v: dict) -> None:
        values = {"template": template, **v}
        _classify(tally, lambda: validated(RunSpec, values, "run.yaml"), _named)

    _run(_mapping(keys), n, check, seed)
    return tally


_TOOL_OPS = (
    "acquire_image",
    "acquire_spectrum",
    "move_stage",
    "move_probe",
    "set_beam_current",
    "unblank_beam",
)


def _tool_call() -> st.SearchStrategy[tuple[str, tuple]]:
    f = st.one_of(_numbers, st.floats(min_value=-1000, max_value=1000), st.text(max_size=4), st.none())
    return st.one_of(
        st.tuples(st.just("acquire_image"), st.tuples(f, st.one_of(st.integers(-5, 5000), f), f)),
        st.tuples(st.just("acquire_spectrum"), st.tuples(f, f, f, f, f)),
        st.tuples(st.just("move_stage"), st.tuples(f, f)),
        st.tuples(st.just("move_probe"), st.tuples(f, f)),
        st.tuples(st.just("set_beam_current"), st.tuples(f)),
        st.tuples(st.just("unblank_beam"), st.just(())),
    )


def fuzz_tool_calls(n: int, seed: int = 0) -> tuple[Tally, list[str], int]:
    """Sequences of calls on one interlocked twin per case; returns the tally, violations, requests."""
    tally = Tally("tool calls")
    violations: list[str] = []
    reached = [0]

    def check(calls: list[tuple[str, tuple]]) -> None:
        scope, rec = fuzzed_instrument()
        scope.unblank_beam()
        for op, args in calls:
            _classify(tally, lambda op=op, args=args: getattr(scope, op)(*args), _named)
        violations.extend(rec.violations)
        reached[0] += rec.requests

    _run(st.lists(_tool_call(), min_size=1, max_size=8), max(1, n // 4), check, seed)
    return tally, violations, reached[0]


# ------------------------------------------------------------------ HTTP bodies
_ROUTES = {
    "/image": ["fov_nm", "pixels", "dwell_s", "detector", "rows"],
    "/spectrum": ["x_nm", "y_nm", "dwell_s", "energy_min_eV", "energy_max_eV"],
    "/stage": ["x_nm", "y_nm"],
    "/probe": ["x_nm", "y_nm"],
    "/beam/current": ["current_pA"],
}


def _body() -> st.SearchStrategy[tuple[str, Any]]:
    def for_route(route: str) -> st.SearchStrategy:
        sane = {
            "fov_nm": st.floats(1, 3000), "pixels": st.integers(8, 64), "dwell_s": st.floats(1e-7, 1e-5),
            "x_nm": st.floats(-1500, 1500), "y_nm": st.floats(-1500, 1500), "energy_min_eV": st.just(-1.0),
            "energy_max_eV": st.just(4.0), "current_pA": st.floats(1, 120), "detector": st.just("haadf"),
            "rows": st.none(),
        }  # fmt: skip
        keys = _ROUTES[route]
        valid = st.fixed_dictionaries({k: sane[k] for k in keys})
        nearly = st.fixed_dictionaries({k: st.one_of(sane[k], _values) for k in keys})
        return st.one_of(valid, nearly, _mapping(keys), _junk, st.binary(max_size=64))

    return st.sampled_from(sorted(_ROUTES)).flatmap(lambda r: st.tuples(st.just(r), for_route(r)))


def fuzz_http(n: int, seed: int = 0) -> tuple[Tally, list[str], int]:
    """JSON (and non-JSON) bodies to every POST route of a served, interlocked twin."""
    from autoscope.instruments.remote.server import create_app, serve_in_thread

    tally = Tally("HTTP bodies")
    scope, rec = fuzzed_instrument(limits=FUZZ_LIMITS.model_copy(update={"max_acquisitions": 10**6}))
    token = "fuzz-token"
    with (
        serve_in_thread(create_app(scope, token), name="fuzz-server") as url,
        httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as http,
    ):
        http.post("/beam/unblank")

        def check(case: tuple[str, Any]) -> None:
            route, body = case
            tally.cases += 1
            try:
                if isinstance(body, bytes):
                    r = http.post(route, content=body, headers={"content-type": "application/json"})
                else:
                    r = http.post(
                        route,
                        content=json.dumps(body, allow_nan=True),
                        headers={"content-type": "application/json"},
                    )
            except httpx.HTTPError as exc:
                tally.crashes.append(f"{route}: no answer ({exc})")
                return
            if r.status_code == 200:
                tally.accepted += 1
                return
            if r.status_code >= 500:
                tally.crashes.append(f"{route} {r.status_code}: {r.text[:200]} (body {str(body)[:200]})")
                return
            tally.rejected += 1
            try:
                payload = r.json()
            except ValueError:
                payload = {}
            detail = payload.get("detail") if isinstance(payload, dict) else None
            named = (
                isinstance(payload, dict)
                and (payload.get("field") or payload.get("limit") or payload.get("error") in _STATE_CODES)
                or (isinstance(detail, list) and detail and detail[0].get("loc"))
            )
            if not named:
                tally.unnamed.append(f"{route} {r.status_code}: {r.text[:200]}")

        _run(_body(), n, check, seed)
        if http.get("/health").status_code != 200:
            tally.crashes.append("the server stopped answering /health")
    return tally, rec.violations, rec.requests


# ------------------------------------------------------------------ plans
def _mutations(base: dict) -> st.SearchStrategy[dict]:
    """A valid plan with fields of its steps replaced, steps dropped, duplicated or invented."""
    steps = base["steps"]
    paths = [(i, k) for i, s in enumerate(steps) for k in s if k != "kind"]
    invented = st.fixed_dictionaries(
        {"kind": st.sampled_from(["spectrum_at", "survey", "active_scan", "sites", "audit", "teleport"])},
        optional={
            k: _values for k in ("x_nm", "y_nm", "dwell_s", "energy_min_eV", "energy_max_eV", "budget")
        },
    )

    numeric = [
        (i, k) for i, k in paths if isinstance(steps[i][k], int | float) and not isinstance(steps[i][k], bool)
    ]

    def scale(changes: list[tuple[tuple[int, str], float]]) -> dict:
        plan = json.loads(json.dumps(base))
        for (i, k), f in changes:
            v = plan["steps"][i][k] * f
            plan["steps"][i][k] = int(v) if isinstance(steps[i][k], int) else v
        return plan

    scaled = st.builds(
        scale,
        st.lists(
            st.tuples(st.sampled_from(numeric), st.sampled_from([0.5, 2.0, 10.0, 100.0, 1e4])), max_size=3
        ),
    )

    def apply(changes: list[tuple[int, Any]], extra: list[dict], drop: int | None, top: dict) -> dict:
        plan = json.loads(json.dumps(base))
        for (i, k), v in changes:
            plan["steps"][i][k] = v
        if drop is not None and drop < len(plan["steps"]):
            del plan["steps"][drop]
        plan["steps"] += extra
        return {**plan, **top}

    return st.one_of(
        scaled,
        st.builds(
            apply,
            st.lists(st.tuples(st.sampled_from(paths), _values), max_size=3),
            st.lists(invented, max_size=2),
            st.one_of(st.none(), st.integers(0, len(steps))),
            st.dictionaries(
                st.sampled_from(["hypothesis_id", "rationale", "steps", "extra"]), _junk, max_size=1
            ),
        ),
    )


def fuzz_plans(n: int, seed: int = 0, execute_every: int = 5) -> tuple[Tally, list[str], int]:
    """Plans mutated from the deterministic planner's: validated, checked, dry-run, and one in
    ``execute_every`` carried out on a fresh interlocked twin (whether or not its dry run passed —
    a person may approve what the dry run refused; the interlocks must still hold)."""
    import tempfile
    from pathlib import Path

    from autoscope.agents import deterministic
    from autoscope.evals.surveyed import surveyed
    from autoscope.tools.dry_run import Usage, dry_run
    from autoscope.tools.plan import Plan, check_plan
    from autoscope.tools.plan_engine import execute_plan
    from autoscope.tools.store import RunStore
    from autoscope.tools.survey import IMAGE_STEP

    sv = surveyed("plasmonic", 0)
    h = deterministic.hypothesis(sv.spec, sv.smap, sv.present, sv.spectra, 1, [])
    base = deterministic.plan(sv.spec, h, sv.step, sv.caps, budget_left=12, rounds_left=1, present=sv.present)
    tally = Tally("plans")
    violations: list[str] = []
    reached = [0]
    counter = [0]

    def carry_out(plan: Plan) -> None:
        scope, rec = fuzzed_instrument()
        with tempfile.TemporaryDirectory() as tmp, RunStore.create(Path(tmp) / "run") as store:
            store.save_image(IMAGE_STEP, sv.image)
            # stopped by an interlock or refused: what matters is what reached the twin
            with contextlib.suppress(SafetyLimitExceeded, InstrumentError, ValueError):
                execute_plan(
                    scope, store, plan, h, seed=0, run_survey_matches=plan.survey == sv.step, smap=sv.smap
                )
        tally.executed += 1
        violations.extend(rec.violations)
        reached[0] += rec.requests

    def check(value: dict) -> None:
        def validate() -> Plan:
            try:
                plan = Plan.model_validate(value)
            except Exception as exc:  # pydantic's ValidationError: name its location
                from pydantic import ValidationError

                if isinstance(exc, ValidationError):
                    loc = ".".join(str(p) for p in exc.errors()[0].get("loc", ()))
                    raise InvalidRequest(loc or "", str(exc).splitlines()[0]) from None
                raise
            check_plan(plan, h, sv.caps)
            return plan

        def named(exc: Exception) -> str | None:
            if isinstance(exc, InvalidRequest):
                return exc.field or None
            text = str(exc)  # PlanValidationError: "field: message"
            head = text.split(":", 1)[0]
            return head if ":" in text and " " not in head.strip() else None

        plan = _classify(tally, validate, named)
        if plan is None:
            return
        d = dry_run(plan, sv.caps, FUZZ_LIMITS, Usage(survey=sv.step), run_budget_left=40)
        counter[0] += 1
        if counter[0] % execute_every == 0 or not d.ok and counter[0] % 2 == 0:
            carry_out(plan)

    _run(_mutations(base.model_dump(mode="json")), n, check, seed)
    return tally, violations, reached[0]
