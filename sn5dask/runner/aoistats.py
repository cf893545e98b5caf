"""AOI statistics: per-chip scans, their pairwise sum (the tree reduction), percentiles.

`scan_chip` runs on a worker per chip (first read; `scan_chips` runs it over a batch of
small chips in one task); `combine_scans` is the reduction step
(associative, so dask can apply it as a tree); `finalize_scan` turns the summed histogram
into exact percentiles. Only the finalized `AoiStats` (percentiles, counts, each chip's
small header and footprint, and the AOI's one summed histogram) reaches the client; the
per-chip histograms stay on the workers.

What crosses the network stays small at scale: a histogram is cut after the highest
value present (16-bit chips rarely use more than a few thousand of the 65,536 bins), each
chip's lon/lat footprint is computed where it is scanned, and the chips' headers share one
CRS string per distinct CRS (pickle then sends it once, not once per chip).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from sn5dask.core.grid import ChipHeader
from sn5dask.core.stretch import (
    UINT16_BINS,
    band_histograms,
    percentiles_from_histogram,
)
from sn5dask.errors import TooFewBandsError, guard_chip
from sn5dask.io import chipcache
from sn5dask.io.catalog import ChipRecord
from sn5dask.io.chipio import ChipReader


@dataclass
class AoiScan:
    """Partial sum over some chips: histograms (band, value), as wide as the highest value
    seen, and per-chip headers, footprints and errors."""

    histogram: np.ndarray | None = None
    dtypes: set[str] = field(default_factory=set)
    headers: dict[str, ChipHeader] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    #: chips that have too few bands for `--bands`: chip id -> their band count
    band_counts: dict[str, int] = field(default_factory=dict)
    #: chips the scan kept a copy of on a worker (`chipcache`): chip id -> its address
    cached_on: dict[str, str] = field(default_factory=dict)
    #: each read chip's footprint (west, south, east, north) in WGS84
    footprints: dict[str, tuple[float, float, float, float]] = field(default_factory=dict)
    #: each read chip's grid centre (lon, lat), which decides its spatial fold
    centres: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: one instance of each CRS string the headers hold (shared by them)
    crs_wkts: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class AoiStats:
    """What the client learns from the scan pass of one AOI."""

    bands: tuple[int, ...]
    percentiles: tuple[float, float]
    values: dict[int, tuple[float | None, float | None]] | None
    valid_pixels: dict[int, int] | None
    headers: dict[str, ChipHeader]
    errors: dict[str, str]
    band_counts: dict[str, int] = field(default_factory=dict)
    #: The AOI's summed histogram, int64 (band, 65536) (AOI stretch only): 1.5 MB, kept so
    #: that plots of it never read the AOI again.
    histogram: np.ndarray | None = None
    #: chips the scan kept a copy of on a worker (`chipcache`): chip id -> its address
    cached_on: dict[str, str] = field(default_factory=dict)
    #: each read chip's footprint (west, south, east, north) in WGS84
    footprints: dict[str, tuple[float, float, float, float]] = field(default_factory=dict)
    #: each read chip's grid centre (lon, lat), which decides its spatial fold
    centres: dict[str, tuple[float, float]] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "bands": list(self.bands),
            "percentiles": list(self.percentiles),
            "values": None
            if self.values is None
            else {str(b): list(v) for b, v in self.values.items()},
            "valid_pixels": None
            if self.valid_pixels is None
            else {str(b): n for b, n in self.valid_pixels.items()},
        }


def scan_chip(
    chip: ChipRecord,
    bands: Sequence[int],
    with_histogram: bool,
    use_nodata: bool,
    reader: ChipReader,
    for_run: str | None = None,
) -> AoiScan:
    """Read one chip's header (and, for AOI stretch, the histograms of `bands`).

    `use_nodata`: leave each band's declared nodata value out of its histogram (the
    profile's valid-pixel rule). `for_run`: the run whose write pass follows, for which
    this worker keeps what the chip's write task would read again (`chipcache`: an S3
    chip's object); None for a scan that nothing follows. Never
    raises for a bad chip: the problem is returned in `errors`.
    """
    scan = AoiScan()
    if chip.problem:
        scan.errors[chip.chip_id] = chip.problem
        return scan
    keeps_copies = with_histogram and for_run is not None

    def keep_here() -> None:
        address = chipcache.worker_address()
        if address:
            scan.cached_on[chip.chip_id] = address

    copy_key = chipcache.CopyKey(for_run or "", chip.image, chip.image_stamp)

    def read() -> tuple[ChipHeader, np.ndarray | None]:
        if keeps_copies and chipcache.enabled(chip.image):
            # One GET for both passes: the write task runs here and reads this copy.
            try:
                if chipcache.fetch(copy_key) is not None:
                    keep_here()
            except OSError:
                pass  # read S3 directly below (and report any error from there)
        with chipcache.reading(copy_key):
            return read_kept_or_source()

    def read_kept_or_source() -> tuple[ChipHeader, np.ndarray | None]:
        try:
            if not with_histogram:
                return reader.read_header(chip.image, bands), None
            header, data = reader.read_bands(chip.image, bands)
        except TooFewBandsError as exc:
            scan.band_counts[chip.chip_id] = exc.count
            raise
        nodata = [header.nodata[b - 1] for b in bands] if use_nodata else None
        return header, trimmed(band_histograms(data, nodata))

    outcome = guard_chip(chip.image, read)
    if outcome.value is None:
        scan.errors[chip.chip_id] = outcome.reason or f"{chip.image}: unreadable"
        return scan
    header, scan.histogram = outcome.value
    scan.headers[chip.chip_id] = header
    scan.dtypes.add(header.dtype)
    from sn5dask.core.crs import grid_centre_lonlat, lonlat_bbox  # the client needs no pyproj

    where = guard_chip(chip.image, lambda: (lonlat_bbox(header), grid_centre_lonlat(header.grid)))
    if where.value is not None:  # else it has no place on the map, no STAC item, no fold
        scan.footprints[chip.chip_id], scan.centres[chip.chip_id] = where.value
    return scan


def trimmed(histogram: np.ndarray) -> np.ndarray:
    """`histogram` (band, value) without the columns after the highest value any band
    holds (at least one column)."""
    used = np.flatnonzero(histogram.any(axis=0))
    return histogram[:, : (int(used[-1]) + 1 if used.size else 1)]


def scan_chips(
    chips: Sequence[ChipRecord],
    bands: Sequence[int],
    with_histogram: bool,
    use_nodata: bool,
    reader: ChipReader,
    for_run: str | None = None,
) -> AoiScan:
    """`scan_chip` of each chip of a batch, summed as it goes (one task for many small
    chips; see `graph.scan_batches`)."""
    total = AoiScan()
    for chip in chips:
        _add_into(total, scan_chip(chip, bands, with_histogram, use_nodata, reader, for_run))
    return total


def combine_scans(*scans: AoiScan) -> AoiScan:
    """Sum of several partial scans (associative and commutative)."""
    out = AoiScan()
    for scan in scans:
        _add_into(out, scan)
    return out


def _add_into(total: AoiScan, scan: AoiScan) -> None:
    """Add `scan` to `total` in place (`scan` is left as it was)."""
    if scan.histogram is not None:
        if total.histogram is None:
            total.histogram = scan.histogram.astype(np.int64, copy=True)
        else:
            width = scan.histogram.shape[1]
            if width > total.histogram.shape[1]:
                total.histogram = np.pad(total.histogram, ((0, 0), (0, width - total.histogram.shape[1])))
            total.histogram[:, :width] += scan.histogram
    total.dtypes |= scan.dtypes
    for chip_id, header in scan.headers.items():
        crs_wkt = total.crs_wkts.setdefault(header.crs_wkt, header.crs_wkt)
        total.headers[chip_id] = header if crs_wkt is header.crs_wkt else replace(header, crs_wkt=crs_wkt)
    total.footprints.update(scan.footprints)
    total.centres.update(scan.centres)
    total.errors.update(scan.errors)
    total.band_counts.update(scan.band_counts)
    total.cached_on.update(scan.cached_on)


def finalize_scan(
    scan: AoiScan, bands: Sequence[int], percentiles: Sequence[float], with_histogram: bool
) -> AoiStats:
    """Exact percentiles per band from the summed histograms (None for an empty band)."""
    values = valid = None
    if with_histogram:
        values, valid = {}, {}
        dtype = np.uint8 if scan.dtypes == {"uint8"} else np.uint16
        for i, band in enumerate(bands):
            hist = (
                scan.histogram[i] if scan.histogram is not None else np.zeros(1, dtype=np.int64)
            )
            low, high = percentiles_from_histogram(hist, percentiles, dtype)
            values[band] = (low, high)
            valid[band] = int(hist.sum())
    return AoiStats(
        bands=tuple(bands),
        percentiles=(float(percentiles[0]), float(percentiles[1])),
        values=values,
        valid_pixels=valid,
        headers=scan.headers,
        errors=scan.errors,
        band_counts=scan.band_counts,
        histogram=_full_width(scan.histogram) if with_histogram else None,
        cached_on=scan.cached_on,
        footprints=scan.footprints,
        centres=scan.centres,
    )


def _full_width(histogram: np.ndarray | None) -> np.ndarray | None:
    """The summed histogram with all 65,536 value columns (histograms.npz's shape)."""
    if histogram is None or histogram.shape[1] >= UINT16_BINS:
        return histogram
    return np.pad(histogram, ((0, 0), (0, UINT16_BINS - histogram.shape[1])))
