"""The whole package type-checks (STYLE.md: fully typed; settings in pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.slow  # about two minutes of mypy from a cold cache
def test_package_is_mypy_clean() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "sn5dask"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
