"""The dashboard app (Panel + HoloViews on bokeh): one object shown in JupyterLab and
served by `sn5dask dashboard OUT` on 127.0.0.1.

For the AOI picked: live progress (done / failed / skipped, chips/s, ETA) of any run
writing to OUT (started here, in a notebook or by the CLI), the Dask dashboard link and
the cost of the cluster the dashboard keeps (it outlives runs and notebook cells until
closed), per-band histograms with the stretch cut-offs and the share clipped at each, a
filterable chip table, a chip inspector (zoom/pan RGB, any mask kind or multichannel band
overlaid, label centrelines on top; failed chips too), the speed distribution in the
masks' own bins, and a map of chip footprints coloured by status.

Every resource (BokehJS, Panel's and Tabulator's JS and CSS) comes from this machine:
the served page from the Panel server, the notebook's inline, so the app works on an
air-gapped cluster. The page is refreshed every second, but the files behind it are
read again only when they change (`data.StampedCache`).
"""

from __future__ import annotations

import html
import logging
from typing import Any

import holoviews as hv
import pandas as pd
import panel as pn

from sn5dask.dashboard import data, plots
from sn5dask.dashboard.plots import OVERLAYS
from sn5dask.dashboard.run import LiveCounts, RunController
from sn5dask.io.files import normalise_location
from sn5dask.outputs.layout import AoiLayout

__all__ = ["OVERLAYS", "Dashboard", "LiveCounts", "RunController", "controller_for", "serve"]

log = logging.getLogger("sn5dask")

REFRESH_MS = 1000
COST_EVERY_S = 5  # the kept cluster's cost is read from the scheduler this often
DISCONNECTED = ("The sn5dask dashboard server stopped: this page no longer updates and its "
                "controls do nothing. Start `sn5dask dashboard` again and reload the page.")  # fmt: skip
# The status line's colours per state, as inline styles: a pane's stylesheets changed after
# it is shown would be fetched from Panel's CDN in a notebook (its inline resources cover
# what is rendered first only).
STATUS_STYLES = {
    name: {"background": background, "border-left": f"6px solid {edge}", "padding": "2px 12px", "border-radius": "4px"}
    for name, (background, edge) in {
        "secondary": ("#f1f3f5", "#adb5bd"), "primary": ("#e7f1ff", "#0d6efd"), "success": ("#e9f7ef", "#2ca02c"),
        "warning": ("#fff8e1", "#ff9800"), "danger": ("#fdecea", "#d62728"),
    }.items()
}  # fmt: skip
TABLE_WIDTHS = {"chip": 90, "status": 95, "reason": 380, "file": 260, "fold": 70, "warnings": 115,
                "max zero fraction": 170, "first warning": 320}  # fmt: skip


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


def served() -> bool:
    """Whether this code runs for a page of a Panel server (else: a notebook, a script)."""
    document = pn.state.curdoc
    return bool(document is not None and document.session_context is not None)


