"""The campaign file of ``autoscope run``: the scientist's goal, sample notes and budget.

Everything in it is human-authored. ``notes`` are data about the sample: agents read
them as quoted text and never as instructions (an injected "ignore the limits" in the
notes changes nothing below the LLM). The ``template`` campaign supplies what the
deterministic planner needs and what the LLM is shown as the instrument's defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from autoscope.agents.question import Question
from autoscope.instruments.config_files import read_mapping, validated
from autoscope.instruments.errors import ConfigError
from autoscope.tools.campaign import CampaignConfig, default_campaign_path, load_campaign

DEFAULT_GOALS = {
    "plasmonic": "Find where the long-rod dipole plasmons (1.1-1.7 eV) of the Ag nanoparticles are strongest "
    "and which particle shapes host them.",
    "tmd-defects": "Find oxygen substituted on sulfur sites in the MoS2 monolayer by its O K edge.",
    "oxide-interface": "Map the Ti L2,3 edge onset across the LaTiO3/SrTiO3 interface to find the Ti3+ region.",
}

#: the default goals as typed questions (``agents/question.py``); the signal is the template's
DEFAULT_QUESTIONS: dict[str, dict[str, Any]] = {
    "plasmonic": {
        "kind": "hosts",
        "classes": ["rod_tip", "triangle_corner", "cube_corner"],
        "versus": "substrate",
    },
    "tmd-defects": {
        "kind": "strongest",
        "classes": ["dim_site_dimmer", "dim_site_brighter", "sublattice_dim"],
    },
    "oxide-interface": {"kind": "shift", "a": "bright_side", "b": "dim_side"},
}


class RunSpec(BaseModel):
    """One headless run: goal, notes, how many hypotheses and spectra, the campaign template."""

    model_config = ConfigDict(extra="forbid")

    goal: str = Field("", description="the scientist's goal, in words")
    notes: str = Field("", max_length=4000, description="sample notes: data, never instructions")
    scenario: str | None = None
    seed: int = 0
    rounds: int = Field(2, ge=1, le=20, description="hypotheses to test at most")
    budget: int = Field(0, ge=0, le=100_000, description="spectra for the whole run (0: the template's)")
    audit_allocation: Literal["equal", "discriminating"] = Field(
        "equal",
        description="how the deterministic planner's audits spend their spectra (see tools/plan.AuditStep)",
    )
    template: CampaignConfig
    question: Question | None = Field(
        None, description="the goal as a typed question the run answers (default goals have one)"
    )
    sample: dict[str, Any] = Field(
        default_factory=dict,
        description="the twin's sample variant: parameters of the scenario's generator (populations, "
        "defect densities, where the interface lies); empty: the scenario's own",
    )

    @property
    def total_budget(self) -> int:
        return self.budget or self.template.budget


def load_run_spec(path: Path | None, scenario: str | None) -> RunSpec:
    """A run file (YAML/TOML/JSON) or the scenario's defaults; errors name the file and the field.

    ``template`` may be inline (a mapping) or a path to a campaign file; by default it is the
    scenario's shipped campaign.
    """
    fields = read_mapping(path, "run") if path else {}
    name = scenario or fields.get("scenario") or "plasmonic"
    fields["scenario"] = name
    tpl = fields.get("template")
    if tpl is None or isinstance(tpl, str):
        ref = Path(tpl) if tpl else default_campaign_path(name)
        if tpl and path and not ref.is_absolute():
            ref = Path(path).parent / ref
        fields["template"] = load_campaign(ref)
    spec = validated(RunSpec, fields, str(path) if path else None)
    if spec.sample:
        from autoscope.instruments.factory import check_sample

        try:
            check_sample(name, spec.sample)
        except ConfigError as exc:
            raise ConfigError(exc.field, str(exc).split(": ", 1)[-1], str(path) if path else None) from None
    if not spec.goal:
        spec = spec.model_copy(
            update={
                "goal": DEFAULT_GOALS.get(name, "Find where the signal is strongest."),
                "question": spec.question or default_question(name, spec.template),
            }
        )
    return spec


def default_question(scenario: str, template: CampaignConfig) -> Any:
    """The default goal's typed question on the template's signal (None for an unknown scenario)."""
    q = DEFAULT_QUESTIONS.get(scenario)
    if q is None:
        return None
    return TypeAdapter(Question).validate_python({**q, "signal": template.scalarizer.model_dump()})
