"""The dashboard app (Panel + HoloViews on bokeh): one object shown in JupyterLab and
served by `sn5dask dashboard OUT` on 127.0.0.1.

Panels, for the AOI picked: live progress (done / failed / skipped, chips/s, ETA) of any
run writing to OUT (started here, in a notebook or by the CLI: the manifest is re-read
every second), the Dask dashboard link of the cluster the dashboard keeps (it outlives
runs and notebook cells), per-band histograms with the stretch cut-offs and the share
clipped at each, a filterable chip table, a chip inspector (zoom/pan RGB, any mask kind or
multichannel band overlaid, label centrelines on top; failed chips too), the speed
distribution in the masks' own bins, and a map of chip footprints coloured by status.
"""

from __future__ import annotations

import html
import logging
import threading
import time
from contextlib import ExitStack
from typing import Any

import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn

from sn5dask.core.encodings import SPEED_BINS
from sn5dask.dashboard import data
from sn5dask.io.files import normalise_location
from sn5dask.outputs.layout import AoiLayout

OVERLAYS = ["none", "binary", "continuous", "binned"] + [f"multichannel: {name}" for name in (*SPEED_BINS, "road")]
REFRESH_MS = 1000


def text(value: str) -> str:
    """A string from the data (a path, a chip id, a failure reason, an exception) as
    Markdown that shows it literally: every character Markdown or HTML would act on is a
    character reference, so a file named `x<img src=x onerror=...>` is shown, never run,
    and `*`, `_`, `[` or a backtick in a name format nothing."""
    return "".join(f"&#{ord(c)};" if c in _MARKUP_CHARS else c for c in value)


def code(value: str) -> str:
    """`text` in a monospace span (HTML's own: a Markdown code span would show the
    character references themselves)."""
    return f"<code>{text(value)}</code>"


_MARKUP_CHARS = frozenset("<>&\"'`*_[]()#!|~\\{}+-.=$:")


class LiveCounts:
    """A `pipeline.Reporter` that keeps each AOI's counts as chips finish (per chip, where
    the manifest is rewritten only every 2 s)."""

    def __init__(self) -> None:
        self.counts: dict[str, data.Progress] = {}
        self.started: dict[str, float] = {}
        self.waiting_for: str | None = None  # "waiting for workers at ..." until one joins

    def cluster(self, dashboard_link: str | None, closes_with_run: bool) -> None:
        pass

    def waiting(self, message: str) -> None:
        self.waiting_for = message

    def notice(self, message: str) -> None:
        logging.getLogger("sn5dask").warning(message)

    def aoi_started(self, aoi: str, total: int, already_done: int, already_failed: int) -> None:
        self.counts[aoi] = data.Progress(total=total, ok=already_done, failed=already_failed, running=True)
        self.started[aoi] = time.monotonic()

    def chip_finished(self, aoi: str, result: Any) -> None:
        progress = self.counts[aoi]
        setattr(progress, result.status, getattr(progress, result.status) + 1)
        elapsed = time.monotonic() - self.started[aoi]
        made = progress.done
        if elapsed > 0 and made:
            progress.chips_per_second = made / elapsed
            progress.eta_seconds = (progress.total - progress.done) / progress.chips_per_second

    def aoi_finished(self, summary: Any) -> None:
        progress = self.counts.get(summary.aoi)
        if progress is not None:
            progress.running = False
            progress.eta_seconds = None


class RunController:
    """The cluster the dashboard keeps (one per process, shared by every browser session)
    and the run it started, if any. The cluster stays up after a run, so the Dask
    dashboard and dask-labextension panes stay connected."""

    def __init__(self, scheduler: str | None = None, workers: int | None = None) -> None:
        self.scheduler, self.workers = scheduler, workers
        self._stack = ExitStack()
        self._client: Any = None
        self.thread: threading.Thread | None = None
        self.error: str | None = None
        self.lock = threading.Lock()
        self.live = LiveCounts()

    @property
    def client(self) -> Any:
        with self.lock:
            if self._client is None:
                from sn5dask.runner.cluster import get_client

                self._client = self._stack.enter_context(get_client(self.scheduler, self.workers))
            return self._client

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def start(self, root: str, out: str, **options: Any) -> None:
        """Start `sn5dask run` on the kept cluster, in a background thread."""
        from sn5dask.config import load_config
        from sn5dask.runner.pipeline import run

        if self.running:
            raise RuntimeError("a run started here is still going")
        config = load_config(None, root=root, out=out, scheduler=self.scheduler, **options)
        client = self.client
        self.error = None

        self.live = LiveCounts()
        live = self.live

        def work() -> None:
            try:
                run(config, client=client, reporter=live)
            except Exception as exc:  # shown in the dashboard, never a dead thread
                self.error = f"{type(exc).__name__}: {exc}"

        self.thread = threading.Thread(target=work, name="sn5dask-run", daemon=True)
        self.thread.start()

    def wait(self, timeout: float | None = None) -> None:
        if self.thread is not None:
            self.thread.join(timeout)

    def close(self) -> None:
        self.wait()
        self._stack.close()
        self._client = None


