"""LLM clients behind one small interface with structured output.

Back ends: any OpenAI-compatible endpoint (``openai``), an embedded llama.cpp model
(``local``), none at all (``none``: the deterministic planner decides and says so),
and a scripted model for tests. ``structured`` validates every answer against a
pydantic model and sends validation errors back for a bounded number of repairs.
Every call is recorded (tokens, latency) in ``llm.calls``.
"""

from autoscope.agents.llm.base import (
    LLM,
    LLMCall,
    LLMError,
    LLMUnavailable,
    Message,
    StructuredOutputError,
    usage,
)
from autoscope.agents.llm.factory import BACKENDS, make_llm
from autoscope.agents.llm.local import LocalLLM
from autoscope.agents.llm.openai_compat import OpenAILLM
from autoscope.agents.llm.simple import NoLLM, ScriptedLLM
from autoscope.agents.llm.structured import extract_json, structured

__all__ = [
    "BACKENDS",
    "LLM",
    "LLMCall",
    "LLMError",
    "LLMUnavailable",
    "LocalLLM",
    "Message",
    "NoLLM",
    "OpenAILLM",
    "ScriptedLLM",
    "StructuredOutputError",
    "extract_json",
    "make_llm",
    "structured",
    "usage",
]
