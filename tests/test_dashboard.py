"""The dashboard in a real browser: `sn5dask dashboard` served on 127.0.0.1, driven by
headless Chromium (Debian's chromium + chromium-driver, which .ci/run installs) through
selenium. The test starts a run from the page, watches its progress advance, opens the
inspector on chips (a failed one too) and checks what the page says; screenshots are kept
in tests/artifacts/dashboard/ (or $SN5DASK_ARTIFACTS)."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.procs import free_port, kill_group, sn5dask_cli, wait_for_port

pytestmark = pytest.mark.slow
AOI = "AOI_99_Synthetic"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
ARTIFACTS = Path(os.environ.get("SN5DASK_ARTIFACTS", REPO / "tests" / "artifacts")) / "dashboard"

# The page's text, through the shadow roots bokeh renders into (style and script left out).
PAGE_TEXT = """
function collect(node) {
  let out = '';
  if (node.shadowRoot) out += collect(node.shadowRoot);
  for (const child of node.childNodes) {
    if (child.nodeType === 3) out += child.textContent + ' ';
    else if (child.nodeType === 1 && !['STYLE', 'SCRIPT'].includes(child.tagName)) out += collect(child);
  }
  return out;
}
return collect(document.body).replace(/\\s+/g, ' ');
"""
FIND = """
function find(node, selector, text) {
  for (const element of node.querySelectorAll(selector))
    if (!text || element.textContent.trim() === text) return element;
  for (const element of node.querySelectorAll('*'))
    if (element.shadowRoot) { const found = find(element.shadowRoot, selector, text); if (found) return found; }
  return null;
}
return find(document, arguments[0], arguments[1]);
"""


@pytest.fixture
def browser():
    if not (CHROMIUM and DRIVER):
        message = "chromium and chromium-driver are not installed (.ci/run installs them)"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI must run it: .ci/run installs them
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1400,1700"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver, condition, timeout: float = 90.0, what: str = ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = driver.execute_script(PAGE_TEXT)
        found = condition(text)
        if found:
            return found
        time.sleep(0.25)
    raise AssertionError(f"page never showed {what}: {driver.execute_script(PAGE_TEXT)[:2000]}")


def listening_hosts(port: int) -> set[str]:
    import psutil

    return {c.laddr.ip for c in psutil.net_connections("tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port}


def test_dashboard_runs_watches_and_inspects_in_chromium(browser, tmp_path) -> None:
    from sn5dask.synthetic import make_synthetic_aoi

    aoi = make_synthetic_aoi(tmp_path / "in", n_chips=20, size=1000, seed=8)
    broken = aoi.labels[3]  # chip3's label no longer parses: the chip fails, its RGB is kept
    broken.write_text('{"type": "FeatureCollection", "features": [')
    out = tmp_path / "out"
    port = free_port()
    server = sn5dask_cli("dashboard", out, "--root", aoi.root, "--port", port, "--workers", "1")
    try:
        wait_for_port(port, 60)
        browser.get(f"http://127.0.0.1:{port}/")
        wait_for(browser, lambda t: "Start run" in t and "No run output" in t, what="the empty dashboard")
        browser.save_screenshot(str(ARTIFACTS / "1-before-run.png"))

        browser.execute_script(FIND, "button", "Start run").click()
        seen: list[int] = []

        def progress(text: str):
            match = re.search(r"(\d+) / 20 chips done", text)
            if match:
                seen.append(int(match.group(1)))
            return match and match.group(1) == "20" and "finished" in text and text

        text = wait_for(browser, progress, timeout=240, what="the run finishing")
        browser.save_screenshot(str(ARTIFACTS / "2-run-finished.png"))
        assert any(0 < n < 20 for n in seen), seen  # progress was seen advancing
        assert seen == sorted(seen)
        assert "19 ok, 0 skipped, 1 failed" in text
        link = browser.execute_script(FIND, "a", "Dask dashboard")
        assert link is not None and "kept up after runs" in text
        href = link.get_attribute("href")
        with urllib.request.urlopen(href, timeout=30) as response:
            assert response.status == 200  # the cluster outlived the run
        # The cluster the dashboard started shows its dashboard on loopback only.
        assert href.startswith("http://127.0.0.1:"), href
        assert listening_hosts(int(href.split(":")[2].split("/")[0])) == {"127.0.0.1"}

        browser.get(f"http://127.0.0.1:{port}/?chip=chip5")
        text = wait_for(browser, lambda t: "Chip chip5 (ok)" in t and t, what="the inspector on chip5")
        assert browser.execute_script(FIND, "canvas", None) is not None  # the plot is drawn
        browser.save_screenshot(str(ARTIFACTS / "3-inspector-chip5.png"))

        browser.get(f"http://127.0.0.1:{port}/?chip=chip3")
        text = wait_for(browser, lambda t: "Chip chip3 (failed)" in t and t, what="the inspector on chip3")
        assert "not valid GeoJSON" in text
        browser.save_screenshot(str(ARTIFACTS / "4-inspector-failed-chip3.png"))
    finally:
        kill_group(server, 2)
    manifest = json.loads((out / AOI / "manifest.json").read_text())
    assert manifest["counts"] == {"ok": 19, "skipped": 0, "failed": 1}
    assert manifest["chips"]["chip3"]["outputs"].keys() == {"rgb"}


def test_names_from_the_data_are_shown_never_run(browser, tmp_path) -> None:
    """A dataset folder named like an HTML element (a legal name, e.g. from a third-party
    bucket) reaches the page in a chip's failure reason and in OUT's path: the inspector,
    the status and the title show the text; the element is never made, its script never
    runs."""
    from sn5dask.synthetic import make_synthetic_aoi

    hostile = 'x<img src=x onerror="document.body.dataset.pwned=1">*b*_i_[l](j)'
    aoi = make_synthetic_aoi(tmp_path / hostile / "in", n_chips=2, size=64, seed=8,
                             with_edge_cases=False)
    aoi.labels[1].write_text('{"type": "FeatureCollection", "features": [')
    out = tmp_path / hostile / "out"
    process = sn5dask_cli("run", aoi.root, "--out", out, "--workers", "1", "--formats", "geotiff")
    output, _ = process.communicate(timeout=180)
    assert process.returncode == 1, output
    assert hostile.replace(" ", "") in "".join(output.split()), output  # rich wraps lines
    port = free_port()
    server = sn5dask_cli("dashboard", out, "--port", port)
    try:
        wait_for_port(port, 60)
        browser.get(f"http://127.0.0.1:{port}/?chip=chip1")
        text = wait_for(browser, lambda t: "Chip chip1 (failed)" in t and t, what="the inspector on chip1")
        browser.save_screenshot(str(ARTIFACTS / "5-hostile-names.png"))
        assert text.count(hostile) >= 3, text  # the title, the status line, the reason
        assert "not valid GeoJSON" in text
        assert browser.execute_script("return document.body.dataset.pwned") is None
        assert browser.execute_script(FIND, "img[src=x]", None) is None
    finally:
        kill_group(server, 2)
