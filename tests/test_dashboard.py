"""The dashboard in a real browser: `sn5dask dashboard` served on 127.0.0.1, driven by
headless Chromium (Debian's chromium + chromium-driver, which .ci/run installs) through
selenium, with every request off loopback failing (as on an air-gapped cluster). The
tests start runs from the page, watch them, and check what a user reads and sees: the
numbers against the files the run wrote, the plots' geometry from the bokeh models the
browser holds. Screenshots are kept in tests/artifacts/dashboard/ (or $SN5DASK_ARTIFACTS)."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tests.dashboard_browser import (
    ARTIFACTS,
    browser_session,
    console_errors,
    find,
    models,
    off_loopback,
    page_text,
    plot_with_axes,
    requests_made,
    wait_for,
)
from tests.procs import free_port, kill_group, sn5dask_cli, wait_for_port

pytestmark = pytest.mark.slow
AOI = "AOI_99_Synthetic"


@pytest.fixture
def browser():
    with browser_session() as driver:
        yield driver


def listening_hosts(port: int) -> set[str]:
    import psutil

    return {c.laddr.ip for c in psutil.net_connections("tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port}


def select_option(driver, option: str) -> None:
    """Pick `option` in the (bokeh) select that offers it, as a user's click does."""
    element = find(driver, f'select option[value="{option}"]')
    assert element is not None, option
    driver.execute_script(
        "const s = arguments[0].parentElement; s.value = arguments[1];"
        "s.dispatchEvent(new Event('input', {bubbles: true})); s.dispatchEvent(new Event('change', {bubbles: true}));",
        element, option,
    )  # fmt: skip


def chip_plot(driver):
    return plot_with_axes(driver, "column", "row")


def assert_square_pixels(plot) -> None:
    x_span = abs(plot["x_range"][1] - plot["x_range"][0])
    y_span = abs(plot["y_range"][1] - plot["y_range"][0])
    # screen pixels per image column == per image row
    assert plot["width"] / x_span == pytest.approx(plot["height"] / y_span, rel=0.02), plot


def wheel_zoom(driver, element) -> None:
    from selenium.webdriver import ActionChains
    from selenium.webdriver.common.actions.wheel_input import ScrollOrigin

    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
    ActionChains(driver).scroll_from_origin(ScrollOrigin.from_element(element, 0, 0), 0, -400).perform()


def geotiff_lonlat_bounds(path: Path) -> tuple[float, float, float, float]:
    import rasterio
    from rasterio.warp import transform_bounds

    with rasterio.open(path) as src:
        return transform_bounds(src.crs, "EPSG:4326", *src.bounds)


