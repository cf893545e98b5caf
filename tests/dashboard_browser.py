"""Headless Chromium for the dashboard tests: a browser whose every request off loopback
fails (a proxy on a closed port), its request log, and the page's text and bokeh models
read as a user's browser holds them."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.conftest import REPO

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
ARTIFACTS = Path(os.environ.get("SN5DASK_ARTIFACTS", REPO / "tests" / "artifacts")) / "dashboard"
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}

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
# The bokeh models the page holds: plots (axis labels, ranges, frame size in screen
# pixels), spans (cut-off lines), categorical factors and data sources.
MODELS = """
const out = {plots: [], spans: [], sources: []};
const plain = (v) => (v && v.length !== undefined && typeof v !== 'string') ? Array.from(v, plain) : v;
for (const doc of Bokeh.documents) for (const m of doc.all_models) {
  if (m.x_range !== undefined && m.inner_width !== undefined && m.below !== undefined) {
    const label = (axes) => axes.filter(a => a.axis_label !== undefined).map(a => a.axis_label).join('|');
    out.plots.push({id: m.id, title: m.title ? m.title.text : null, x: label(m.below), y: label(m.left),
      x_range: [m.x_range.start, m.x_range.end], y_range: [m.y_range.start, m.y_range.end],
      x_range_id: m.x_range.id, y_range_id: m.y_range.id, factors: m.x_range.factors ? plain(m.x_range.factors) : null,
      width: m.inner_width, height: m.inner_height});
  } else if (m.location !== undefined && m.dimension !== undefined) {
    out.spans.push({location: m.location, dimension: m.dimension});
  } else if (m.data !== undefined && m.selected !== undefined) {
    const data = {};
    const entries = m.data instanceof Map ? m.data.entries() : Object.entries(m.data);
    for (const [k, v] of entries) data[k] = plain(v);
    out.sources.push(data);
  }
}
return JSON.stringify(out);
"""


def make_browser(*, offline: bool = True, size: str = "1400,1700") -> Any:
    """Headless Chromium. `offline`: every request to a host other than loopback goes to
    a proxy on a closed port, so a CDN can't be reached (as on an air-gapped cluster)."""
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
    arguments = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", f"--window-size={size}"]
    if offline:
        arguments += ["--proxy-server=127.0.0.1:9", "--proxy-bypass-list=127.0.0.1;localhost"]
    for argument in arguments:
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return webdriver.Chrome(service=Service(DRIVER), options=options)


@contextmanager
def browser_session(**kwargs: Any) -> Iterator[Any]:
    driver = make_browser(**kwargs)
    driver.requested = []  # every URL requested so far (see `requests_made`)
    try:
        yield driver
    finally:
        driver.quit()


def requests_made(driver: Any) -> list[str]:
    """Every URL the browser requested since it started (data: and blob: left out)."""
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] in ("Network.requestWillBeSent", "Network.webSocketCreated"):
            url = message["params"].get("request", {}).get("url") or message["params"].get("url", "")
            if url.split(":", 1)[0] in ("http", "https", "ws", "wss"):
                driver.requested.append(url)
    return list(driver.requested)


def off_loopback(urls: list[str]) -> list[str]:
    return [url for url in urls if urlsplit(url).hostname not in LOOPBACK]


def console_errors(driver: Any) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def page_text(driver: Any) -> str:
    return str(driver.execute_script(PAGE_TEXT))


def wait_for(driver: Any, condition: Callable[[str], Any], timeout: float = 90.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition(page_text(driver))
        if found:
            return found
        time.sleep(0.25)
    raise AssertionError(f"page never showed {what}: {page_text(driver)[:3000]}")


def models(driver: Any) -> dict[str, Any]:
    return json.loads(driver.execute_script(MODELS))  # type: ignore[no-any-return]


def find(driver: Any, selector: str, text: str | None = None) -> Any:
    return driver.execute_script(FIND, selector, text)


def plot_with_axes(driver: Any, x: str, y: str | None = None) -> dict[str, Any] | None:
    for plot in models(driver)["plots"]:
        if plot["x"] == x and (y is None or plot["y"] == y) and plot["width"]:
            return plot  # type: ignore[no-any-return]
    return None