class Dashboard:
    """The app for one output folder. `view()` is the Panel layout to show or serve."""

    def __init__(self, out: str, root: str | None = None, controller: RunController | None = None) -> None:
        pn.extension("tabulator")
        hv.extension("bokeh", logo=False)
        self.out = normalise_location(out)
        self.root = None if root is None else normalise_location(root)
        self.controller = controller or RunController()
        choices = data.aois(self.out)
        self.aoi = pn.widgets.Select(name="AOI", options=choices, value=choices[0] if choices else None)
        self.run_button = pn.widgets.Button(name="Start run", button_type="primary", disabled=root is None)
        self.run_button.on_click(lambda _: self.start_run())
        self.status = pn.pane.Markdown("", width=1100)
        self.dask_link = pn.pane.Markdown("")
        self.table = pn.widgets.Tabulator(
            pd.DataFrame(columns=["chip", "status", "fold", "warnings", "max zero fraction", "reason", "first warning"]),
            header_filters=True, pagination="local", page_size=15, selectable=1, disabled=True,
            show_index=False, width=1100, height=420,
        )  # fmt: skip
        self.chip = pn.widgets.Select(name="chip", options=[])
        self.overlay = pn.widgets.Select(name="overlay", options=OVERLAYS, value="binary")
        self.opacity = pn.widgets.FloatSlider(name="overlay opacity", start=0.0, end=1.0, step=0.05, value=0.5)
        self.centrelines = pn.widgets.Checkbox(name="label centrelines", value=True)
        self.inspector_title = pn.pane.Markdown("")
        self.inspector = pn.pane.HoloViews(hv.Div(""))
        self.histograms = pn.pane.HoloViews(hv.Div(""))
        self.speed = pn.pane.HoloViews(hv.Div(""))
        self.speed_note = pn.pane.Markdown("", width=1100)
        self.footprint_map = pn.pane.HoloViews(hv.Div(""))
        self._watch: data.ProgressWatch | None = None
        self._last_done = -1
        self._wanted_chip: str | None = None  # from the page URL (?chip=...)
        self.table.param.watch(self._table_selected, "selection")
        self.aoi.param.watch(lambda _: self.load_aoi(), "value")
        for widget in (self.chip, self.overlay, self.opacity, self.centrelines):
            widget.param.watch(lambda _: self.show_chip(), "value")
        self.load_aoi()

    # -- actions -----------------------------------------------------------------------
    def start_run(self, **options: Any) -> None:
        """Start a run of ROOT into OUT on the dashboard's cluster (the button does this)."""
        if self.root is None:
            return
        self.controller.start(self.root, self.out, **options)
        self.dask_link.object = self._dask_link()
        self.refresh()

    def load_aoi(self) -> None:
        """(Re)load everything of the AOI picked: table, histograms, speed, map."""
        if self.aoi.value is None:
            choices = sorted(set(data.aois(self.out)) | set(self.controller.live.counts))
            if choices:
                self.aoi.options, self.aoi.value = choices, choices[0]
            return
        layout = AoiLayout(self.out, self.aoi.value)
        self._watch = data.ProgressWatch(layout)
        self._last_done = -1
        self.histograms.object = self._histograms(layout)
        self.refresh()

    def refresh(self) -> None:
        """Progress, and (when chips finished since) the table, speed and map."""
        if self.aoi.value is None:
            self.load_aoi()
            if self.aoi.value is None:
                self.status.object = f"No run output in {code(self.out)} yet." + (
                    " Press **Start run**." if self.root else "")
                return
        assert self._watch is not None
        progress = self._watch.read()
        live = self.controller.live.counts.get(str(self.aoi.value))
        if live is not None and (live.running or live.done >= progress.done):
            progress = live  # a run started here: counted per chip
        self.status.object = self._status_text(progress)
        if progress.done == self._last_done:
            return
        self._last_done = progress.done
        layout = self._watch.layout
        manifest = data.manifest_of(layout)
        if manifest is None:
            return
        rows = data.chip_table(manifest)
        self.table.value = pd.DataFrame(rows) if rows else self.table.value.iloc[0:0]
        chips = [row["chip"] for row in rows]
        if chips != list(self.chip.options):
            current = self.chip.value
            self.chip.options = chips
            self.chip.value = current if current in chips else (chips[0] if chips else None)
        if self._wanted_chip in chips:
            self.chip.value, self._wanted_chip = self._wanted_chip, None
        if not self.histograms.object or isinstance(self.histograms.object, hv.Div):
            self.histograms.object = self._histograms(layout)
        self.footprint_map.object = self._map(layout, manifest)
        if not progress.running:
            self.speed.object, self.speed_note.object = self._speed(layout, manifest)

    def show_chip(self) -> None:
        if self._watch is None or self.chip.value is None:
            return
        manifest = data.manifest_of(self._watch.layout)
        if manifest is None or self.chip.value not in manifest.chips:
            return
        view = data.chip_view(self._watch.layout, manifest, self.chip.value)
        self.inspector_title.object = (
            f"### Chip {code(view.chip_id)} ({text(view.status)})"
            + (f"\n\n{text(view.note)}" if view.note else "")
        )
        self.inspector.object = self._chip_plot(view)

    def view(self) -> pn.viewable.Viewable:
        """The layout (call once per session: it starts the 1 s refresh). Served, the page
        URL may pick the AOI and the chip to inspect: `/?aoi=AOI_7_Moscow&chip=chip12`."""
        arguments = pn.state.session_args or {}
        if arguments.get("aoi"):
            aoi = arguments["aoi"][0].decode()
            if aoi in self.aoi.options:
                self.aoi.value = aoi
        if arguments.get("chip"):
            self._wanted_chip = arguments["chip"][0].decode()
            self._last_done = -1
            self.refresh()
        pn.state.add_periodic_callback(self.refresh, period=REFRESH_MS)
        self.dask_link.object = self._dask_link()
        controls = pn.Row(self.aoi, self.run_button, self.dask_link)
        inspector = pn.Column(
            self.inspector_title,
            pn.Row(self.chip, self.overlay, self.opacity, self.centrelines),
            self.inspector,
        )
        return pn.Column(
            pn.pane.Markdown(f"# sn5dask dashboard\n{code(self.out)}"),
            controls,
            self.status,
            pn.Tabs(
                ("Chips", pn.Column(self.table, inspector)),
                ("Histograms", self.histograms),
                ("Speeds", pn.Column(self.speed_note, self.speed)),
                ("Map", self.footprint_map),
                dynamic=False,
            ),
        )

    # -- pieces ---------------------------------------------------------------------------
    def _status_text(self, progress: data.Progress) -> str:
        state = "running" if progress.running else "finished" if progress.total else "not started"
        parts = [
            f"**{text(str(self.aoi.value))}** · {state} · **{progress.done} / {progress.total} chips done** "
            f"({progress.ok} ok, {progress.skipped} skipped, {progress.failed} failed)"
        ]
        if progress.chips_per_second:
            parts.append(f"{progress.chips_per_second:.2f} chips/s")
        if progress.eta_seconds is not None:
            parts.append(f"ETA {progress.eta_seconds:.0f} s")
        if self.controller.error:
            parts.append(f"run error: {text(self.controller.error)}")
        return " · ".join(parts)

    def _dask_link(self) -> str:
        client = self.controller._client
        if client is None:
            return "Dask dashboard: starts with the first run from here"
        link = client.dashboard_link
        return f'<a href="{html.escape(link)}">Dask dashboard</a> (kept up after runs)'

    def _table_selected(self, event: Any) -> None:
        if event.new:
            row = self.table.value.iloc[event.new[0]]
            self.chip.value = row["chip"]

    def _histograms(self, layout: AoiLayout) -> Any:
        bands = data.band_histograms_of(layout)
        if not bands:
            return hv.Div("<p>No AOI histogram: this output was stretched per chip (cresi profile or --stretch chip).</p>")
        plots = []
        for band in bands:
            values = np.flatnonzero(band.counts)
            if not values.size:
                continue
            top = int(values.max())
            edges = np.unique(np.linspace(0, top + 1, 129).astype(int))  # <= 128 bars
            counts = np.add.reduceat(band.counts[: top + 1], edges[:-1])
            title = (f"band {band.band}: cut {band.low:g} / {band.high:g} · clipped "
                     f"{band.clipped_low:.1%} low, {band.clipped_high:.1%} high")  # fmt: skip
            histogram = hv.Histogram((edges, counts)).opts(title=title, xlabel="value", ylabel="pixels", width=420, height=260, tools=["hover"])
            cuts = hv.VLine(band.low).opts(color="#d62728") * hv.VLine(band.high).opts(color="#d62728")
            plots.append(histogram * cuts)
        return hv.Layout(plots).cols(2) if plots else hv.Div("<p>No valid pixel.</p>")

    def _chip_plot(self, view: data.ChipView) -> Any:
        if view.rgb is None:
            return hv.Div("<p>Neither an output nor a readable source image to show.</p>")
        rgb = view.rgb
        bands, height, width = rgb.shape
        image = np.dstack([rgb[i] for i in range(min(3, bands))]) if bands >= 3 else np.dstack([rgb[0]] * 3)
        bounds = (0, 0, width, height)
        plot = hv.RGB(image, bounds=bounds).opts(
            data_aspect=1, frame_width=640, tools=["hover", "wheel_zoom", "pan"],
            active_tools=["wheel_zoom"], xlabel="column", ylabel="row (from the bottom)",
        )  # fmt: skip
        overlay = self._overlay_array(view)
        if overlay is not None:
            plot = plot * hv.Image(overlay, bounds=bounds).opts(
                cmap="plasma", alpha=self.opacity.value, clipping_colors={"min": "transparent"},
                clim=(1, 255), colorbar=True,
            )  # fmt: skip
        if self.centrelines.value and view.lines:
            paths = [np.column_stack([line[:, 0], height - line[:, 1]]) for line in view.lines]
            plot = plot * hv.Path(paths).opts(color="cyan", line_width=1.5)
        return plot

    def _overlay_array(self, view: data.ChipView) -> np.ndarray | None:
        choice = self.overlay.value
        if choice == "none":
            return None
        if choice.startswith("multichannel: "):
            mask = view.masks.get("multichannel")
            if mask is None:
                return None
            band = (*SPEED_BINS, "road").index(choice.split(": ", 1)[1])
            return mask[band].astype(np.float32)
        mask = view.masks.get(choice)
        return None if mask is None else mask[0].astype(np.float32)

    def _speed(self, layout: AoiLayout, manifest: Any) -> tuple[Any, str]:
        distribution = data.speed_distribution(layout, manifest)
        if not distribution.chips_counted:
            return hv.Div(""), "No chip with binned masks yet."
        frame = pd.DataFrame({"bin": distribution.bins, "road km": distribution.road_km,
                              "mask pixels": distribution.pixels})  # fmt: skip
        km = hv.Bars(frame, "bin", "road km").opts(title="road length per speed bin", width=520, height=300, xrotation=30, tools=["hover"])
        px = hv.Bars(frame, "bin", "mask pixels").opts(title="mask pixels per speed bin", width=520, height=300, xrotation=30, tools=["hover"])
        total = distribution.pixels.sum() + distribution.background_pixels
        balance = ", ".join(f"{name} {n / total:.2%}" for name, n in zip(distribution.bins, distribution.pixels, strict=True))
        note = (f"Over {distribution.chips_counted} of {distribution.chips_total} chips with masks "
                f"(bins as in the masks: right-closed 10 mph, above 70 mph in the last). Class "
                f"balance of pixels: background {distribution.background_pixels / total:.2%}, {balance}.")  # fmt: skip
        return (km + px).cols(2), note

    def _map(self, layout: AoiLayout, manifest: Any) -> Any:
        boxes = data.footprints(layout, manifest)
        if not boxes:
            return hv.Div("<p>No chip footprints yet.</p>")
        frame = pd.DataFrame(boxes)
        # a degree of longitude is cos(latitude) of a degree of latitude on the ground
        aspect = 1.0 / max(np.cos(np.radians((frame["south"].mean() + frame["north"].mean()) / 2)), 0.05)
        return hv.Rectangles(frame, kdims=["west", "south", "east", "north"], vdims=["status", "chip"]).opts(
            color="status", cmap=data.STATUS_COLOURS, line_color="white", tools=["hover"],
            data_aspect=aspect, frame_width=640, xlabel="longitude", ylabel="latitude",
            title="chip footprints by status (green ok, orange skipped, red failed, grey pending)",
        )  # fmt: skip


_CONTROLLERS: dict[tuple[str | None, int | None], RunController] = {}


def controller_for(scheduler: str | None, workers: int | None = None) -> RunController:
    """The process's controller for a scheduler (so browser sessions share one cluster)."""
    key = (scheduler, workers)
    if key not in _CONTROLLERS:
        _CONTROLLERS[key] = RunController(scheduler, workers)
    return _CONTROLLERS[key]


def serve(out: str, *, root: str | None = None, scheduler: str | None = None, port: int = 5006,
          workers: int | None = None) -> None:  # fmt: skip
    """Serve the dashboard on 127.0.0.1:`port` until interrupted."""
    controller = controller_for(scheduler, workers)

    def session() -> pn.viewable.Viewable:
        return Dashboard(out, root, controller).view()

    try:
        pn.serve(
            {"/": session}, address="127.0.0.1", port=port, show=False, title="sn5dask",
            websocket_origin=[f"127.0.0.1:{port}", f"localhost:{port}"], threaded=False,
            start=True, verbose=False,
        )  # fmt: skip
    finally:
        controller.close()
