"""The run context: what nodes use but the checkpoint must not hold.

The microscope (behind its safety limits), the run store, the LLM client, the autonomy
policy and the run file live here and are passed to every node by LangGraph's runtime
(``Runtime[RunContext]``); the state holds only references into the store.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from autoscope.agents.gates import AutonomyPolicy
from autoscope.agents.llm import LLM, LLMCall
from autoscope.agents.run_spec import RunSpec
from autoscope.instruments.safety import SafeMicroscope
from autoscope.tools.campaign import StepInfo
from autoscope.tools.grounding.model import SurveyMap
from autoscope.tools.store import RunStore

#: the survey map's artifact in the run directory (written by the survey node)
SURVEY_MAP = "survey_map.json"


@dataclass
class RunContext:
    store: RunStore
    microscope: SafeMicroscope
    llm: LLM
    policy: AutonomyPolicy
    spec: RunSpec
    run_dir: Path
    repair_retries: int = 2
    #: the policy a resumed run stopped under, until the gate it stopped at has been answered
    policy_until_answer: AutonomyPolicy | None = None
    #: set (with a reason) to end the running scan after its current spectrum
    stop_requested: threading.Event = field(default_factory=threading.Event)
    stop_reason: str = "interrupted by the scientist"
    on_step: Callable[[StepInfo], None] | None = None
    on_status: Callable[[str], None] | None = None
    #: draw the PNG figures (survey, map, scans, evidence); an evaluation of many runs turns them off
    figures: bool = True
    _survey_map: SurveyMap | None = None

    def survey_map(self) -> SurveyMap:
        """The run's survey map, read once from the run directory."""
        if self._survey_map is None:
            text = self.store.read_artifact(SURVEY_MAP)
            if text is None:
                raise RuntimeError(f"{self.run_dir} has no {SURVEY_MAP}: the survey has not run")
            self._survey_map = SurveyMap.model_validate_json(text)
        return self._survey_map

    def gate_policy(self) -> AutonomyPolicy:
        return self.policy_until_answer or self.policy

    def gate_answered(self) -> None:
        self.policy_until_answer = None

    def log_llm_call(self, call: LLMCall) -> None:
        self.store.append_event("llm_call", **call.as_event())

    def status(self, text: str) -> None:
        if self.on_status is not None:
            self.on_status(text)

    def should_stop(self) -> str | None:
        return self.stop_reason if self.stop_requested.is_set() else None
