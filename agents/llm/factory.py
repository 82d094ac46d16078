"""Build the client the settings ask for."""

from __future__ import annotations

from autoscope.agents.llm.base import LLM
from autoscope.agents.llm.local import LocalLLM
from autoscope.agents.llm.openai_compat import OpenAILLM
from autoscope.agents.llm.simple import NoLLM, ScriptedLLM, ScriptEntry
from autoscope.agents.settings import Settings, load_settings

BACKENDS = ("local", "openai", "none", "scripted")


def make_llm(
    backend: str, settings: Settings | None = None, *, script: list[ScriptEntry] | None = None
) -> LLM:
    """A client for ``backend``; raises ``LLMUnavailable`` (naming the fix) when it cannot work here.

    "scripted" needs ``script`` (tests); "none" is the deterministic planner's stand-in.
    """
    if backend == "scripted":
        if script is None:
            raise ValueError("backend scripted needs script=[answers]")
        return ScriptedLLM(script)
    if backend == "none":
        return NoLLM()
    settings = settings if settings is not None else load_settings()
    if backend == "openai":
        return OpenAILLM(
            settings.openai_base_url,
            settings.openai_api_key,
            settings.openai_model,
            timeout_s=settings.llm_timeout_s,
            max_tokens=settings.llm_max_tokens,
        )
    if backend == "local":
        return LocalLLM(
            settings.local_model,
            settings.model_cache_dir,
            settings.llm_max_tokens,
            timeout_s=settings.llm_timeout_s,
        )
    raise ValueError(f"unknown LLM backend {backend!r}; one of {', '.join(BACKENDS)}")
