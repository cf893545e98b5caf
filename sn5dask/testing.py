"""In-memory fakes of the `chipio` seams, for tests and profiling without GDAL or files.

- `FakeReader` serves chips (header + pixels) and label bytes from memory, can fail on
  chosen paths, and counts pixel reads.
- `MemoryWriter` keeps every output in a process-wide registry under its `name`, so the
  copies that dask pickles into tasks all write to the same place as long as the tasks
  run in this process (a `LocalCluster(processes=False)` or dask's synchronous/threaded
  schedulers). It does not work across processes.
- `fake_aoi` builds a catalog of synthetic chips (the same pixels and labels as
  `sn5dask.synthetic`) with a `FakeReader` that serves them.

As stackstac's `FakeReader`, these exist so the graph and the run loop can be exercised
in-process; the real-process tests stay the word on GDAL, files, S3 and clusters.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sn5dask.core.grid import ChipHeader
from sn5dask.core.outputspec import OutputSpec
from sn5dask.errors import ImageError, TooFewBandsError
from sn5dask.io.catalog import AoiCatalog, ChipRecord, chip_id_from_name
from sn5dask.io.raster import SUPPORTED_DTYPES
from sn5dask.outputs.layout import output_name

_LOCK = threading.Lock()
_MEMORY: dict[str, dict[str, Any]] = {}
_READS: dict[str, Counter[str]] = {}


@dataclass
class FakeReader:
    """Chips and labels from memory. `failures` maps a path to the exception its reads
    raise (an `ImageError` for a bad image, an `OSError` for an unreadable label, or any
    other exception to test the unexpected-error path)."""

    images: dict[str, tuple[ChipHeader, np.ndarray]] = field(default_factory=dict)
    labels: dict[str, bytes] = field(default_factory=dict)
    failures: dict[str, BaseException] = field(default_factory=dict)
    name: str = field(default_factory=lambda: uuid.uuid4().hex)

    def add_image(self, path: str, header: ChipHeader, pixels: np.ndarray) -> None:
        self.images[path] = (header, pixels)

    def read_header(self, path: str, bands: Sequence[int] = ()) -> ChipHeader:
        header, _ = self._image(path)
        needed = max(bands) if bands else 1
        if header.count < needed:
            raise TooFewBandsError(path, header.count, needed)
        if header.dtype not in SUPPORTED_DTYPES:
            raise ImageError(path, f"unsupported pixel type {header.dtype}")
        return header

    def read_bands(
        self, path: str, bands: Sequence[int], *, all_bands: bool = False
    ) -> tuple[ChipHeader, np.ndarray]:
        header = self.read_header(path, bands)
        _, pixels = self._image(path)
        with _LOCK:
            _READS.setdefault(self.name, Counter())[path] += 1
        data = pixels.copy() if all_bands else pixels[[b - 1 for b in bands]]
        return header, data

    def read_label(self, url: str, max_bytes: int | None = None) -> bytes:
        if url in self.failures:
            raise self.failures[url]
        if url not in self.labels:
            raise FileNotFoundError(url)
        data = self.labels[url]
        if max_bytes is not None and len(data) > max_bytes:
            raise ValueError(f"{len(data) / 2**20:.1f} MB is over the limit of {max_bytes / 2**20:g} MB")
        return data

    def pixel_reads(self) -> Counter[str]:
        """How often each image's pixels were read (in this process)."""
        with _LOCK:
            return Counter(_READS.get(self.name, Counter()))

    def _image(self, path: str) -> tuple[ChipHeader, np.ndarray]:
        if path in self.failures:
            raise self.failures[path]
        if path not in self.images:
            raise ImageError(path, "cannot be read as a raster (no such fake image)")
        return self.images[path]


@dataclass(frozen=True)
class FakeGeoTiff:
    """What `MemoryWriter.write_geotiff` keeps: the array (band, y, x), header and spec."""

    array: np.ndarray
    header: ChipHeader
    spec: OutputSpec


