"""notebooks/dashboard.ipynb executed headless (nbclient) on a synthetic AOI (slow): the app is
displayed, a run started from it finishes, the cluster is still up afterwards."""

from __future__ import annotations

import json
import time

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


def test_the_app_renders_in_jupyterlab_with_the_network_blocked(tmp_path) -> None:
    """JupyterLab on 127.0.0.1, driven in headless Chromium whose every request off
    loopback fails (an air-gapped cluster): Run All on notebooks/dashboard.ipynb shows the
    app (its text and its bokeh plots), a run started from it finishes, and no request
    left loopback (Panel's and BokehJS's resources are inline)."""
    import subprocess

    from tests.dashboard_browser import (
        ARTIFACTS,
        browser_session,
        console_errors,
        find,
        off_loopback,
        requests_made,
        wait_for,
    )
    from tests.procs import BIN, free_port, kill_group, wait_for_port

    notebook = nbformat.read(REPO / "notebooks" / "dashboard.ipynb", as_version=4)
    notebook.cells[1].source += f'\nOUT = "{tmp_path / "out"}"\nDASK_DASHBOARD_ADDRESS = ":0"\nN_CHIPS = 4'
    nbformat.write(notebook, tmp_path / "dashboard.ipynb")
    port, token = free_port(), "sn5dask-test-token"
    log = (tmp_path / "jupyterlab.log").open("w")
    lab = subprocess.Popen(
        [str(BIN / "jupyter"), "lab", "--no-browser", "--allow-root", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={tmp_path}"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path,
    )  # fmt: skip
    try:
        wait_for_port(port, 90)
        with browser_session() as browser:
            browser.get(f"http://127.0.0.1:{port}/lab/tree/dashboard.ipynb?token={token}")
            wait_for(browser, lambda t: "Idle" in t and "A chip, up close" in t, timeout=120, what="the notebook, kernel idle")
            find(browser, ".lm-MenuBar-itemLabel", "Run").click()
            wait_for(browser, lambda t: "Run All Cells" in t, timeout=10, what="the Run menu")
            find(browser, ".lm-Menu-itemLabel", "Run All Cells").click()
            text = wait_for(browser, lambda t: "finished · **4 / 4 chips done**" in t and "Dask dashboard (still connected)" in t and t,
                            timeout=300, what="the run cell's output")  # fmt: skip
            # the app cell rendered by BokehJS (not the text fallback of a page without
            # its JS): bokeh's elements, the app's text in them, the inspector's canvas
            deadline = time.monotonic() + 60
            while find(browser, "canvas") is None and time.monotonic() < deadline:
                time.sleep(0.5)
            browser.save_screenshot(str(ARTIFACTS / "jupyterlab-offline.png"))
            assert browser.execute_script("return typeof Bokeh") == "object"
            assert find(browser, ".jp-OutputArea-output [class*='bk-']") is not None
            assert find(browser, "button", "Start run") is not None
            assert find(browser, "canvas") is not None
            assert not [e for e in console_errors(browser) if "Unable to run Panel code" in e]
            # Every script (BokehJS, Panel, Tabulator) is inline: none left loopback. Known
            # gap: Panel gives plots redrawn after the first render stylesheet links to its
            # CDN (they fail here; the app works without them).
            outside = sorted(set(off_loopback(requests_made(browser))))
            assert [url for url in outside if not url.split("?")[0].endswith(".css")] == [], outside
            assert "Traceback" not in text
    finally:
        kill_group(lab, 15)
        log.close()
