"""Prompt templates, shipped as package data and rendered with Jinja's StrictUndefined.

A template that names a variable the caller did not pass fails loudly instead of
sending the model a prompt with a hole in it.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import jinja2

SUFFIX = ".j2"


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("autoscope.prompts", "."),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=False,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def names() -> list[str]:
    """Every template shipped, without the suffix."""
    folder = resources.files("autoscope.prompts")
    return sorted(p.name[: -len(SUFFIX)] for p in folder.iterdir() if p.name.endswith(SUFFIX))


def render(name: str, **variables: object) -> str:
    """Render ``prompts/<name>.j2``; a missing variable raises ``jinja2.UndefinedError``."""
    return environment().get_template(name + SUFFIX).render(**variables).strip()