@dataclass
class MemoryWriter:
    """Outputs in a process-wide registry under `name` (see the module docstring).
    `failures` maps a URL suffix to the exception writes to matching URLs raise."""

    name: str = field(default_factory=lambda: uuid.uuid4().hex)
    failures: dict[str, BaseException] = field(default_factory=dict)

    @property
    def files(self) -> dict[str, Any]:
        """URL -> `FakeGeoTiff` or bytes, and store URL -> Zarr store dict (live view)."""
        with _LOCK:
            return _MEMORY.setdefault(self.name, {})

    def clear(self) -> None:
        with _LOCK:
            _MEMORY.pop(self.name, None)

    def write_geotiff(self, url: str, array: np.ndarray, header: ChipHeader, spec: OutputSpec) -> int:
        self._check(url)
        if array.ndim == 2:
            array = array[np.newaxis]
        self.files[url] = FakeGeoTiff(array.copy(), header, spec)
        return array.nbytes

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
        self._check(url)
        self.files[url] = {
            "chip_ids": list(chip_ids),
            "headers": dict(headers),
            "bands": list(bands),
            "has_labels": None if has_labels is None else list(has_labels),
            "mask_kinds": list(mask_kinds),
            "attrs": json.loads(json.dumps(dict(attrs))),
            "regions": {},
        }

    def zarr_chip_ids(self, url: str) -> list[str] | None:
        store = self.files.get(url)
        return list(store["chip_ids"]) if isinstance(store, dict) else None

    def write_zarr_region(
        self,
        url: str,
        index: int,
        rgb: np.ndarray | None,
        masks: Mapping[str, np.ndarray],
        *,
        run_token: str = "",
    ) -> None:
        self._check(url)
        store = self.files.get(url)
        if not isinstance(store, dict):
            raise FileNotFoundError(f"{url}: no Zarr store")
        if not 0 <= index < len(store["chip_ids"]):
            raise IndexError(f"{url}: chip index {index} outside the store")
        store["regions"][index] = (
            None if rgb is None else rgb.copy(),
            {kind: masks[kind].copy() for kind in store["mask_kinds"] if kind in masks},
        )

    def write_bytes(self, url: str, data: bytes) -> None:
        self._check(url)
        self.files[url] = bytes(data)

    def committed_together(self) -> AbstractContextManager[None]:
        return nullcontext()  # each write is whole when it lands in the registry

    def read_bytes(self, url: str) -> bytes:
        value = self.files.get(url)
        if not isinstance(value, bytes):
            raise FileNotFoundError(url)
        return value

    def exists(self, url: str) -> bool:
        return url in self.files

    def remove(self, url: str) -> None:
        self._check(url)
        self.files.pop(url, None)

    def file_sizes(self, folder_url: str, *, skip: str | None = None) -> dict[str, int]:
        sizes = {}
        for url, value in list(self.files.items()):
            if not url.startswith(folder_url.rstrip("/") + "/") or (skip and url.startswith(skip)):
                continue
            if isinstance(value, FakeGeoTiff):
                sizes[url] = value.array.nbytes
            elif isinstance(value, bytes):
                sizes[url] = len(value)
        return sizes

    def zarr_written_chips(self, url: str) -> frozenset[int]:
        store = self.files.get(url)
        return frozenset(store["regions"]) if isinstance(store, dict) else frozenset()

    def _check(self, url: str) -> None:
        for suffix, error in self.failures.items():
            if url.endswith(suffix):
                raise error


@dataclass(frozen=True)
class FakeAoi:
    catalog: AoiCatalog
    reader: FakeReader


def fake_aoi(
    *,
    aoi: str = "AOI_98_Fake",
    n_chips: int = 4,
    size: int = 64,
    seed: int = 0,
    crs: str = "EPSG:4326",
    with_edge_cases: bool = True,
) -> FakeAoi:
    """A catalog of synthetic chips under `mem://` paths and a `FakeReader` serving them
    (pixels and labels as `sn5dask.synthetic.synthetic_chips` makes them)."""
    from sn5dask.synthetic import synthetic_chips

    reader = FakeReader()
    catalog = AoiCatalog(aoi)
    for chip in synthetic_chips(
        aoi=aoi, n_chips=n_chips, size=size, seed=seed, crs=crs, with_edge_cases=with_edge_cases
    ):
        image = f"mem://{aoi}/PS-MS/{chip.image_name}"
        header = ChipHeader(
            height=size,
            width=size,
            count=chip.image.shape[0],
            dtype=chip.image.dtype.name,
            transform=tuple(chip.transform)[:6],  # type: ignore[arg-type]
            crs_wkt=chip.crs.to_wkt(),
            nodata=(None,) * chip.image.shape[0],
        )
        reader.add_image(image, header, chip.image)
        label = label_stamp = None
        if chip.label is not None:
            label = f"mem://{aoi}/geojson_roads_speed/{chip.label_name}"
            reader.labels[label] = json.dumps(chip.label).encode()
            label_stamp = f"{len(reader.labels[label])}:fake"
        catalog.chips.append(
            ChipRecord(
                aoi=aoi,
                chip_id=chip_id_from_name(chip.image_name),
                image=image,
                label=label,
                output_name=output_name(chip.image_name),
                image_stamp=f"{chip.image.nbytes}:fake",
                label_stamp=label_stamp,
            )
        )
    return FakeAoi(catalog, reader)
