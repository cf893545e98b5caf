"""notebooks/dashboard.ipynb executed headless on the synthetic AOI (slow)."""

from __future__ import annotations

import base64

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def test_dashboard_notebook_runs_and_draws_its_figures(tmp_path) -> None:
    notebook = nbformat.read(REPO / "notebooks" / "dashboard.ipynb", as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.output_type == "error"]
    assert not errors
    images = [o["data"]["image/png"] for c in notebook.cells if c.cell_type == "code"
              for o in c.get("outputs", []) if o.output_type == "display_data" and "image/png" in o.get("data", {})]
    assert len(images) == 3  # histograms, chip grid, speed distribution
    assert all(base64.b64decode(png)[:8] == b"\x89PNG\r\n\x1a\n" for png in images)
    text = "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code"
                   for o in c.get("outputs", []) if o.output_type == "stream")
    assert "band 5: p2 = " in text and "'failed': 0" in text
