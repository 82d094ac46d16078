"""Ask the LLM for a typed proposal; repair it; fall back to the deterministic planner.

The answer is validated against the pydantic type and against the run's own checks
(``check`` raises ``PlanValidationError``: a signal outside the spectrometer, a plan
for the wrong hypothesis...). Both kinds of error go back to the model for a bounded
number of repairs (``agents/llm/structured.py``); after that, or when the model cannot
be reached, the deterministic planner answers and the reason is logged in the run.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import TypeVar

from pydantic import BaseModel, model_validator

from autoscope.agents.context import RunContext
from autoscope.agents.llm import LLMError, Message, structured
from autoscope.prompts import render

log = logging.getLogger(__name__)
T = TypeVar("T", bound=BaseModel)


def checked_model(schema: type[T], check: Callable[[T], None], json_schema: dict | None = None) -> type[T]:
    """``schema`` with ``check`` as an after-validator (same name). Its JSON schema, what a back
    end is given, is ``schema``'s, or ``json_schema`` when given (a narrowing of it, such as
    ``plan.grounded_schema``: validation is still ``schema``'s and ``check``'s)."""

    class Checked(schema):  # type: ignore[valid-type,misc]
        @model_validator(mode="after")
        def _run_check(self):
            check(self)
            return self

        if json_schema is not None:

            @classmethod
            def model_json_schema(cls, *args, **kwargs) -> dict:
                return copy.deepcopy(json_schema)

    Checked.__name__ = schema.__name__
    Checked.__qualname__ = schema.__qualname__
    return Checked


def propose(
    ctx: RunContext,
    *,
    role: str,
    prompt: str,
    variables: dict,
    schema: type[T],
    check: Callable[[T], None],
    fallback: Callable[[], T],
    purpose: str,
    repair_example: str | None = None,
    json_schema: dict | None = None,
) -> tuple[T, dict | None]:
    """The model's validated proposal, or the fallback's with ``{"purpose", "reason"}`` of the fallback.
    ``repair_example``: a valid instance shown only when an answer needs repair; ``json_schema``:
    what the back end is given instead of ``schema``'s own (see ``checked_model``)."""
    if ctx.llm.backend == "none":
        return fallback(), None
    messages = [
        Message(role="system", content=render("system", role=role)),
        Message(role="user", content=render(prompt, **variables)),
    ]
    try:
        answer = structured(
            ctx.llm,
            messages,
            checked_model(schema, check, json_schema),
            purpose=purpose,
            retries=ctx.repair_retries,
            on_call=ctx.log_llm_call,
            example=repair_example,
        )
    except LLMError as exc:
        reason = " ".join(str(exc).split())[:600]
        log.warning("%s: falling back to the deterministic planner: %s", purpose, reason)
        ctx.store.append_event("planner_fallback", purpose=purpose, reason=reason, backend=ctx.llm.backend)
        return fallback(), {"purpose": purpose, "reason": reason}
    return schema.model_validate(answer.model_dump()), None
