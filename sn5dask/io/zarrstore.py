"""The per-AOI Zarr store: created once by the client, one region written per chip task.

Layout (Zarr format 3), read back by `xarray.open_zarr(path)` as a Dataset with dims
`(chip, band, y, x)`:

- `rgb` uint8 (chip, band, y, x); `mask_binary`, `mask_continuous`, `mask_binned` uint8
  (chip, y, x); `mask_multichannel` uint8 (chip, channel, y, x): one chunk per chip, named
  with Zarr v3's default chunk keys and the "." separator (`rgb/c.<chip>.0.0.0`), so the
  chunks are files directly in their array's folder (`DATA_CHUNK_KEYS`).
- coordinates `chip_id` (chip,), `transform` (chip, 6; affine a, b, c, d, e, f),
  `crs` (chip,; index into `attrs["crs_wkt"]`), `height`, `width` (chip,): the true size
  of each chip, which is padded with 0 up to the store's y/x size (the largest chip);
  `has_labels` (chip,) bool: the chip had a label file (an all-zero mask of a chip
  without one is "not labelled", not "no roads").
- `spatial_ref`: a CF grid-mapping variable (`crs_wkt`, `spatial_ref`) when every chip has
  one CRS (the usual case), for readers of the AOI's CRS. The data variables do not name
  it (no `grid_mapping`): chips are stacked without x/y coordinates, so a chip selected
  with plain xarray has no grid, and carries no CRS rather than a wrong one;
  `sn5dask.chip_dataarray` returns it georeferenced.
- each data variable says what its values mean (`description`, `band_descriptions`,
  `sn5dask.core.encodings`); `rgb` carries `nodata: 0` (rioxarray reads it).

Every array has fill value 0, and Zarr v3 fill values are not turned into `_FillValue` by
xarray, so the arrays open as uint8 (no float promotion). Each chip task writes whole
chunks at its own index, so no write locks are needed.
"""

from __future__ import annotations

import os
import re
import threading
import warnings
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import zarr
from zarr.codecs import ZstdCodec

from sn5dask.core.encodings import (
    MASK_ENCODINGS,
    MASK_KINDS,
    RGB_NODATA,
    RGB_VALUES,
    rgb_descriptions,
)
from sn5dask.core.grid import ChipHeader
from sn5dask.core.speed import N_SPEED_CHANNELS
from sn5dask.io import files

COORDINATES = "chip_id transform crs height width has_labels"
# Zstandard level 1: about the same size as zarr's default (level 3) on chips and masks,
# and written faster.
DATA_CODECS = (ZstdCodec(level=1),)
# Chunk keys `c.<chip>.0.0.0` rather than the default `c/<chip>/0/0/0`: a chunk is then a
# file in its array's folder, where "/" made every chip task create twelve nested folders
# (`benchmarks/bench_chip_stages.py` times `write_chip`). Both are Zarr v3's
# default encoding; stores written with "/" (sn5dask before 2026-12) are still read,
# resumed and validated with their own keys.
DATA_CHUNK_KEYS: dict[str, Any] = {"name": "default", "separator": "."}


def _open(url: str, mode: Literal["r", "r+", "w"]) -> zarr.Group:
    from sn5dask.io.files import storage_options

    options = storage_options(url)
    if url.startswith("s3://"):
        return zarr.open_group(url, mode=mode, storage_options=options or None)
    return zarr.open_group(url, mode=mode)


