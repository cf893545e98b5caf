"""Packaging: environment.yml lists what pyproject.toml lists (no conda channel here)."""

from __future__ import annotations

import re
import tomllib

import yaml

from tests.conftest import REPO

# PyPI name -> conda-forge name where they differ (extras don't exist in conda).
CONDA_NAMES: dict[str, str] = {}


def _split(requirement: str) -> tuple[str, str]:
    match = re.match(r"^\s*([A-Za-z0-9_.\-\[\]]+)\s*(.*)$", requirement)
    assert match, requirement
    return match.group(1).lower(), match.group(2).replace(" ", "")


def test_environment_yml_matches_pyproject() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    environment = yaml.safe_load((REPO / "environment.yml").read_text())
    wanted = {}
    for requirement in pyproject["project"]["dependencies"]:
        name, spec = _split(requirement)
        wanted[CONDA_NAMES.get(name, name)] = spec
    listed = {}
    for item in environment["dependencies"]:
        if isinstance(item, str) and item not in ("pip",):
            name, spec = _split(item)
            listed[name] = spec
    assert listed.pop("python") == ">=3.11"
    assert pyproject["project"]["requires-python"] == ">=3.11"
    assert listed == wanted
    assert "conda-forge" in environment["channels"]
