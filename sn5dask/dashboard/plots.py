"""The dashboard's plots: HoloViews elements built from `data`'s values (no widgets here).

Each plot names its own dimensions (`column`/`row` for a chip, `band N value` for a
histogram, ...): Panel links the axes of plots that share a dimension name, and a chip's
pixel columns have nothing to do with a histogram's values.
"""

from __future__ import annotations

from typing import Any

import holoviews as hv
import numpy as np
import pandas as pd

from sn5dask.core.encodings import SPEED_BINS
from sn5dask.dashboard import data

OVERLAYS = ["none", "binary", "continuous", "binned"] + [f"multichannel: {name}" for name in (*SPEED_BINS, "road")]
#: The inspector's image fits in this many screen pixels each way (pixels stay square).
CHIP_FRAME_PX = 620


def histograms(bands: list[data.BandHistogram]) -> Any:
    """Per band: the AOI histogram (<= 128 bars) with red lines at the stretch cut-offs."""
    plots = []
    for band in bands:
        values = np.flatnonzero(band.counts)
        if not values.size:
            continue
        top = int(values.max())
        edges = np.unique(np.linspace(0, top + 1, 129).astype(int))
        counts = np.add.reduceat(band.counts[: top + 1], edges[:-1])
        dimension = hv.Dimension(f"band{band.band}", label=f"band {band.band} value")
        histogram = hv.Histogram((edges, counts), kdims=[dimension], vdims=["pixels"]).opts(
            title=f"band {band.band}: cut {_number(band.low)} / {_number(band.high)}",
            width=470, height=250, tools=["hover"], color="#4c72b0", line_color=None,
        )  # fmt: skip
        cuts = [hv.VLine(cut, kdims=[dimension, "pixels"]).opts(color="#d62728", line_width=2)
                for cut in (band.low, band.high) if cut is not None]  # fmt: skip
        plots.append(hv.Overlay([histogram, *cuts]))
    if not plots:
        return hv.Div("<p>No valid pixel.</p>")
    return hv.Layout(plots).cols(2).opts(shared_axes=False)


def _number(value: float | None) -> str:
    return "none" if value is None else f"{value:g}"


def clipped_table(bands: list[data.BandHistogram]) -> pd.DataFrame:
    """Per band: the cut-offs and the share of valid pixels clipped at each."""
    return pd.DataFrame([
        {"band": b.band, "low cut": b.low, "high cut": b.high,
         "clipped low": f"{b.clipped_low:.2%}", "clipped high": f"{b.clipped_high:.2%}"}
        for b in bands
    ])  # fmt: skip


def chip_frame(height: int, width: int) -> tuple[int, int]:
    """Screen size (width, height) of a chip's plot frame: square pixels, the longer side
    CHIP_FRAME_PX."""
    scale = CHIP_FRAME_PX / max(height, width, 1)
    return max(1, round(width * scale)), max(1, round(height * scale))


def chip_plot(view: data.ChipView, overlay: str, opacity: float, centrelines: bool) -> Any:
    """The chip's RGB with one overlay and the label centrelines. x is the pixel column, y
    the image row (row 0 on top, as in the file). Always the same three layers (an empty
    overlay or path when off), so a DynamicMap can swap them in place and the user's zoom
    stays."""
    if view.rgb is None:
        return hv.Div(f"<p>No image to show for {data_text(view.chip_id)}: neither an RGB output nor a readable source.</p>")
    rgb = view.rgb
    bands, height, width = rgb.shape
    image = np.dstack([rgb[i] for i in range(3)]) if bands >= 3 else np.dstack([rgb[0]] * 3)
    # HoloViews puts an array's first row at the top of its bounds (the largest y); with
    # the y axis inverted, the rows are flipped so that y is the row number going down.
    bounds = (0, 0, width, height)
    frame_width, frame_height = chip_frame(height, width)
    kdims = ["column", "row"]
    base = hv.RGB(image[::-1], bounds=bounds, kdims=kdims).opts(
        frame_width=frame_width, frame_height=frame_height, invert_yaxis=True, xlim=(0, width), ylim=(0, height),
        tools=["hover", "wheel_zoom", "pan", "box_zoom", "reset"], active_tools=["wheel_zoom", "pan"],
        xlabel="column", ylabel="row", title=f"{view.chip_id} ({view.status})",
    )  # fmt: skip
    mask = overlay_array(view, overlay)
    shown = np.zeros((height, width), np.float32) if mask is None else mask
    layer = hv.Image(shown[::-1], bounds=bounds, kdims=kdims, vdims=["mask"]).opts(
        cmap="plasma", alpha=float(opacity), clipping_colors={"min": "transparent"}, clim=(1, 255),
        colorbar=True, colorbar_position="right",
    )  # fmt: skip
    paths = [line for line in view.lines] if centrelines else []
    lines = hv.Path(paths, kdims=kdims).opts(color="cyan", line_width=1.5)
    return (base * layer * lines).opts(title=f"{view.chip_id} ({view.status}) · overlay: {overlay}")


def data_text(value: str) -> str:
    import html

    return html.escape(value)


def overlay_array(view: data.ChipView, choice: str) -> np.ndarray | None:
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


def speed_bars(distribution: data.SpeedDistribution) -> Any:
    """Road length and mask pixels per speed bin (the masks' own bins, in their order)."""
    frame = pd.DataFrame({"speed bin": list(distribution.bins), "road km": distribution.road_km,
                          "mask pixels": distribution.pixels})  # fmt: skip
    common = dict(width=500, height=300, xrotation=30, tools=["hover"], color="#4c72b0")
    km = hv.Bars(frame, "speed bin", "road km").opts(title="road length per speed bin", **common)
    px = hv.Bars(frame, "speed bin", "mask pixels").opts(title="mask pixels per speed bin", **common)
    return (km + px).cols(2).opts(shared_axes=False)


def speed_note(distribution: data.SpeedDistribution) -> str:
    total = distribution.pixels.sum() + distribution.background_pixels
    balance = ", ".join(f"{name} {n / total:.2%}" for name, n in zip(distribution.bins, distribution.pixels, strict=True))
    return (f"Over {distribution.chips_counted} of {distribution.chips_total} chips with masks "
            f"(bins as in the masks: right-closed 10 mph, above 70 mph in the last). Class "
            f"balance of pixels: background {distribution.background_pixels / total:.2%}, {balance}.")  # fmt: skip


def footprint_map(boxes: list[dict[str, Any]]) -> Any:
    """Chip footprints (lon/lat) coloured by status, ground distances to scale."""
    frame = pd.DataFrame(boxes)
    # a degree of longitude is cos(latitude) of a degree of latitude on the ground
    aspect = 1.0 / max(np.cos(np.radians((frame["south"].mean() + frame["north"].mean()) / 2)), 0.05)
    return hv.Rectangles(frame, kdims=["west", "south", "east", "north"], vdims=["status", "chip"]).opts(
        color="status", cmap=data.STATUS_COLOURS, line_color="white", tools=["hover"],
        data_aspect=aspect, frame_width=620, xlabel="longitude", ylabel="latitude",
        title="chip footprints: green ok, orange skipped, red failed, grey pending",
    )  # fmt: skip