def test_a_run_from_the_page_offline_with_right_numbers_and_geometry(browser, tmp_path) -> None:
    from sn5dask.core.encodings import SPEED_BINS
    from sn5dask.core.speed import BIN_VALUE_STEP, N_SPEED_CHANNELS
    from sn5dask.synthetic import make_synthetic_aoi

    aoi = make_synthetic_aoi(tmp_path / "in", n_chips=20, size=1000, seed=8)
    aoi.labels[3].write_text('{"type": "FeatureCollection", "features": [')  # chip3 fails, its RGB kept
    unreadable = sorted(aoi.root.rglob("*PS-MS_chip5.tif"))[0]
    unreadable.write_bytes(b"not a tiff")  # chip5 fails at the scan: no footprint at all
    out = tmp_path / "out"
    port = free_port()
    server = sn5dask_cli("dashboard", out, "--root", aoi.root, "--port", port, "--workers", "1")
    stopped = False
    try:
        wait_for_port(port, 60)
        url = f"http://127.0.0.1:{port}/"
        browser.get(url)
        wait_for(browser, lambda t: "Start run" in t and "No run output" in t, what="the empty dashboard")
        browser.save_screenshot(str(ARTIFACTS / "1-before-run.png"))

        # Item 3: the press is answered at once (starting, button disabled), not after the
        # cluster is up.
        find(browser, "button", "Start run").click()
        pressed = time.monotonic()
        wait_for(browser, lambda t: "Starting" in t, timeout=5, what="the run starting")
        button = find(browser, "button", "Starting…") or find(browser, "button", "Running…")
        assert button is not None and button.get_attribute("disabled") is not None
        browser.save_screenshot(str(ARTIFACTS / "2-starting.png"))

        seen: list[int] = []
        rates: list[tuple[float, float, int]] = []

        def progress(text: str):
            match = re.search(r"(\d+) / 20 chips done", text)
            if match:
                seen.append(int(match.group(1)))
                rate = re.search(r"([\d.]+) chips/s", text)
                if rate:
                    rates.append((time.monotonic() - pressed, float(rate.group(1)), int(match.group(1))))
            return match and match.group(1) == "20" and "finished" in text and text

        text = wait_for(browser, progress, timeout=300, what="the run finishing")
        browser.save_screenshot(str(ARTIFACTS / "3-run-finished.png"))
        manifest = json.loads((out / AOI / "manifest.json").read_text())
        counts = manifest["counts"]
        assert counts["failed"] == 2, counts
        assert f"{counts['ok']} ok, {counts['skipped']} skipped, 2 failed" in text
        assert any(0 < n < 20 for n in seen), seen  # progress was seen advancing
        assert seen == sorted(seen)
        link = find(browser, "a", "Dask dashboard")
        assert link is not None and "kept up after runs" in text
        href = link.get_attribute("href")
        with urllib.request.urlopen(href, timeout=30) as response:
            assert response.status == 200  # the cluster outlived the run
        assert href.startswith("http://127.0.0.1:"), href
        assert listening_hosts(int(href.split(":")[2].split("/")[0])) == {"127.0.0.1"}
        # Item 5: what the kept cluster costs is said
        wait_for(browser, lambda t: re.search(r"kept local cluster: 1 worker, \d+ MB, \d+ % CPU", t),
                 timeout=15, what="the kept cluster's cost")  # fmt: skip

        # Item 4: a failed chip has no fold (folds.csv leaves it out); its reason column
        # shows the problem, the file column the file.
        folds = (out / AOI / "folds.csv").read_text()
        assert "chip3.tif" not in folds
        row = wait_for(browser, lambda t: re.search(r"chip3 failed (.{0,80})", t), what="chip3's row")
        assert row.group(1).startswith("not valid GeoJSON"), row.group(0)
        # Item 4: the chip with no image is named under the map, not silently left out
        find(browser, ".bk-tab", "Map").click()
        wait_for(browser, lambda t: "without a footprint" in t and "chip5" in t, what="chip5 named under the map")
        time.sleep(1)
        browser.save_screenshot(str(ARTIFACTS / "4-map.png"))
        sources = models(browser)["sources"]
        quads = [s for s in sources if "chip" in s and "left" in s]
        boxes = quads[-1]  # the map as last redrawn
        assert "chip5" not in boxes["chip"]
        assert len(boxes["chip"]) == 19
        for i, chip_id in enumerate(boxes["chip"]):
            tif = out / AOI / manifest["chips"][chip_id]["outputs"]["rgb"]
            west, south, east, north = geotiff_lonlat_bounds(tif)
            drawn = [boxes[k][i] for k in ("left", "bottom", "right", "top")]  # the quads bokeh draws
            assert drawn == pytest.approx([west, south, east, north], abs=1e-9), chip_id
            assert boxes["status"][i] == manifest["chips"][chip_id]["status"]

        # Item 2/footing: cut-off lines at stats.json's values, on histograms whose axes
        # are their own.
        find(browser, ".bk-tab", "Histograms").click()
        wait_for(browser, lambda t: "clipped low" in t, what="the histograms tab")
        time.sleep(1)
        browser.save_screenshot(str(ARTIFACTS / "5-histograms.png"))
        stats = json.loads((out / AOI / "stats.json").read_text())
        spans = sorted(s["location"] for s in models(browser)["spans"])
        expected = sorted(v for pair in stats["values"].values() for v in pair)
        assert spans == pytest.approx(expected), (spans, expected)
        titles = [p["title"] for p in models(browser)["plots"] if p["title"] and p["title"].startswith("band")]
        assert len(titles) == len(stats["values"]) and all(len(t) < 45 for t in titles), titles

        # Speed bins are the masks' bins; pixels per bin are the masks' pixels
        find(browser, ".bk-tab", "Speeds").click()
        wait_for(browser, lambda t: "Class balance" in t, timeout=120, what="the speed distribution")
        time.sleep(1)
        browser.save_screenshot(str(ARTIFACTS / "6-speeds.png"))
        bars = [p for p in models(browser)["plots"] if p["factors"]]
        assert bars and all(p["factors"] == list(SPEED_BINS) for p in bars), bars
        pixels = np.zeros(N_SPEED_CHANNELS, dtype=np.int64)
        import rasterio

        for entry in manifest["chips"].values():
            if entry["status"] != "failed" and "binned" in entry["outputs"]:
                with rasterio.open(out / AOI / entry["outputs"]["binned"]) as src:
                    binned = src.read(1)
                pixels += np.bincount(np.minimum(binned // BIN_VALUE_STEP, N_SPEED_CHANNELS).ravel(),
                                      minlength=N_SPEED_CHANNELS + 1)[1:]  # fmt: skip
        source = next(s for s in models(browser)["sources"] if "mask_pixels" in s or "mask pixels" in s)
        shown = source.get("mask_pixels") or source.get("mask pixels")
        assert list(map(int, shown)) == pixels.tolist()

        # Item 2: the inspector draws square pixels, rows down, its own axes; the zoom is
        # kept across overlays.
        browser.get(f"{url}?chip=chip0")
        wait_for(browser, lambda t: "Chip chip0 (ok)" in t, what="the inspector on chip0")
        time.sleep(2)
        plot = chip_plot(browser)
        assert plot is not None
        assert_square_pixels(plot)
        assert sorted(plot["x_range"]) == pytest.approx([0, 1000])
        assert plot["y_range"] == pytest.approx([1000, 0])  # row 0 on top
        browser.save_screenshot(str(ARTIFACTS / "7-inspector-chip0.png"))
        canvas = find(browser, "canvas")
        wheel_zoom(browser, canvas)
        time.sleep(1.5)
        zoomed = chip_plot(browser)
        assert abs(zoomed["x_range"][1] - zoomed["x_range"][0]) < 400, zoomed  # zoomed in
        assert_square_pixels(zoomed)
        others = [p for p in models(browser)["plots"] if p["x"] != "column"]
        assert all(p["x_range_id"] != zoomed["x_range_id"] for p in others)
        select_option(browser, "multichannel: road")
        deadline = time.monotonic() + 30
        while "multichannel: road" not in (chip_plot(browser)["title"] or "") and time.monotonic() < deadline:
            time.sleep(0.25)
        time.sleep(1)
        kept = chip_plot(browser)
        assert "overlay: multichannel: road" in kept["title"], kept
        assert kept["x_range"] == pytest.approx(zoomed["x_range"]) and kept["y_range"] == pytest.approx(zoomed["y_range"])
        browser.save_screenshot(str(ARTIFACTS / "8-inspector-zoomed-road-band.png"))

        browser.get(f"{url}?chip=chip3")
        text = wait_for(browser, lambda t: "Chip chip3 (failed)" in t and t, what="the inspector on chip3")
        assert "not valid GeoJSON" in text
        browser.get(f"{url}?chip=chip5")
        text = wait_for(browser, lambda t: "Chip chip5 (failed)" in t and t, what="the inspector on chip5")
        assert "no image to show" in text and "stretched per chip" not in text  # note agrees with the pane
        browser.save_screenshot(str(ARTIFACTS / "9-inspector-unreadable-chip5.png"))

        # Item 3: a deep link to nothing says so
        browser.get(f"{url}?chip=chip999")
        wait_for(browser, lambda t: "No chip 'chip999'" in t, what="the unknown chip said")
        browser.get(f"{url}?aoi=AOI_1_Nowhere")
        wait_for(browser, lambda t: "No AOI 'AOI_1_Nowhere'" in t, what="the unknown AOI said")
        browser.save_screenshot(str(ARTIFACTS / "10-unknown-deep-link.png"))

        # Item 4: a resumed run's chips/s counts only the chips it made (the 2 failed
        # ones are retried; the 18 done before are not "made" in a second)
        browser.get(url)
        wait_for(browser, lambda t: "Start run" in t and "finished" in t, what="the page again")
        rates.clear()
        find(browser, "button", "Start run").click()
        pressed = time.monotonic()
        wait_for(browser, lambda t: "Starting" in t or "running" in t, timeout=10, what="the second run")
        wait_for(browser, lambda t: (progress(t) and "Start run" in t) and t, timeout=120, what="the second run finishing")
        # counting the 18 chips done before would show >= 19 chips over less than the time
        # since the press
        assert all(rate * elapsed < 19 for elapsed, rate, _ in rates), rates

        # Item 5: the kept cluster can be closed from the page
        find(browser, "button", "Close cluster").click()
        wait_for(browser, lambda t: "kept local cluster" not in t and "kept up after runs" not in t, timeout=60,
                 what="the cluster closed")  # fmt: skip
        assert off_loopback(requests_made(browser)) == []
        assert not [e for e in console_errors(browser) if "Unable to run Panel code" in e]

        # Item 3 and 5: Ctrl-C stops the server cleanly; the page says it is disconnected
        browser.get(f"{url}?chip=chip1")
        wait_for(browser, lambda t: "Chip chip1 (ok)" in t, what="chip1")
        server.send_signal(signal.SIGINT)
        output, _ = server.communicate(timeout=60)
        stopped = True
        assert server.returncode == 0, output
        assert "Traceback" not in output and "ContextVar" not in output, output
        wait_for(browser, lambda t: "server stopped" in t, timeout=30, what="the disconnect notice")
        browser.save_screenshot(str(ARTIFACTS / "11-disconnected.png"))
    finally:
        if not stopped:
            kill_group(server, 2)
    assert off_loopback(requests_made(browser)) == []


def bokeh_websocket(port: int) -> socket.socket:
    """A page's websocket to the dashboard on `port`, opened by hand (HTTP upgrade with the
    session token of a freshly served page), so the test decides what it sends and when."""
    page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30).read().decode()
    token = re.search(r'"token":\s*"([^"]+)"', page).group(1)
    connection = socket.create_connection(("127.0.0.1", port), timeout=30)
    key = base64.b64encode(os.urandom(16)).decode()
    connection.sendall(
        f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nOrigin: http://127.0.0.1:{port}\r\n"
        f"Sec-WebSocket-Protocol: bokeh, {token}\r\n\r\n".encode()
    )  # fmt: skip
    received = connection.recv(4096)
    assert received.startswith(b"HTTP/1.1 101"), "the websocket was not accepted"
    while b'"ACK"' not in received:  # the server's session is open: a browser waits for this too
        more = connection.recv(4096)
        assert more, f"the server closed the websocket before its ACK: {received[:300]!r}"
        received += more
    return connection


