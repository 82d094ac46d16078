"""Human-authored configuration files (YAML, TOML or JSON) validated into pydantic models.

Every error is a ``ConfigError`` naming the file and the offending field, so the
person who wrote the file can fix it.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from autoscope.instruments.errors import ConfigError, validation_field

M = TypeVar("M", bound=BaseModel)


def read_mapping(path: str | Path, what: str = "settings") -> dict[str, Any]:
    """The mapping stored in a ``.yaml``/``.yml``, ``.toml`` or ``.json`` file (empty file: ``{}``)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("file", f"no such {what} file", str(p)) from None
    except OSError as exc:
        raise ConfigError("file", f"cannot read the {what} file: {exc}", str(p)) from None
    suffix = p.suffix.lower()
    try:
        if suffix in (".yaml", ".yml"):
            values = yaml.safe_load(text)
        elif suffix == ".toml":
            values = tomllib.loads(text)
        elif suffix == ".json":
            values = json.loads(text)
        else:
            raise ConfigError("file", f"unknown format {suffix!r}; use .yaml, .yml, .toml or .json", str(p))
    except (yaml.YAMLError, tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError("file", f"not valid {suffix[1:].upper()}: {exc}", str(p)) from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError("file", f"must hold a mapping of {what}, not {type(values).__name__}", str(p))
    return values


def validated(model: type[M], values: Any, path: str | None = None) -> M:
    """``model(**values)``, or a ``ConfigError`` naming the first bad field (and the file)."""
    if not isinstance(values, dict):
        raise ConfigError("file", f"must hold a mapping, not {type(values).__name__}", path)
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(*validation_field(exc, model), path) from None


def load_model(model: type[M], path: str | Path, what: str = "settings") -> M:
    """Read ``path`` and validate it into ``model``."""
    return validated(model, read_mapping(path, what), str(path))