def create_store(
    url: str,
    *,
    chip_ids: Sequence[str],
    headers: Mapping[str, ChipHeader],
    bands: Sequence[int],
    mask_kinds: Sequence[str],
    attrs: Mapping[str, Any],
    has_labels: Sequence[bool] | None = None,
) -> None:
    """Create (or replace) the store with all arrays and the per-chip coordinates.

    Chips missing from `headers` (unreadable) keep NaN transforms and crs index -1.
    """
    height = max((h.height for h in headers.values()), default=1)
    width = max((h.width for h in headers.values()), default=1)
    crs_list = sorted({h.crs_wkt for h in headers.values()})
    n = len(chip_ids)
    group = _open(url, "w")
    group.attrs.update({**attrs, "crs_wkt": crs_list})
    one_crs = len(crs_list) == 1
    # The data variables name no grid mapping: a chip taken with plain xarray indexing
    # (`ds.rgb.isel(chip=i)`) has no x/y coordinates, so a CRS it carried would pair with
    # an identity transform (rioxarray) and claim a wrong grid. `chip_dataarray` gives
    # the chip its own grid and CRS.
    coordinates = COORDINATES

    def data_array(name: str, extra: tuple[tuple[str, int], ...], meaning: dict[str, Any]) -> None:
        dims = ("chip",) + tuple(d for d, _ in extra) + ("y", "x")
        shape = (n,) + tuple(s for _, s in extra) + (height, width)
        attributes = {"coordinates": coordinates, **meaning}
        group.create_array(
            name,
            shape=shape,
            chunks=(1,) + shape[1:],
            dtype="uint8",
            fill_value=0,
            compressors=DATA_CODECS,
            chunk_key_encoding=DATA_CHUNK_KEYS,
            dimension_names=dims,
            attributes=attributes,
        )

    data_array("rgb", (("band", len(bands)),), {
        "long_name": "8-bit image", "description": RGB_VALUES,
        "band_descriptions": list(rgb_descriptions(tuple(bands))), "nodata": RGB_NODATA,
    })  # fmt: skip
    for kind in mask_kinds:
        extra = (("channel", N_SPEED_CHANNELS + 1),) if kind == "multichannel" else ()
        encoding = MASK_ENCODINGS[kind]
        data_array(f"mask_{kind}", extra, {
            "long_name": f"{kind} road mask", "description": encoding.values,
            "band_descriptions": list(encoding.bands),
        })  # fmt: skip
    if one_crs:
        _grid_mapping(group, crs_list[0])

    transforms = np.full((n, 6), np.nan)
    crs_index = np.full(n, -1, dtype=np.int32)
    heights = np.zeros(n, dtype=np.int32)
    widths = np.zeros(n, dtype=np.int32)
    for i, chip_id in enumerate(chip_ids):
        header = headers.get(chip_id)
        if header is None:
            continue
        transforms[i] = header.transform
        crs_index[i] = crs_list.index(header.crs_wkt)
        heights[i], widths[i] = header.height, header.width
    _coordinate(group, "chip_id", np.array(list(chip_ids), dtype=str), ("chip",))
    _coordinate(group, "transform", transforms, ("chip", "affine"))
    _coordinate(group, "crs", crs_index, ("chip",), {"description": "index into attrs crs_wkt"})
    _coordinate(group, "height", heights, ("chip",))
    _coordinate(group, "width", widths, ("chip",))
    labelled = np.array(
        [True] * n if has_labels is None else [bool(v) for v in has_labels], dtype=bool
    )
    _coordinate(group, "has_labels", labelled, ("chip",),
                {"description": "the chip had a label file: its masks are labels"})
    # Consolidated metadata lets xarray open the store with one read (fast on S3); Zarr v3
    # has no spec for it yet, hence zarr's warning, which says nothing actionable here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)
        zarr.consolidate_metadata(group.store)


def _grid_mapping(group: zarr.Group, crs_wkt: str) -> None:
    """The CF grid-mapping variable `spatial_ref` (as rioxarray and GDAL write it)."""
    from pyproj import CRS

    attributes = {**CRS.from_wkt(crs_wkt).to_cf(), "crs_wkt": crs_wkt, "spatial_ref": crs_wkt}
    array = group.create_array("spatial_ref", shape=(), dtype="int32", fill_value=0,
                               dimension_names=(), attributes=attributes)
    array[...] = 0


def _coordinate(
    group: zarr.Group,
    name: str,
    values: np.ndarray,
    dims: tuple[str, ...],
    attributes: dict[str, Any] | None = None,
) -> None:
    if values.dtype.kind == "U":
        array = group.create_array(
            name, shape=values.shape, dtype=str, dimension_names=dims, attributes=attributes or {}
        )
    else:
        array = group.create_array(
            name,
            shape=values.shape,
            dtype=values.dtype,
            dimension_names=dims,
            fill_value={"f": np.nan, "b": False}.get(values.dtype.kind, 0),
            attributes=attributes or {},
        )
    array[...] = values


def chunk_relpath(name: str, array: zarr.Array, index: int) -> str:
    """Path, relative to the store, of chip `index`'s one chunk of data array `name` (every
    non-chip dimension is a single chunk), in the array's own chunk key encoding:
    `rgb/c.<i>.0.0.0`, or `rgb/c/<i>/0/0/0` in stores written with "/" keys."""
    return f"{name}/" + array.metadata.encode_chunk_key((index,) + (0,) * (array.ndim - 1))


def data_arrays(url: str) -> dict[str, zarr.Array]:
    """The store's data arrays (`rgb`, `mask_<kind>`), opened read-only."""
    group = _open(url, "r")
    return {name: array for name, array in group.arrays() if _is_data_array(name)}


def _is_data_array(name: str) -> bool:
    return name == "rgb" or name.startswith("mask_")


#: A data array's chunk key (relative to the store) and the chip index in it, with either
#: separator: `rgb/c/12/0/0/0` or `rgb/c.12.0.0.0` (nothing else: not a `.partial`). Matched
#: here because zarr 3.1's `ChunkKeyEncoding.decode_chunk_key` fails on the keys its own
#: `encode_chunk_key` makes (it strips the "c" but not the separator after it).
_CHUNK_KEY = re.compile(r"(?P<name>[^/]+)/c(?P<sep>[./])(?P<index>\d+)(?:(?P=sep)0)*")


