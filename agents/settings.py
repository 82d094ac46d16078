"""Settings: the only place that reads the environment.

Every value can be set as an environment variable with the ``AUTOSCOPE_`` prefix
(``AUTOSCOPE_TOKEN``, ``AUTOSCOPE_LIMITS_FILE``...) or in a ``.env`` file in the
working directory. Command-line options override settings.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

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
    #: HTTP timeout and retries of the remote client
    remote_timeout_s: float = Field(default=30.0, gt=0)
    remote_retries: int = Field(default=3, ge=0, le=10)
    log_level: str = "INFO"


def load_settings() -> Settings:
    return Settings()