class Dashboard:
    """The app for one output folder. `view()` is the layout to show in a notebook,
    `page()` the same in a page template, to serve."""

    def __init__(self, out: str, root: str | None = None, controller: RunController | None = None) -> None:
        # In a notebook the JS and CSS go inline into the output: JupyterLab has no other
        # place to load them from when the machine has no internet.
        inline = not served()
        pn.extension("tabulator", notifications=True, inline=inline, disconnect_notification=DISCONNECTED)
        hv.extension("bokeh", logo=False, inline=inline)
        self.out = normalise_location(out)
        self.root = None if root is None else normalise_location(root)
        self.controller = controller or RunController()
        choices = data.aois(self.out)
        self.aoi = pn.widgets.Select(name="AOI", options=choices, value=choices[0] if choices else None)
        self.run_button = pn.widgets.Button(name="Start run", button_type="primary", disabled=root is None)
        self.run_button.on_click(lambda _: self.start_run())
        self.close_button = pn.widgets.Button(name="Close cluster", button_type="light", disabled=True)
        self.close_button.on_click(lambda _: self.close_cluster())
        self.cluster_text = pn.pane.Markdown("")
        self.status = pn.pane.Markdown("", sizing_mode="stretch_width", styles=STATUS_STYLES["secondary"])
        self.dask_link = pn.pane.Markdown("")
        self.table = pn.widgets.Tabulator(
            pd.DataFrame(columns=data.TABLE_COLUMNS), header_filters=True, pagination="local",
            page_size=10, selectable=1, disabled=True, show_index=False, widths=TABLE_WIDTHS,
            sizing_mode="stretch_width",
        )  # fmt: skip
        self.chip = pn.widgets.Select(name="chip", options=[], width=180)
        self.overlay = pn.widgets.Select(name="overlay", options=OVERLAYS, value="binary", width=200)
        self.opacity = pn.widgets.FloatSlider(name="overlay opacity", start=0.0, end=1.0, step=0.05, value=0.5, width=200)
        self.centrelines = pn.widgets.Checkbox(name="label centrelines", value=True)
        self.inspector_title = pn.pane.Markdown("")
        self.inspector = pn.pane.HoloViews(hv.Div(""), linked_axes=False)
        self.histograms = pn.pane.HoloViews(hv.Div(""), linked_axes=False)
        self.clipped = pn.widgets.Tabulator(pd.DataFrame(), disabled=True, show_index=False, width=620)
        self.speed = pn.pane.HoloViews(hv.Div(""), linked_axes=False)
        self.speed_note = pn.pane.Markdown("Open this tab to compute it.", sizing_mode="stretch_width")
        self.footprint_map = pn.pane.HoloViews(hv.Div(""), linked_axes=False)
        self.map_note = pn.pane.Markdown("", sizing_mode="stretch_width")
        self.tabs = pn.Tabs(dynamic=False, sizing_mode="stretch_width")
        self._watch: data.ProgressWatch | None = None
        self._shown: tuple[Any, int] | None = None  # (manifest reading, live changes) drawn
        self._speed_for: Any = None  # the manifest reading the speed plots were made from
        self._wanted_chip: str | None = None  # from the page URL (?chip=...)
        self._said: set[str] = set()  # messages already notified in this session
        #: Warnings said in this session (deep links that matched nothing, run errors),
        #: also shown under the status line.
        self.notes: list[str] = []
        self._cost_checked = 0.0
        self.table.param.watch(self._table_selected, "selection")
        self.aoi.param.watch(lambda _: self.load_aoi(), "value")
        self.chip.param.watch(lambda _: self.show_chip(), "value")
        self.tabs.param.watch(lambda _: self._tab_opened(), "active")
        self.load_aoi()

    # -- actions -----------------------------------------------------------------------
    def start_run(self, **options: Any) -> None:
        """Start a run of ROOT into OUT on the dashboard's cluster (the button does this).
        Returns at once; the page says "starting" while the cluster comes up."""
        if self.root is None or self.controller.running:
            return
        self.run_button.disabled = True
        self.run_button.name = "Starting…"
        try:
            self.controller.start(self.root, self.out, **options)
        except Exception as exc:  # a config the run refuses: said in the page
            self.controller.error = f"{type(exc).__name__}: {exc}"
            self.controller.state = "failed"
        self.refresh()

    def close_cluster(self) -> None:
        if self.controller.running:
            return
        self.controller.close_cluster()
        self.refresh()

    def load_aoi(self) -> None:
        """(Re)load everything of the AOI picked: table, histograms, map (speeds: when
        their tab is opened)."""
        if self.aoi.value is None:
            choices = sorted(set(data.aois(self.out)) | set(self.controller.live.counts))
            if choices:
                self.aoi.options, self.aoi.value = choices, choices[0]
            return
        layout = AoiLayout(self.out, self.aoi.value)
        self._watch = data.ProgressWatch(layout)
        self._shown = None
        self._speed_for = None
        self.speed.object = hv.Div("")
        self.speed_note.object = "Open this tab to compute it."
        bands = data.band_histograms_of(layout)
        if bands:
            self.histograms.object = plots.histograms(bands)
            self.clipped.value = plots.clipped_table(bands)
        else:
            self.histograms.object = hv.Div("<p>No AOI histogram: this output was stretched per chip "
                                            "(cresi profile or --stretch chip), or its run has not scanned it yet.</p>")  # fmt: skip
            self.clipped.value = pd.DataFrame()
        self.refresh()

    def refresh(self) -> None:
        """Progress, buttons and cluster; and (when the manifest or the run's news changed
        since) the table, map and inspector."""
        self._update_controls()
        if self.aoi.value is None:
            self.load_aoi()
            if self.aoi.value is None:
                state = self._run_state_text()
                self.status.object = state or (f"No run output in {code(self.out)} yet." + (
                    " Press **Start run**." if self.root else ""))  # fmt: skip
                return
        assert self._watch is not None
        layout = self._watch.layout
        progress = self._watch.read()
        live = self.controller.live.counts.get(str(self.aoi.value))
        if live is not None and (live.running or live.done >= progress.done):
            live.damaged = progress.damaged
            progress = live  # a run started here: counted per chip
        self._show_status(progress)
        reading = data.read_manifest(layout)
        key = (reading, self.controller.live.changes)
        if self._shown is not None and self._shown[0] is key[0] and self._shown[1] == key[1]:
            return
        self._shown = key
        if reading.manifest is None:
            self.table.value = pd.DataFrame(columns=data.TABLE_COLUMNS)
            self.chip.options = []
            return
        live_status = self.controller.live.chip_status.get(str(self.aoi.value), {})
        rows = data.chip_table(reading.manifest, live_status)
        for row in rows:  # a chip without a fold shows blank, not -1 or NaN
            row["fold"] = "" if row["fold"] is None else str(row["fold"])
        self.table.value = pd.DataFrame(rows, columns=data.TABLE_COLUMNS)
        chips = [row["chip"] for row in rows]
        if chips != list(self.chip.options):
            current = self.chip.value
            self.chip.options = chips
            self.chip.value = current if current in chips else (chips[0] if chips else None)
        if self._wanted_chip is not None:
            if self._wanted_chip in reading.manifest.chips:
                self.chip.value, self._wanted_chip = self._wanted_chip, None
            elif not progress.running:
                self._say("warning", f"No chip {self._wanted_chip!r} in {self.aoi.value}: showing {self.chip.value}.")
                self._wanted_chip = None
        self._show_map(layout, reading, live_status)
        if self.tabs.active == 2:
            self._show_speeds()

    def show_chip(self) -> None:
        if self._watch is None or self.chip.value is None:
            return
        manifest = data.read_manifest(self._watch.layout).manifest
        if manifest is None or self.chip.value not in manifest.chips:
            return
        view = data.chip_view(self._watch.layout, manifest, self.chip.value)
        self.inspector_title.object = (
            f"### Chip {code(view.chip_id)} ({text(view.status)})"
            + (f"\n\n{text(view.note)}" if view.note else "")
        )
        if view.rgb is None:
            self.inspector.object = plots.chip_plot(view, "none", 0.0, False)
            return

        def draw(overlay: str, opacity: float, centrelines: bool) -> Any:
            return plots.chip_plot(view, overlay, opacity, centrelines)

        # A DynamicMap redraws in place when the overlay changes, keeping the user's zoom;
        # a new chip is a new plot (its own extent).
        self.inspector.object = hv.DynamicMap(draw, streams={
            "overlay": self.overlay.param.value, "opacity": self.opacity.param.value,
            "centrelines": self.centrelines.param.value,
        })  # fmt: skip

    def view(self) -> pn.viewable.Viewable:
        """The layout (call once per session: it starts the 1 s refresh). Served, the page
        URL may pick the AOI and the chip to inspect: `/?aoi=AOI_7_Moscow&chip=chip12`."""
        self._follow_page_arguments()
        pn.state.add_periodic_callback(self.refresh, period=REFRESH_MS)
        self.refresh()
        return pn.Column(
            pn.pane.Markdown(f"## sn5dask dashboard · {code(self.out)}"),
            pn.Row(self.aoi, self.run_button, self.close_button, pn.Column(self.dask_link, self.cluster_text)),
            self._main(),
            sizing_mode="stretch_width",
        )

    def page(self) -> pn.template.BaseTemplate:
        """The served page: the same app in Panel's page template (controls on the side)."""
        self._follow_page_arguments()
        pn.state.add_periodic_callback(self.refresh, period=REFRESH_MS)
        self.refresh()
        template = pn.template.BootstrapTemplate(
            title="sn5dask dashboard", header_background="#1f3b57", sidebar_width=290,
        )  # fmt: skip
        assert template.sidebar is not None and template.main is not None
        template.sidebar.extend([
            pn.pane.Markdown(f"**Output**<br>{code(self.out)}"
                             + (f"<br><br>**Input**<br>{code(self.root)}" if self.root else "")),
            self.aoi, self.run_button, self.dask_link, self.cluster_text, self.close_button,
        ])  # fmt: skip
        template.main.append(self._main())
        return template

    # -- pieces ---------------------------------------------------------------------------
    def _main(self) -> pn.viewable.Viewable:
        controls = pn.Row(self.chip, self.overlay, self.opacity, self.centrelines)
        inspector = pn.Column(self.inspector_title, controls, self.inspector)
        self.tabs.extend([
            ("Chips", pn.Column(self.table, inspector, sizing_mode="stretch_width")),
            ("Histograms", pn.Column(
                pn.pane.Markdown("Red lines: the stretch cut-offs (stats.json). Valid pixels clipped at each:"),
                self.clipped, self.histograms)),
            ("Speeds", pn.Column(self.speed_note, self.speed, sizing_mode="stretch_width")),
            ("Map", pn.Column(self.map_note, self.footprint_map, sizing_mode="stretch_width")),
        ])  # fmt: skip
        return pn.Column(self.status, self.tabs, sizing_mode="stretch_width")

    def _follow_page_arguments(self) -> None:
        arguments = pn.state.session_args or {}
        if arguments.get("aoi"):
            aoi = arguments["aoi"][0].decode(errors="replace")
            if aoi in self.aoi.options:
                self.aoi.value = aoi
            else:
                self._say("warning", f"No AOI {aoi!r} in {self.out}: showing {self.aoi.value or 'nothing yet'}.")
        if arguments.get("chip"):
            self._wanted_chip = arguments["chip"][0].decode(errors="replace")
            self._shown = None

    def _say(self, kind: str, message: str) -> None:
        """A message in the page: a notification (once per session) and, for warnings and
        errors, in the log of the server."""
        if message in self._said:
            return
        self._said.add(message)
        log.warning(message)
        notifications = pn.state.notifications if served() else None
        if notifications is not None:
            getattr(notifications, kind)(html.escape(message), duration=0)
        self.notes.append(message)

    def _run_state_text(self) -> str:
        controller = self.controller
        if controller.state == "starting":
            waiting = controller.live.waiting_for
            return "**Starting the run**: " + (text(waiting) if waiting else "the cluster is coming up (a few seconds)…")
        if controller.state == "failed" and controller.error:
            return f"**The run failed**: {text(controller.error)}"
        return ""

    def _show_status(self, progress: data.Progress) -> None:
        controller = self.controller
        if controller.state == "failed" and controller.error:
            self._say("error", f"The run failed: {controller.error}")
        if progress.damaged:
            self.status.styles = STATUS_STYLES["danger"]
            self.status.object = (f"**{text(str(self.aoi.value))}** · **damaged**: {text(progress.damaged)}. "
                                  "Its chips can't be shown; other AOIs can. Re-run to rewrite it.")  # fmt: skip
            return
        starting = self._run_state_text() if controller.state in ("starting", "failed") else ""
        if progress.running:
            state = "running"
        elif controller.state == "starting":
            state = "starting"
        elif progress.total and progress.done >= progress.total:
            state = "finished"
        elif progress.done:
            state = "stopped before the end"
        else:
            state = "not started"
        parts = [
            f"**{text(str(self.aoi.value))}** · {state} · **{progress.done} / {progress.total} chips done** "
            f"({progress.ok} ok, {progress.skipped} skipped, {progress.failed} failed)"
        ]
        if progress.running and progress.chips_per_second:
            parts.append(f"{progress.chips_per_second:.2f} chips/s")
        if progress.running and progress.eta_seconds is not None:
            parts.append(f"ETA {progress.eta_seconds:.0f} s")
        lines = [" · ".join(parts)] + ([starting] if starting else []) + [text(note) for note in self.notes]
        self.status.styles = STATUS_STYLES[
            "danger" if controller.state == "failed" else "warning" if self.notes
            else "primary" if state in ("running", "starting") else "success" if state == "finished"
            else "secondary"
        ]  # fmt: skip
        self.status.object = "<br>".join(lines)

    def _update_controls(self) -> None:
        controller = self.controller
        busy = controller.running
        self.run_button.disabled = self.root is None or busy
        self.run_button.name = ("Starting…" if controller.state == "starting" else "Running…" if busy
                                else "Start run")  # fmt: skip
        self.close_button.disabled = busy or controller._client is None
        self.close_button.visible = controller._client is not None
        self.dask_link.object = self._dask_link()
        now = pd.Timestamp.now().timestamp()
        if now - self._cost_checked >= COST_EVERY_S or controller._client is None:
            self._cost_checked = now
            cost = controller.cost()
            self.cluster_text.object = "" if cost is None else (
                f"{text(cost.describe())}. It stays up after runs"
                + (": close it to free them." if cost.local else "."))  # fmt: skip

    def _dask_link(self) -> str:
        client = self.controller._client
        if client is None:
            return "Dask dashboard: starts with the first run from here" if self.root else ""
        link = client.dashboard_link
        return f'<a href="{html.escape(link)}" target="_blank">Dask dashboard</a> (kept up after runs)'

    def _table_selected(self, event: Any) -> None:
        if event.new:
            row = self.table.value.iloc[event.new[0]]
            self.chip.value = row["chip"]

    def _show_map(self, layout: AoiLayout, reading: data.ManifestReading, live_status: dict[str, str]) -> None:
        found = data.footprints(layout, reading.manifest, live_status)
        self.footprint_map.object = plots.footprint_map(found.boxes) if found.boxes else hv.Div("<p>No chip footprints yet.</p>")
        missing = sorted(found.without_footprint.items())
        if missing:
            listed = ", ".join(f"{code(cid)} ({text(status)})" for cid, status in missing[:20])
            more = f" and {len(missing) - 20} more" if len(missing) > 20 else ""
            self.map_note.object = (f"**{len(missing)} chip{'s' if len(missing) != 1 else ''} without a footprint** "
                                    f"(image unreadable, so its place is unknown): {listed}{more}.")  # fmt: skip
        else:
            self.map_note.object = f"{len(found.boxes)} chips."

    def _tab_opened(self) -> None:
        if self.tabs.active == 2:
            self._show_speeds()

    def _show_speeds(self) -> None:
        """The speed distribution reads up to 200 chips' masks and labels: done only when
        its tab is open, again only when the manifest changed, and not while a run goes."""
        if self._watch is None:
            return
        reading = data.read_manifest(self._watch.layout)
        if reading is self._speed_for or reading.manifest is None:
            return
        if self.controller.running:
            self.speed_note.object = "Shown when the run has finished."
            return
        self._speed_for = reading
        distribution = data.speed_distribution(self._watch.layout, reading.manifest)
        if not distribution.chips_counted:
            self.speed.object, self.speed_note.object = hv.Div(""), "No chip with binned masks yet."
            return
        self.speed.object, self.speed_note.object = plots.speed_bars(distribution), plots.speed_note(distribution)


