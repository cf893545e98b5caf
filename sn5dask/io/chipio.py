"""The typed seams between chip work and storage: `ChipReader` and `OutputWriter`.

The scan and chip tasks and the run loop read and write only through these two
protocols. `RasterioReader` and `FileWriter` are the real implementations (GDAL through
rasterio, fsspec for files and S3, zarr for the store); `sn5dask.testing` has in-memory
fakes, so the graph and the run loop can be tested and profiled without GDAL or files.

Both must be picklable (they travel to workers inside every task) and thread-safe (a
worker may run several tasks at once): the real ones hold no state at all.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol, runtime_checkable

import numpy as np

from sn5dask.core.grid import ChipHeader
from sn5dask.core.outputspec import OutputSpec
from sn5dask.io import files


@runtime_checkable
class ChipReader(Protocol):
    """Reads a chip's image and label. Errors: `ImageError` for an image that cannot be
    read or is unsuitable; `OSError` / `ValueError` (over `max_bytes`) for a label."""

    def read_header(self, path: str, bands: Sequence[int] = ()) -> ChipHeader:
        """The chip's header, validated for `bands` (1-based); no pixels read."""
        ...

    def read_bands(
        self, path: str, bands: Sequence[int], *, all_bands: bool = False
    ) -> tuple[ChipHeader, np.ndarray]:
        """Header and (band, y, x) pixels of `bands`, or of every band with `all_bands`."""
        ...

    def read_label(self, url: str, max_bytes: int | None = None) -> bytes:
        """The label file's bytes (`ValueError` naming the size when over `max_bytes`)."""
        ...


@runtime_checkable
class OutputWriter(Protocol):
    """Writes a run's outputs. Every write is atomic: a final name only ever holds complete
    content. URLs come from `layout.AoiLayout`."""

    def write_geotiff(self, url: str, array: np.ndarray, header: ChipHeader, spec: OutputSpec) -> int:
        """A (band, y, x) or (y, x) uint8 array on the chip's grid, as a tiled GeoTIFF
        encoded as `spec` says; returns the file's size in bytes."""
        ...

    def create_zarr(
        self,
        url: str,
        *,
        chip_ids: Sequence[str],
        headers: Mapping[str, ChipHeader],
        bands: Sequence[int],
        mask_kinds: Sequence[str],
        attrs: Mapping[str, Any],
        has_labels: Sequence[bool] | None = None,
    ) -> None:
        """Create (or replace) the AOI's Zarr store with every array and coordinate."""
        ...

    def zarr_chip_ids(self, url: str) -> list[str] | None:
        """The chip ids of an existing store; None when there is none or it is unreadable."""
        ...

    def write_zarr_region(
        self,
        url: str,
        index: int,
        rgb: np.ndarray | None,
        masks: Mapping[str, np.ndarray],
        *,
        run_token: str = "",
    ) -> None:
        """One chip's chunks at `index` (arrays not given are written as zeros).
        `run_token`: the run writing; the store may be kept open for that run."""
        ...

    def write_bytes(self, url: str, data: bytes) -> None:
        """A small file (JSON, a log)."""
        ...

    def committed_together(self) -> AbstractContextManager[None]:
        """A block whose writes may get their final names together at its end (cheaper to
        make durable); a write is never visible under its final name before it is whole."""
        ...

    def read_bytes(self, url: str) -> bytes:
        """A small file written before (`FileNotFoundError` when there is none)."""
        ...

    def exists(self, url: str) -> bool: ...

    def remove(self, url: str) -> None:
        """Delete a file this writer wrote (none there: nothing to do)."""
        ...

    def file_sizes(self, folder_url: str, *, skip: str | None = None) -> dict[str, int]:
        """URL -> size of every file below a folder (none under `skip`), in one listing."""
        ...

    def zarr_written_chips(self, url: str) -> frozenset[int]:
        """Indexes of the chips whose chunks exist in every data array of the store."""
        ...


class RasterioReader:
    """Images through rasterio/GDAL (`raster.gdal_env` around every open), labels through
    fsspec. Stateless."""

    def read_header(self, path: str, bands: Sequence[int] = ()) -> ChipHeader:
        from sn5dask.io import raster  # on the workers: the client needs no rasterio

        return raster.read_header(path, bands)

    def read_bands(
        self, path: str, bands: Sequence[int], *, all_bands: bool = False
    ) -> tuple[ChipHeader, np.ndarray]:
        from sn5dask.io import raster

        return raster.read_chip(path, bands, all_bands=all_bands)

    def read_label(self, url: str, max_bytes: int | None = None) -> bytes:
        return files.read_bytes(url, max_bytes=max_bytes)


class FileWriter:
    """GeoTIFFs through rasterio, the Zarr store through zarr, small files through fsspec
    (local or S3). Stateless; zarr is imported only by runs that write the store."""

    def write_geotiff(self, url: str, array: np.ndarray, header: ChipHeader, spec: OutputSpec) -> int:
        from sn5dask.io import raster

        return raster.write_geotiff(url, array, header, spec)

    def create_zarr(
        self,
        url: str,
        *,
        chip_ids: Sequence[str],
        headers: Mapping[str, ChipHeader],
        bands: Sequence[int],
        mask_kinds: Sequence[str],
        attrs: Mapping[str, Any],
        has_labels: Sequence[bool] | None = None,
    ) -> None:
        from sn5dask.io import zarrstore

        zarrstore.create_store(
            url, chip_ids=chip_ids, headers=headers, bands=bands, mask_kinds=mask_kinds,
            attrs=attrs, has_labels=has_labels,
        )  # fmt: skip

    def zarr_chip_ids(self, url: str) -> list[str] | None:
        from sn5dask.io import zarrstore

        return zarrstore.store_chip_ids(url)

    def write_zarr_region(
        self,
        url: str,
        index: int,
        rgb: np.ndarray | None,
        masks: Mapping[str, np.ndarray],
        *,
        run_token: str = "",
    ) -> None:
        from sn5dask.io import zarrstore

        zarrstore.write_chip(url, index, rgb, masks, run_token=run_token)

    def write_bytes(self, url: str, data: bytes) -> None:
        files.write_bytes_atomic(url, data)

    def committed_together(self) -> AbstractContextManager[None]:
        return files.committed_together()

    def read_bytes(self, url: str) -> bytes:
        return files.read_bytes(url)

    def exists(self, url: str) -> bool:
        return files.exists(url)

    def remove(self, url: str) -> None:
        files.remove_file(url)

    def file_sizes(self, folder_url: str, *, skip: str | None = None) -> dict[str, int]:
        return files.file_sizes(folder_url, skip=skip)

    def zarr_written_chips(self, url: str) -> frozenset[int]:
        from sn5dask.io import zarrstore

        return zarrstore.written_chips(url)


def write_json(writer: OutputWriter, url: str, document: Any) -> None:
    """A JSON document through `writer` (indented, for people as well as programs)."""
    writer.write_bytes(url, (json.dumps(document, indent=1) + "\n").encode())


def read_json(writer: OutputWriter, url: str) -> Any:
    """A JSON document written through `writer`; `FileNotFoundError` when missing,
    `ValueError` when it does not decode."""
    return json.loads(writer.read_bytes(url))
