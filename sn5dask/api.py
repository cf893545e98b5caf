"""The public Python API (mirrors the CLI). These wrappers may read files; the pure
functions under them (stretch, speed, labels, masks) do not."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from os import PathLike
from typing import Any

import numpy as np
from affine import Affine
from odc.geo.geobox import GeoBox

from sn5dask.config import MASK_KINDS
from sn5dask.core.labels import RoadLabels, parse_road_labels
from sn5dask.io.burn import burn_chip_masks
from sn5dask.core.profiles import Profile
from sn5dask.core.stretch import UINT16_BINS
from sn5dask.io import files
from sn5dask.io.catalog import discover
from sn5dask.io.raster import read_header
from sn5dask.runner.aoiarray import chip_dataarray, open_aoi
from sn5dask.runner.graph import scan_graph, scan_tree

__all__ = ["aoi_histograms", "aoi_percentiles", "burn_masks", "chip_dataarray", "open_aoi", "to_grid"]

log = logging.getLogger("sn5dask")

GridLike = GeoBox | tuple[int, int, Affine, Any] | str | PathLike


def to_grid(grid: GridLike) -> GeoBox:
    """A GeoBox from a GeoBox, a `(height, width, transform, crs)` tuple or a raster path."""
    if isinstance(grid, GeoBox):
        return grid
    if isinstance(grid, tuple):
        height, width, transform, crs = grid
        crs_text = crs.to_wkt() if hasattr(crs, "to_wkt") else str(crs)
        return GeoBox((int(height), int(width)), Affine(*tuple(transform)[:6]), crs_text)
    return read_header(files.normalise_location(grid)).grid


def burn_masks(
    labels: Any,
    grid: GridLike,
    *,
    kinds: Sequence[str] = MASK_KINDS,
    profile: str | Profile = "sn5dask",
    buffer_m: float = 2.0,
    default_speed_mph: float | None = None,
    speed_field: str | None = None,
    image: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Road masks of one chip: uint8 (H, W) per kind, (8, H, W) for multichannel.

    `labels`: a GeoDataFrame or a GeoJSON path/URL; `grid`: see `to_grid`; `image`
    (bands, H, W) enables nodata zeroing. Road-level warnings go to the `sn5dask` logger.
    """
    roads = _road_labels(labels, speed_field, default_speed_mph)
    for warning in roads.warnings:
        log.warning(warning)
    return burn_chip_masks(
        roads, to_grid(grid), kinds=kinds, profile=profile, buffer_m=buffer_m, image=image
    )


def _road_labels(
    labels: Any, speed_field: str | None, default_speed_mph: float | None
) -> RoadLabels:
    if hasattr(labels, "geometry") and hasattr(labels, "to_json"):  # a GeoDataFrame
        document = json.loads(labels.to_json(drop_id=True))
        if labels.crs is not None:
            document["crs"] = {"type": "name", "properties": {"name": labels.crs.to_wkt()}}
        text: str | bytes = json.dumps(document)
        source = "<GeoDataFrame>"
    else:
        source = files.normalise_location(labels)
        text = files.read_bytes(source)
    return parse_road_labels(
        text, source, speed_field=speed_field, default_speed_mph=default_speed_mph
    )


def aoi_percentiles(
    root: str,
    aoi: str | None = None,
    *,
    bands: Sequence[int] = (5, 3, 2),
    percentiles: Sequence[float] = (2.0, 98.0),
    client: Any = None,
) -> dict[str, dict[str, Any]]:
    """Exact per-band percentiles of each AOI (all of them, or `aoi`), as `sn5dask stats`.

    Returns {AOI: {"bands", "percentiles", "values": {band: [lo, hi]}, "valid_pixels",
    "unreadable_chips"}}. Uses `client` when given, else dask's default scheduler.
    """
    out: dict[str, dict[str, Any]] = {}
    for catalog in discover(files.normalise_location(root), [aoi] if aoi else None):
        if not catalog.chips:  # an AOI with labels only
            continue
        final = scan_graph(catalog.chips, bands, percentiles, with_histogram=True)
        stats = client.compute(final).result() if client is not None else final.compute()
        out[catalog.aoi] = {**stats.as_json(), "unreadable_chips": stats.errors}
    return out


def aoi_histograms(
    root: str, aoi: str | None = None, *, bands: Sequence[int] = (5, 3, 2), client: Any = None
) -> dict[str, np.ndarray]:
    """Per AOI, the summed histogram of valid pixels of each band: int64 (band, 65536),
    row i for `bands[i]` (value v counted in column v). For plots; percentiles come from
    the same numbers. Uses `client` when given, else dask's default scheduler."""
    out: dict[str, np.ndarray] = {}
    for catalog in discover(files.normalise_location(root), [aoi] if aoi else None):
        if not catalog.chips:  # an AOI with labels only
            continue
        tree = scan_tree(catalog.chips, bands, with_histogram=True)
        scan = client.compute(tree).result() if client is not None else tree.compute()
        if scan.histogram is None:
            out[catalog.aoi] = np.zeros((len(bands), UINT16_BINS), dtype=np.int64)
        else:  # the scan's sum stops at the highest value present
            width = scan.histogram.shape[1]
            out[catalog.aoi] = np.pad(scan.histogram, ((0, 0), (0, UINT16_BINS - width)))
    return out