def test_websockets_the_server_is_closing_leave_no_traceback(tmp_path) -> None:
    """A connection the server closes waits up to 5 s for the browser's close frame (as
    when a tab goes away while an update is sent). A keep-alive ping in that window made
    bokeh drop the connection twice: an AssertionError traceback in the server's terminal
    (the CI failure of 2026-12-06). Connections held in that state, a new one every 4 s
    for longer than bokeh's 37-s keep-alive period: the terminal shows no traceback, and a
    page opened afterwards is served."""
    port = free_port()
    server = sn5dask_cli("dashboard", tmp_path / "out", "--port", port)
    try:
        wait_for_port(port, 60)
        held = []
        started = time.monotonic()
        while time.monotonic() - started < 40:  # one closing connection at every moment
            connection = bokeh_websocket(port)
            mask = os.urandom(4)
            # a binary frame where bokeh expects a message's text header: it closes
            connection.sendall(bytes([0x82, 0x80 | 4]) + mask + bytes(b ^ m for b, m in zip(b"\x00" * 4, mask)))
            held.append((time.monotonic(), connection))  # never answers the server's close frame
            while time.monotonic() - held[-1][0] < 4:  # tornado gives it up after 5 s
                time.sleep(0.1)
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30).status == 200
        time.sleep(6)  # the last connection is given up by the server
    finally:
        kill_group(server, signal.SIGINT)
    output = server.stdout.read()
    assert server.returncode == 0, output
    assert output.count("protocol error") == len(held) >= 9, output  # the refused messages were seen
    assert "Traceback" not in output and "AssertionError" not in output, output


