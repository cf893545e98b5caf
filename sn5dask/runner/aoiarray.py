"""The lazy xarray model of an AOI (`open_aoi`) and georeferenced views of one chip.

`open_aoi` reads only chip headers, in parallel where the scan pass reads them (the same
`graph.scan_graph`, so on the workers when a client is given): no chip is opened on the
client, and an AOI of thousands of chips on S3 opens in seconds. Pixels are read when a
chunk is computed, one chunk per chip, through the same `ChipReader` as the run (so the
same GDAL/S3 settings apply).

Chips need not share a grid, so the stack is chip-indexed: each chip is padded with 0 up
to the largest, and its georeferencing is kept per chip (`transform`, `crs`, `height`,
`width`). `chip_dataarray` turns one chip back into an ordinary georeferenced DataArray
(unpadded, 1-D pixel-centre `x`/`y`, rioxarray CRS and transform).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
from affine import Affine

from sn5dask.errors import Sn5daskError
from sn5dask.io.catalog import discover
from sn5dask.io.chipio import ChipReader, RasterioReader
from sn5dask.io.files import normalise_location
from sn5dask.runner.graph import scan_graph

log = logging.getLogger("sn5dask")


def open_aoi(
    root: str,
    aoi: str,
    *,
    bands: Sequence[int] | None = None,
    client: Any = None,
    reader: ChipReader | None = None,
) -> xr.DataArray:
    """One AOI as a lazy (chip, band, y, x) DataArray, one dask chunk per chip.

    Headers are read by the scan graph (on `client` when given, else dask's default
    scheduler). Coordinates: `band` (1-based numbers), `chip_id`, `transform` (an
    `affine.Affine` per chip), `crs` (WKT), `height`/`width` (each chip's true size;
    smaller chips are padded with 0), `image` (its path). Chips whose header cannot be
    read are left out with a warning and listed in `attrs["unreadable_chips"]`.
    """
    reader = reader or RasterioReader()
    catalog = discover(normalise_location(root), [aoi])[0]
    graph = scan_graph(
        catalog.chips, tuple(bands or ()), (0.0, 100.0), with_histogram=False, reader=reader
    )
    stats = client.compute(graph).result() if client is not None else graph.compute()
    for chip_id, reason in stats.errors.items():
        log.warning("open_aoi: %s left out: %s", chip_id, reason)
    chips = [c for c in catalog.chips if c.chip_id in stats.headers]
    if not chips:
        raise Sn5daskError(f"{root}: no readable chip in {aoi}")
    headers = [stats.headers[c.chip_id] for c in chips]
    band_numbers = list(bands) if bands else list(range(1, headers[0].count + 1))
    if not bands and len({h.count for h in headers}) > 1:
        counts = sorted({h.count for h in headers})
        raise Sn5daskError(
            f"{root}: the chips of {aoi} have different band counts {counts}: pass bands=[...]"
        )
    dtype = np.result_type(*(np.dtype(h.dtype) for h in headers))
    height = max(h.height for h in headers)
    width = max(h.width for h in headers)
    read = dask.delayed(_read_padded, pure=False)
    blocks = [
        da.from_delayed(
            read(chip.image, tuple(band_numbers), height, width, dtype, reader),
            shape=(len(band_numbers), height, width),
            dtype=dtype,
        )
        for chip in chips
    ]
    transforms = np.empty(len(chips), dtype=object)
    transforms[:] = [Affine(*h.transform) for h in headers]
    return xr.DataArray(
        da.stack(blocks),
        dims=("chip", "band", "y", "x"),
        coords={
            "band": band_numbers,
            "chip_id": ("chip", [c.chip_id for c in chips]),
            "transform": ("chip", transforms),
            "crs": ("chip", [h.crs_wkt for h in headers]),
            "height": ("chip", np.array([h.height for h in headers], dtype=np.int32)),
            "width": ("chip", np.array([h.width for h in headers], dtype=np.int32)),
            "image": ("chip", [c.image for c in chips]),
        },
        name="ps_ms",
        attrs={"aoi": aoi, "root": root, "unreadable_chips": dict(stats.errors)},
    )


def open_store(url: str) -> xr.Dataset:
    """The Zarr store of an AOI (`OUT/<AOI>/<AOI>.zarr`, local or `s3://`) as a lazy
    Dataset, as `xarray.open_zarr` gives it (uint8 variables, one chunk per chip), with
    the same S3 settings as the run. `chip_dataarray(ds, chip_id, var)` gives one chip."""
    from sn5dask.io.files import storage_options

    url = normalise_location(url)
    options = storage_options(url)
    return xr.open_zarr(url, storage_options=options or None)


def _read_padded(
    path: str,
    bands: tuple[int, ...],
    height: int,
    width: int,
    dtype: np.dtype,
    reader: ChipReader,
) -> np.ndarray:
    header, data = reader.read_bands(path, bands)
    if data.shape[1:] == (height, width) and data.dtype == dtype:
        return data
    out = np.zeros((len(bands), height, width), dtype=dtype)
    out[:, : header.height, : header.width] = data
    return out


def chip_dataarray(data: xr.DataArray | xr.Dataset, chip_id: str, var: str | None = None) -> xr.DataArray:
    """One chip of a chip-stacked AOI (`open_aoi`, or the Zarr store with `var`) as an
    ordinary georeferenced DataArray: unpadded, with 1-D pixel-centre `x`/`y`, so that
    `.rio.crs`, `.rio.transform()`, `.rio.bounds()` and odc-geo's `.odc.geobox` are the
    chip's. Lazy when `data` is.

    The exact transform is stored with the CRS (`spatial_ref`'s GeoTransform). Write the
    chip back with `.rio.to_raster(path, recalc_transform=False)` for a file georef-identical
    to the chip's GeoTIFF: by default rioxarray recomputes the transform from the float
    pixel-centre coordinates, which changes its last bits (as it does for a file opened
    with `rioxarray.open_rasterio`)."""
    import rioxarray  # noqa: F401  (registers the .rio accessor)

    if isinstance(data, xr.Dataset):
        if var is None:
            raise ValueError(f"name the variable: var= one of {sorted(map(str, data.data_vars))}")
        array = data[var]
        crs_list = list(data.attrs.get("crs_wkt", []))
    else:
        array = data
        crs_list = []
    ids = [str(v) for v in array["chip_id"].values]
    if chip_id not in ids:
        raise KeyError(f"no chip {chip_id!r}; the chips are {ids[:5]}{' ...' if len(ids) > 5 else ''}")
    index = ids.index(chip_id)
    chip = array.isel(chip=index)
    # Per-chip georeferencing from `data`: a Dataset's `transform` (chip, affine) is not a
    # coordinate of its (chip, ..., y, x) variables.
    height, width = int(data["height"][index]), int(data["width"][index])
    transform = _affine(data["transform"][index].values)
    crs = data["crs"][index].values.item()
    crs_wkt = crs_list[int(crs)] if crs_list and not isinstance(crs, str) else str(crs)
    chip = chip.isel(y=slice(0, height), x=slice(0, width))
    chip = chip.drop_vars([c for c in chip.coords if c not in chip.dims])
    chip.attrs = {k: v for k, v in chip.attrs.items() if k not in ("grid_mapping", "coordinates")}
    x = transform.c + transform.a * (np.arange(width) + 0.5)
    y = transform.f + transform.e * (np.arange(height) + 0.5)
    chip = chip.assign_coords(x=("x", x), y=("y", y))
    chip = chip.rio.write_crs(crs_wkt).rio.write_transform(transform)
    if "nodata" in array.attrs:
        chip = chip.rio.write_nodata(array.attrs["nodata"])
    chip.attrs = {**chip.attrs, "chip_id": chip_id}
    return chip


def _affine(value: Any) -> Affine:
    if isinstance(value, Affine):
        return value
    item = value.item() if isinstance(value, np.ndarray) and value.dtype == object else value
    if isinstance(item, Affine):
        return item
    return Affine(*[float(v) for v in np.asarray(item).ravel()[:6]])