def _closed_tab_noise(record: logging.LogRecord) -> bool:
    """False for asyncio's "Task exception was never retrieved" about a websocket that a
    browser tab closed while an update was being sent to it: a tab closing (or reloading)
    is no error, and the traceback would alarm whoever watches the server's terminal."""
    from tornado.iostream import StreamClosedError
    from tornado.websocket import WebSocketClosedError

    exception = record.exc_info[1] if record.exc_info else None
    return not isinstance(exception, (WebSocketClosedError, StreamClosedError))


# The page's websocket is kept alive by tornado's own pings (an idle page behind a proxy
# would otherwise be cut), not by bokeh's keep-alive job: that job drops a connection it
# finds closing, and when tornado then closes it too, bokeh 3.9 fails an assertion and
# prints a traceback in the server's terminal (a closed tab or a refused message is
# enough). The pong must come back within the interval, or the connection is closed.
WEBSOCKET_PING_S = 30


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
    logging.getLogger("asyncio").addFilter(_closed_tab_noise)

    def session() -> pn.template.BaseTemplate:
        return Dashboard(out, root, controller).page()

    try:
        pn.serve(
            {"/": session}, address="127.0.0.1", port=port, show=False, title="sn5dask",
            websocket_origin=[f"127.0.0.1:{port}", f"localhost:{port}"], threaded=False,
            start=True, verbose=False, keep_alive_milliseconds=0, websocket_ping_interval=WEBSOCKET_PING_S,
        )  # fmt: skip
    finally:
        # Ctrl-C: the cluster closes in its own thread (see run.KeptCluster); a run still
        # going is stopped with it, its finished chips kept in its manifest.
        controller.close_cluster(force=True)
