"""Settings: the only place that reads the environment.

Every value can be set as an environment variable with the ``AUTOSCOPE_`` prefix
(``AUTOSCOPE_TOKEN``, ``AUTOSCOPE_LIMITS_FILE``...) or in a ``.env`` file in the
working directory. Command-line options override settings.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_LIMITS_FILE = Path(str(resources.files("autoscope.agents").joinpath("limits.default.yaml")))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AUTOSCOPE_", env_file=".env", extra="ignore")

    #: bearer token of the instrument server and client
    token: str | None = None
    #: human-authored safety limits (YAML, TOML or JSON); the shipped file is the default
    limits_file: Path = DEFAULT_LIMITS_FILE
    #: where runs go when ``--out`` is not given
    runs_dir: Path = Path("runs")
    #: host the instrument server binds (loopback unless a person opens it up)
    host: str = "127.0.0.1"
    port: int = Field(default=8765, ge=1, le=65535)
    #: where the instrument server keeps its idempotency cache and acquisition ledger
    server_state_dir: Path | None = None
    #: HTTP timeout and retries of the remote client
    remote_timeout_s: float = Field(default=30.0, gt=0)
    remote_retries: int = Field(default=3, ge=0, le=10)
    log_level: str = "INFO"

    # ---- agents
    #: LLM behind the hypothesis and planning agents: the embedded local model, any
    #: OpenAI-compatible endpoint, or none (the deterministic planner, which says so)
    llm: Literal["local", "openai", "none"] = "local"
    #: embedded model (a registry package ships its weights; see README for the figures)
    local_model: Literal["smollm2", "qwen2.5-coder-1.5b"] = "qwen2.5-coder-1.5b"
    #: where an embedded model shipped in parts is assembled once
    model_cache_dir: Path = Path.home() / ".cache" / "autoscope" / "models"
    #: OpenAI-compatible endpoint (OpenAI, vLLM, Ollama, llama.cpp server, LM Studio)
    openai_base_url: str | None = None
    openai_api_key: str | None = None
    openai_model: str = "gpt-4o-mini"
    #: openai: the HTTP timeout of a call; local: the longest the model may go without producing
    #: a token (a stalled decoder). A local answer is bounded by llm_max_tokens, not by wall time,
    #: so a busy machine gets the same answer later instead of a cut one
    llm_timeout_s: float = Field(default=150.0, gt=0)
    llm_max_tokens: int = Field(default=768, ge=16)
    #: bounded repair attempts after an invalid structured answer
    llm_repair_retries: int = Field(default=2, ge=0, le=5)
    #: who may decide at the gates of ``autoscope run`` when --autonomy is not given
    autonomy: Literal["manual", "supervised", "autonomous"] = "autonomous"
    #: graph checkpoints: empty for SQLite in the run directory, or a postgresql:// URL
    checkpoint_url: str | None = None

    # ---- web workspace
    #: the people of ``autoscope web``: a YAML/JSON file of {token: name}, or ``token=name,…``
    #: (empty: the server makes one token for the user running it and prints its URL)
    web_tokens: str | None = None

    # ---- object storage
    #: copy every run, as it is written, to ``s3://bucket/prefix/<run-name>/`` (empty: runs stay
    #: local). Credentials and region come from the usual AWS variables (AWS_ACCESS_KEY_ID,
    #: AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION...), which botocore reads itself
    store_url: str | None = None
    #: S3-compatible endpoint (MinIO, Ceph, a cloud's S3 API); empty: AWS_ENDPOINT_URL, else AWS
    store_endpoint_url: str | None = None
    #: how often the event log and the run's other files are copied while the run grows
    store_sync_interval_s: float = Field(default=5.0, gt=0)
    #: how long closing a run waits for its last uploads (the rest go when it is next opened)
    store_close_timeout_s: float = Field(default=30.0, ge=0)
    #: the longest wait between two attempts while the object store is unreachable
    store_max_backoff_s: float = Field(default=30.0, gt=0)


def load_settings() -> Settings:
    return Settings()
