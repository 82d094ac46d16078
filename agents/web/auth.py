"""Who is asking: bearer tokens, each mapped to a person's name (written into their decisions).

The tokens come from ``--tokens`` or the setting ``AUTOSCOPE_WEB_TOKENS``: a YAML/JSON file of
``{token: name}``, or inline ``token=name,token2=name2``. With none configured, ``autoscope web``
makes one token for the user running it (kept in the user's state directory, so a restarted
server keeps it). The API takes ``Authorization: Bearer TOKEN``; a browser
opens the printed URL once (``?token=TOKEN``), which sets an HttpOnly cookie and drops the token
from the address. Every route but ``/health`` answers 401 without a valid token.
"""

from __future__ import annotations

import getpass
import hmac
import json
import logging
import os
import secrets
from pathlib import Path

from fastapi import HTTPException, Request

from autoscope.instruments.config_files import read_mapping
from autoscope.instruments.errors import ConfigError

log = logging.getLogger(__name__)
COOKIE = "autoscope_web_token"


def parse_tokens(value: str | Path | None) -> dict[str, str]:
    """``{token: name}`` from a file path (YAML/JSON mapping) or ``token=name,…``; ``ConfigError``
    names the setting when it is malformed."""
    if value is None or not str(value).strip():
        return {}
    text = str(value).strip()
    path = Path(text).expanduser()
    if path.exists() or text.endswith((".yaml", ".yml", ".json", ".toml")):
        raw = read_mapping(path, "web_tokens")
    else:
        raw = {}
        for part in text.split(","):
            token, sep, name = part.strip().partition("=")
            if not sep or not token.strip() or not name.strip():
                raise ConfigError("web_tokens", f"expected token=name[,token=name…], got {part.strip()!r}")
            raw[token.strip()] = name.strip()
    out = {}
    for token, name in raw.items():
        if not isinstance(name, str) or not name.strip() or len(str(token)) < 8:
            raise ConfigError(
                "web_tokens", "each entry maps a token (8 characters or more) to a person's name"
            )
        out[str(token)] = name.strip()
    return out


def generated_tokens(path: Path | None = None) -> dict[str, str]:
    """The token made for the user running the server: the one kept in ``path`` (readable by that
    user alone) when there is one, so a restarted server keeps its pages' sessions; else a new
    one, written there."""
    if path is not None and path.exists():
        try:
            kept = parse_tokens(path)
            if kept:
                return kept
        except ConfigError as exc:
            log.warning("%s cannot be read (%s): making a new token", path, exc)
    try:
        user = getpass.getuser()
    except Exception:  # no user name in this environment
        user = "scientist"
    tokens = {secrets.token_urlsafe(24): user}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(tokens, f)
        os.replace(tmp, path)
    return tokens


def default_token_file() -> Path:
    """Where ``autoscope web`` keeps the token it made (the user's state directory)."""
    import platformdirs

    return platformdirs.user_state_path("autoscope") / "web-token.json"


class Auth:
    """Checks a request's token and names its person."""

    def __init__(self, tokens: dict[str, str]) -> None:
        if not tokens:
            raise ConfigError("web_tokens", "the web workspace needs at least one token")
        self.tokens = dict(tokens)

    def person(self, token: str | None) -> str | None:
        if not token:
            return None
        for known, name in self.tokens.items():
            if hmac.compare_digest(known.encode(), token.encode()):
                return name
        return None

    def token_of(self, request: Request) -> str | None:
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            return header[7:].strip()
        return request.query_params.get("token") or request.cookies.get(COOKIE)

    def __call__(self, request: Request) -> str:
        """FastAPI dependency: the person's name, or 401."""
        who = self.person(self.token_of(request))
        if who is None:
            raise HTTPException(
                401,
                "a valid token is needed: open the URL `autoscope web` printed (…/?token=…) "
                "or send Authorization: Bearer TOKEN",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return who
