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

from sn5dask import storage
from sn5dask.catalog import discover
from sn5dask.labels import RoadLabels, parse_road_labels
from sn5dask.masks import MASK_KINDS, burn_chip_masks
from sn5dask.pipeline import scan_graph, scan_tree
from sn5dask.raster import read_header

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
    return read_header(str(grid)).grid


def burn_masks(
    labels: Any,
    grid: GridLike,
    *,
    kinds: Sequence[str] = MASK_KINDS,
    profile: str = "sn5dask",
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
        source = str(labels)
        text = storage.read_bytes(source)
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
    for catalog in discover(root, [aoi] if aoi else None):
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
    for catalog in discover(root, [aoi] if aoi else None):
        tree = scan_tree(catalog.chips, bands, with_histogram=True)
        scan = client.compute(tree).result() if client is not None else tree.compute()
        if scan.histogram is None:
            out[catalog.aoi] = np.zeros((len(bands), 65536), dtype=np.int64)
        else:
            out[catalog.aoi] = scan.histogram
    return out


def open_aoi(root: str, aoi: str, *, bands: Sequence[int] | None = None) -> Any:
    """One AOI as a lazy (chip, band, y, x) DataArray, one dask chunk per chip.

    Built with rioxarray (`lock=False`, so reads run in parallel). Chip pixel coordinates
    are dropped (each chip has its own); per-chip georeferencing is kept as coordinates
    `transform` (an `affine.Affine` per chip) and `crs` (WKT). Smaller chips are padded with
    0 up to the largest; `height`/`width` give each chip's true size. Only headers are read.
    """
    import rioxarray
    import xarray as xr

    catalogs = discover(root, [aoi])
    chips = catalogs[0].chips
    arrays = []
    for chip in chips:
        with rioxarray.set_options(export_grid_mapping=False):
            array = rioxarray.open_rasterio(
                chip.image, chunks={"band": -1, "y": -1, "x": -1}, lock=False, cache=False
            )
        if bands is not None:
            array = array.sel(band=list(bands))
        arrays.append(array)
    height = max(a.sizes["y"] for a in arrays)
    width = max(a.sizes["x"] for a in arrays)
    transforms = np.empty(len(arrays), dtype=object)
    transforms[:] = [a.rio.transform() for a in arrays]
    crs = [a.rio.crs.to_wkt() if a.rio.crs else "" for a in arrays]
    sizes = [(a.sizes["y"], a.sizes["x"]) for a in arrays]
    padded = [
        a.drop_vars(["x", "y", "spatial_ref"], errors="ignore").pad(
            y=(0, height - a.sizes["y"]), x=(0, width - a.sizes["x"]), constant_values=0
        )
        for a in arrays
    ]
    stacked = xr.concat(padded, dim="chip", coords="minimal", compat="override", join="override")
    stacked = stacked.assign_coords(
        chip_id=("chip", [c.chip_id for c in chips]),
        transform=("chip", transforms),
        crs=("chip", crs),
        height=("chip", np.array([s[0] for s in sizes], dtype=np.int32)),
        width=("chip", np.array([s[1] for s in sizes], dtype=np.int32)),
        image=("chip", [c.image for c in chips]),
    )
    stacked.name = "ps_ms"
    stacked.attrs = {"aoi": aoi, "root": root}
    return stacked
