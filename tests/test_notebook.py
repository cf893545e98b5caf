"""notebooks/dashboard.ipynb executed headless (nbclient) on a synthetic AOI (slow): the app is
displayed, a run started from it finishes, the cluster is still up afterwards."""

from __future__ import annotations

import json

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def test_dashboard_notebook_shows_the_app_and_runs(tmp_path) -> None:
    notebook = nbformat.read(REPO / "notebooks" / "dashboard.ipynb", as_version=4)
    parameters = notebook.cells[1]
    parameters.source += f'\nOUT = "{tmp_path / "out"}"\nDASK_DASHBOARD_ADDRESS = ":0"\nN_CHIPS = 6'
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    bundles = [o["data"] for o in outputs if o.output_type in ("display_data", "execute_result")]
    # the Panel app and the inspector are rendered as bokeh/HoloViews views
    assert sum(any("holoviews_exec" in k or k == "text/html" for k in b) for b in bundles) >= 2
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "finished · **6 / 6 chips done**" in text and "Dask dashboard (still connected): http" in text
    manifest = json.loads((tmp_path / "out" / "AOI_99_Synthetic" / "manifest.json").read_text())
    assert manifest["counts"] == {"ok": 6, "skipped": 0, "failed": 0}
