"""The pure core type-checks (STYLE.md: mypy clean on the core)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO

CORE = ["stretch.py", "speed.py", "labels.py", "masks.py", "catalog.py", "errors.py"]


def test_core_is_mypy_clean() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--follow-imports=silent", *(f"sn5dask/{m}" for m in CORE)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