def written_chips(url: str) -> frozenset[int]:
    """Indexes of the chips whose chunk exists in every data array (`rgb`, `mask_*`) of the
    store: a chunk never written reads as zeros, so existence is the evidence."""
    by_array: dict[str, set[int]] = {}
    for key in files.find(url):
        parts = key.split("/")
        if len(parts) == 2 and parts[1] == "zarr.json" and _is_data_array(parts[0]):
            by_array.setdefault(parts[0], set())
        elif (match := _CHUNK_KEY.fullmatch(key)) and _is_data_array(match["name"]):
            by_array.setdefault(match["name"], set()).add(int(match["index"]))
    if not by_array:
        return frozenset()
    return frozenset(set.intersection(*by_array.values()))


def store_chip_ids(url: str) -> list[str] | None:
    """The chip ids of an existing store, or None when there is none (or it is unreadable)."""
    try:
        array = _open(url, "r")["chip_id"]
        assert isinstance(array, zarr.Array)
        return [str(v) for v in np.asarray(array[...])]
    except Exception:  # a missing or half-created store is simply "no store"
        return None


def write_chip(
    url: str,
    index: int,
    rgb: np.ndarray | None,
    masks: Mapping[str, np.ndarray],
    *,
    run_token: str = "",
) -> None:
    """Write one chip's whole chunks at `index` (padded with 0 to the store's size).

    Arrays not given (e.g. masks of a chip without labels) are written as zeros, so a
    re-written chip never keeps stale data from an earlier run.

    `run_token` names the run writing (one per AOI run, whose lock keeps anyone else from
    replacing the store meanwhile): a worker opens the store once per run and keeps it,
    instead of reading the store's metadata again for every chip. Without a token the
    store is opened afresh.

    Each array's chunk is written through zarr's public API (`array[index] = chunk`,
    with `write_empty_chunks` so an all-zero mask is a chunk too: its existence is the
    resume check's evidence). In a local store the chunk files are then fsynced, with
    their folders, as every other output is; the manifest records the chip only after
    this returns, so a chunk cut short by a crash is never trusted (the chip is redone).
    """
    store = _store(url, run_token) if run_token else _open_store(url)
    for name, array in store.arrays.items():
        array[index] = _padded(array, rgb if name == "rgb" else masks.get(name.removeprefix("mask_")))
    if files.is_local(url):
        written = [os.path.join(url, chunk_relpath(name, array, index)) for name, array in store.arrays.items()]
        for path in written:
            files.fsync_file(path)
        for folder in dict.fromkeys(os.path.dirname(path) for path in written):
            files.fsync_folder(folder)


def _padded(array: zarr.Array, data: np.ndarray | None) -> np.ndarray:
    """`data` as one whole chunk of `array`: zeros where it is smaller (or absent)."""
    if data is not None and data.shape == array.shape[1:]:
        return np.ascontiguousarray(data)  # the common case: a full-size chip, no padding copy
    chunk = np.zeros(array.shape[1:], dtype=np.uint8)
    if data is not None:
        h, w = data.shape[-2:]
        chunk[..., :h, :w] = data
    return chunk


@dataclass(frozen=True)
class _OpenStore:
    """A store's data arrays (`rgb`, `mask_<kind>`), open to write every chunk."""

    arrays: dict[str, zarr.Array]


#: Per process: (store URL, run token) -> the open store, opened once per run.
_OPEN_STORES: OrderedDict[tuple[str, str], _OpenStore] = OrderedDict()
_OPEN_STORES_LOCK = threading.Lock()
_OPEN_STORES_KEPT = 4  # stores a long-lived worker keeps open (the latest runs')


def _store(url: str, run_token: str) -> _OpenStore:
    key = (url, run_token)
    with _OPEN_STORES_LOCK:
        if key in _OPEN_STORES:
            _OPEN_STORES.move_to_end(key)
            return _OPEN_STORES[key]
    store = _open_store(url)
    with _OPEN_STORES_LOCK:
        _OPEN_STORES[key] = store
        while len(_OPEN_STORES) > _OPEN_STORES_KEPT:
            _OPEN_STORES.popitem(last=False)
    return store


def _open_store(url: str) -> _OpenStore:
    """Open the store's data arrays to write every chunk: by default zarr compares each
    chunk with the fill value to skip empty ones, which took most of a region write, and a
    chip's chunk is rarely empty."""
    with zarr.config.set({"array.write_empty_chunks": True}):
        group = _open(url, "r+")
        members = dict(group.arrays())
    if "rgb" not in members:
        raise FileNotFoundError(f"{url}: no rgb array: not an sn5dask Zarr store")
    names = ["rgb", *(f"mask_{kind}" for kind in MASK_KINDS)]
    return _OpenStore({name: members[name] for name in names if name in members})
