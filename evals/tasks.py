"""Evaluation tasks, generated from seeds: suites of task families on the simulated microscope.

A **suite** (YAML, ``evals/suites/<name>.yaml`` or any file) names task families; a **family**
is a scenario variant — the twin's sample generator with its own parameters (particle
populations and shapes, defect densities and beam sensitivity, where the interface lies), the
twin's settings (drift, injected instrument faults at stated rates), a goal with its typed
question, sample notes as a scientist would write them (or with an instruction planted in them),
a budget, the autonomy level and, where a person takes part, what that person answers — and how
many seeds. Each seed makes one **task**: a new sample layout drawn from the seed. Its ground
truth comes from the oracle when it is scored (``evals/questions.py``, ``evals/truth.py``).

**Splits**: within a family the seeds alternate, the first ``dev``, the next ``test``, and so on,
so tuning prompts or the planner on ``dev`` never sees a ``test`` sample; reported figures come
from ``test``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from autoscope.agents.question import Question
from autoscope.agents.run_spec import DEFAULT_GOALS, default_question
from autoscope.evals.injection import CASES
from autoscope.instruments.config_files import read_mapping, validated
from autoscope.instruments.errors import ConfigError
from autoscope.instruments.factory import check_sample
from autoscope.instruments.sim.config import SimConfig

SUITES_DIR = Path(__file__).parent / "suites"
Scenario = Literal["plasmonic", "tmd-defects", "oxide-interface"]
Split = Literal["dev", "test", "all"]
Gate = Literal["hypothesis", "plan", "intervention", "analysis"]
#: what a scripted person may answer at a gate
PersonAnswer = Literal["approve", "reject"]
NOTE_CASES = [c for c in CASES if c.channel == "notes"]


class Family(BaseModel):
    """One kind of task; ``seeds`` tasks are made from it."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    scenario: Scenario
    seeds: int = Field(ge=1, le=1000)
    seed_base: int = Field(0, ge=0)
    description: str = ""
    sample: dict[str, Any] = Field(default_factory=dict, description="the sample generator's parameters")
    sim: dict[str, Any] = Field(
        default_factory=dict, description="twin settings (drift, faults): SimConfig fields"
    )
    goal: str | None = Field(None, description="default: the scenario's goal")
    question: dict[str, Any] | None = Field(
        None, description="default: the scenario's question on its signal"
    )
    notes: str = ""
    injection: bool = Field(False, description="plant one of the injection cases' instructions in the notes")
    budget: int = Field(120, ge=10, le=5000, description="spectra the goal may spend")
    rounds: int = Field(1, ge=1, le=10)
    autonomy: Literal["manual", "supervised", "autonomous"] = "autonomous"
    pipeline: bool = Field(
        False,
        description="the model runs beside the instrument and steps are stored while the next is measured",
    )
    person: dict[Gate, list[PersonAnswer]] = Field(
        default_factory=dict,
        description="a scripted person's answers at a gate, in order (then approve); needs manual autonomy",
    )

    @model_validator(mode="after")
    def _check(self) -> Family:
        check_sample(self.scenario, self.sample)
        validated(SimConfig, dict(self.sim), None)
        if self.person and self.autonomy != "manual":
            raise ValueError("person: a scripted person answers only under manual autonomy")
        return self


class Suite(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    families: list[Family] = Field(min_length=1)


class Task(BaseModel):
    """One task: everything a run needs, plus what its scoring needs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    family: str
    split: Literal["dev", "test"]
    scenario: Scenario
    seed: int
    sample: dict[str, Any] = {}
    sim: dict[str, Any] = {}
    goal: str
    question: Question
    notes: str = ""
    injection_case: str | None = None
    budget: int
    rounds: int
    autonomy: str
    person: dict[str, list[str]] = {}
    pipeline: bool = False


def load_suite(name_or_path: str | Path) -> Suite:
    """A shipped suite by name (``standard``, ``smoke``) or a suite file; errors name the field."""
    p = Path(name_or_path)
    if not p.suffix:
        p = SUITES_DIR / f"{name_or_path}.yaml"
        if not p.exists():
            known = ", ".join(sorted(x.stem for x in SUITES_DIR.glob("*.yaml")))
            raise ConfigError("suite", f"no suite named {name_or_path!r}; shipped: {known}")
    try:
        return validated(Suite, read_mapping(p, "suite"), str(p))
    except ConfigError:
        raise
    except ValueError as exc:  # a sample variant refused inside a family
        raise ConfigError("families", str(exc), str(p)) from None


def _question(f: Family) -> Any:
    if f.question is not None:
        return TypeAdapter(Question).validate_python(f.question)
    from autoscope.tools.campaign import default_campaign_path, load_campaign

    return default_question(f.scenario, load_campaign(default_campaign_path(f.scenario)))


def tasks(suite: Suite, split: Split = "all") -> list[Task]:
    """The suite's tasks (family order, then seed), those of ``split`` only."""
    out = []
    for f in suite.families:
        q = _question(f)
        for i in range(f.seeds):
            seed = f.seed_base + i
            case = NOTE_CASES[(seed + len(f.name)) % len(NOTE_CASES)] if f.injection else None
            t = Task(
                id=f"{f.name}-s{seed}",
                family=f.name,
                split="dev" if i % 2 == 0 else "test",
                scenario=f.scenario,
                seed=seed,
                sample=f.sample,
                sim=f.sim,
                goal=f.goal or DEFAULT_GOALS[f.scenario],
                question=q,
                notes=case.text if case else f.notes,
                injection_case=case.name if case else None,
                budget=f.budget,
                rounds=f.rounds,
                autonomy=f.autonomy,
                person={k: list(v) for k, v in f.person.items()},
                pipeline=f.pipeline,
            )
            if split in ("all", t.split):
                out.append(t)
    return out


__all__ = ["Family", "SUITES_DIR", "Suite", "Task", "load_suite", "tasks"]