def test_a_damaged_manifest_shows_that_aoi_only(browser, tmp_path) -> None:
    """Item 0: one AOI's tampered manifest (counts that are not numbers; an output path
    leaving OUT) shows that AOI as damaged; the other AOI is usable; no traceback."""
    from sn5dask.synthetic import make_synthetic_aoi

    root = tmp_path / "in"
    for name in ("AOI_98_Synthetic", AOI):
        make_synthetic_aoi(root, aoi=name, n_chips=2, size=64, seed=3, with_edge_cases=False)
    out = tmp_path / "out"
    process = sn5dask_cli("run", root, "--out", out, "--workers", "1", "--formats", "geotiff")
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    damaged = out / "AOI_98_Synthetic" / "manifest.json"
    document = json.loads(damaged.read_text())
    document["counts"] = {"ok": "lots", "failed": [1]}
    damaged.write_text(json.dumps(document))
    before = damaged.read_bytes()
    port = free_port()
    server = sn5dask_cli("dashboard", out, "--port", port)
    try:
        wait_for_port(port, 60)
        browser.get(f"http://127.0.0.1:{port}/?aoi=AOI_98_Synthetic")
        text = wait_for(browser, lambda t: "damaged" in t and t, what="the damaged AOI")
        assert "counts are not numbers" in text and "Traceback" not in text
        browser.save_screenshot(str(ARTIFACTS / "12-damaged-manifest.png"))
        select_option(browser, AOI)
        text = wait_for(browser, lambda t: "2 / 2 chips done" in t and "chip1" in t and t, what="the healthy AOI")
        assert "damaged:" not in text

        document["counts"] = {"ok": 2, "skipped": 0, "failed": 0}
        document["chips"]["chip0"]["outputs"]["rgb"] = "../../../../etc/passwd"
        damaged.write_text(json.dumps(document))
        before = damaged.read_bytes()
        browser.get(f"http://127.0.0.1:{port}/?aoi=AOI_98_Synthetic&chip=chip0")
        text = wait_for(browser, lambda t: "damaged" in t and t, what="the escaping path")
        assert "lies outside the output folder" in text and "Traceback" not in text
    finally:
        kill_group(server, 2)
    assert damaged.read_bytes() == before  # the dashboard never writes data


def test_an_idle_dashboard_reads_a_manifest_only_when_it_changed(tmp_path) -> None:
    """Item 5: two tabs open on an idle served dashboard for 6 s read the manifest never
    again (one stat per refresh); a rewritten manifest is read once for both tabs."""
    import panel as pn

    from sn5dask.dashboard import Dashboard, RunController
    from sn5dask.dashboard import data as dashboard_data
    from sn5dask.synthetic import make_synthetic_aoi

    aoi = make_synthetic_aoi(tmp_path / "in", n_chips=3, size=64, seed=3, with_edge_cases=False)
    out = tmp_path / "out"
    process = sn5dask_cli("run", aoi.root, "--out", out, "--workers", "1", "--formats", "geotiff")
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    manifest_url = str(out / AOI / "manifest.json")
    controller = RunController()
    port = free_port()
    server = pn.serve({"/": lambda: Dashboard(str(out), None, controller).page()}, address="127.0.0.1",
                      port=port, show=False, threaded=True, start=True, verbose=False,
                      websocket_origin=[f"127.0.0.1:{port}"])  # fmt: skip
    try:
        wait_for_port(port, 30)
        with browser_session() as first, browser_session() as second:
            for tab in (first, second):
                tab.get(f"http://127.0.0.1:{port}/")
                wait_for(tab, lambda t: "3 / 3 chips done" in t, what="the page")
            reads_before = dashboard_data.READS[manifest_url]
            time.sleep(6)
            assert dashboard_data.READS[manifest_url] == reads_before
            Path(manifest_url).write_text(Path(manifest_url).read_text())  # a rewrite: new mtime
            time.sleep(3)
            assert dashboard_data.READS[manifest_url] == reads_before + 1
            assert "3 / 3 chips done" in page_text(first)
    finally:
        server.stop()
        threading.Event().wait(0.5)


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
        browser.save_screenshot(str(ARTIFACTS / "13-hostile-names.png"))
        assert text.count(hostile) >= 3, text  # the sidebar, the inspector's reason, its title
        assert "not valid GeoJSON" in text
        assert browser.execute_script("return document.body.dataset.pwned") is None
        assert find(browser, "img[src=x]") is None
    finally:
        kill_group(server, 2)
