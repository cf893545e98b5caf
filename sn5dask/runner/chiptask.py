"""One chip's whole job, run as one task on a worker: read, stretch, burn, write.

`process_chip` never raises for a bad chip: its failure is caught in `errors.guard_chip`
and comes back as a `ChipResult` with status `failed` and a reason naming the file (an
unexpected error's traceback goes to the chip's log file under `OUT/<AOI>/logs/`).
Everything it receives (`ChipRecord`, `ChipJob`) is small and pickled to the worker;
pixels are read on the worker and never travel back to the client. All reads and writes
go through `job.reader` / `job.writer` (`chipio`), so it runs against fakes in tests.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from sn5dask.config import RunConfig
from sn5dask.core.grid import ChipHeader, band_indexes
from sn5dask.core.outputspec import OutputSpec
from sn5dask.core.stretch import (
    BandCut,
    band_cut,
    band_histograms,
    percentiles_from_histogram,
    stretch_to_uint8,
    zero_fractions,
)
from sn5dask.errors import ChipError, LabelError, guard_chip
from sn5dask.io import chipcache
from sn5dask.io.catalog import ChipRecord
from sn5dask.io.chipio import ChipReader, FileWriter, OutputWriter, RasterioReader, write_json
from sn5dask.outputs import stac
from sn5dask.outputs.layout import RGB_OUTPUT, ZARR_OUTPUT, AoiLayout
from sn5dask.outputs.manifest import ChipEntry, ChipStatus
from sn5dask.runner.versioncheck import require_versions


@dataclass(frozen=True)
class ChipJob:
    """What every chip task of one AOI shares (small; pickled with each task).

    `aoi_cuts`: the AOI-wide stretch per output band, or None for a per-chip stretch.
    `with_zarr`: write each chip's region into the AOI's store (`layout.zarr_url`).
    `run_token`: this AOI run's name, under which workers keep the store open.
    `expected_versions`: the client's pixel-deciding versions; a chip task on a worker
    with others raises `VersionSkewError` before it writes anything (`versioncheck`).
    `with_stac_items`: write each done chip's STAC items (GeoTIFF runs).
    """

    config: RunConfig
    layout: AoiLayout
    aoi_cuts: tuple[BandCut, ...] | None
    with_zarr: bool = False
    reader: ChipReader = field(default_factory=RasterioReader)
    writer: OutputWriter = field(default_factory=FileWriter)
    run_token: str = field(default_factory=lambda: uuid.uuid4().hex)
    expected_versions: dict[str, str] | None = None
    with_stac_items: bool = False


@dataclass
class ChipResult:
    """What a chip task returns: the chip's manifest entry plus timings (seconds per stage,
    for benchmarks)."""

    chip_id: str
    entry: ChipEntry
    timings: dict[str, float] = field(default_factory=dict)

    @classmethod
    def start(cls, chip: ChipRecord) -> ChipResult:
        entry = ChipEntry(
            status="ok", image=chip.image, label=chip.label,
            image_stamp=chip.image_stamp, label_stamp=chip.label_stamp,
        )  # fmt: skip
        return cls(chip.chip_id, entry)

    @classmethod
    def failed(cls, chip: ChipRecord, reason: str) -> ChipResult:
        return cls(chip.chip_id, ChipEntry(status="failed", image=chip.image, label=chip.label, reason=reason))

    @property
    def status(self) -> ChipStatus:
        return self.entry.status

    @property
    def reason(self) -> str | None:
        return self.entry.reason


class ChipWork(NamedTuple):
    """One chip of a task: the chip, its position along the Zarr store's `chip` dimension
    (None: no store) and its spatial fold (known from the scan; None: unlabelled)."""

    chip: ChipRecord
    zarr_index: int | None = None
    fold: int | None = None


def process_chip(
    chip: ChipRecord, job: ChipJob, zarr_index: int | None = None, fold: int | None = None
) -> ChipResult:
    """Run one chip; failures come back as a `failed` result, never as an exception.

    `zarr_index` is the chip's position along the store's `chip` dimension; `fold` its
    spatial fold, recorded in its entry and its STAC label item.
    """
    result = ChipResult.start(chip)
    result.entry.fold = fold

    def work() -> bool:
        if chip.problem:
            raise ChipError(chip.image, chip.problem)
        _process(chip, job, zarr_index, result)
        return True

    copy_key = chipcache.CopyKey(job.run_token, chip.image, chip.image_stamp)
    with chipcache.reading(copy_key):  # the copy this run's scan kept, and no other
        outcome = guard_chip(chip.image, work)
    chipcache.evict(copy_key)  # the write pass is the chip's last read
    if outcome.reason is not None:
        result.entry.status, result.entry.reason = "failed", outcome.reason
        if outcome.traceback is not None:
            result.entry.reason += _save_traceback(job, chip, outcome.traceback)
    return result


def process_chip_batch(batch: Sequence[ChipWork | tuple[Any, ...]], job: ChipJob) -> list[ChipResult]:
    """`process_chip` of each `ChipWork` (or a (chip, Zarr index[, fold]) tuple) of a
    batch, in order (one dask task: one chip, or several small ones; `graph.chip_tasks`).

    The batch's outputs get their final names together when it ends (one flush to disk
    instead of one per file, `OutputWriter.committed_together`). If that fails, no output
    of the batch is renamed and every chip of it is reported failed. A worker whose
    versions differ from the client's raises `VersionSkewError` instead (not a chip's
    failure: the run stops).
    """
    require_versions(job.expected_versions)
    try:
        with job.writer.committed_together():
            return [process_chip(work.chip, job, work.zarr_index, work.fold)
                    for work in (ChipWork(*item) for item in batch)]
    except OSError as exc:
        reason = f"outputs could not be made durable ({exc}): not written"
        return [ChipResult.failed(work[0], f"{work[0].image}: {reason}") for work in batch]


def _save_traceback(job: ChipJob, chip: ChipRecord, text: str) -> str:
    """Write an unexpected error's traceback to the chip's log; the reason's suffix."""
    url = job.layout.chip_log_url(chip.chip_id)
    try:
        job.writer.write_bytes(url, f"{chip.image}\n{text}".encode())
    except OSError:
        return ""
    return f" (traceback in {url})"


def _process(
    chip: ChipRecord, job: ChipJob, zarr_index: int | None, result: ChipResult
) -> None:
    config = job.config
    timings = result.timings
    with_masks = bool(config.masks) and chip.label is not None

    started = time.perf_counter()
    header, image = job.reader.read_bands(chip.image, config.bands, all_bands=with_masks)
    selected = image[band_indexes(config.bands)] if with_masks else image
    timings["read"] = time.perf_counter() - started

    started = time.perf_counter()
    rgb = _stretch(chip, job, header, selected, result)
    timings["stretch"] = time.perf_counter() - started

    # The RGB is written before the masks are burned: a label that fails the chip never
    # costs the chip its RGB (it stays recorded in the failed chip's outputs).
    layout, writer = job.layout, job.writer
    if "geotiff" in config.formats and rgb is not None:
        started = time.perf_counter()
        path = layout.rgb_relpath(chip.output_name)
        result.entry.output_bytes[RGB_OUTPUT] = writer.write_geotiff(
            layout.url(path), rgb, header, OutputSpec.rgb(config.bands, config.compress)
        )
        result.entry.outputs[RGB_OUTPUT] = path
        timings["write_rgb"] = time.perf_counter() - started

    masks: dict[str, np.ndarray] = {}
    if config.masks and chip.label is None:
        result.entry.warnings.append(f"{chip.image}: no label file: masks not written")
    elif with_masks:
        started = time.perf_counter()
        masks = _burn(chip, job, header, image, result)
        timings["masks"] = time.perf_counter() - started
    del image, selected

    if "geotiff" in config.formats:
        started = time.perf_counter()
        for kind, mask in masks.items():
            path = layout.mask_relpath(kind, chip.output_name)
            result.entry.output_bytes[kind] = writer.write_geotiff(
                layout.url(path), mask, header,
                OutputSpec.mask(kind, config.compress, config.rules.multichannel_interleave),
            )
            result.entry.outputs[kind] = path
        timings["write_masks"] = time.perf_counter() - started
    if job.with_zarr and zarr_index is not None:
        started = time.perf_counter()
        writer.write_zarr_region(layout.zarr_url, zarr_index, rgb, masks, run_token=job.run_token)
        result.entry.outputs[ZARR_OUTPUT] = str(layout.zarr_ref(zarr_index))
        timings["write_zarr"] = time.perf_counter() - started
    if job.with_stac_items and result.entry.done and RGB_OUTPUT in result.entry.outputs:
        started = time.perf_counter()
        _write_stac_items(chip, job, header, result.entry)
        timings["write_stac"] = time.perf_counter() - started


def write_items_of_done_chips(
    batch: Sequence[tuple[str, ChipEntry, ChipHeader, tuple[float, float, float, float]]], job: ChipJob
) -> int:
    """The STAC items of chips done by an earlier run, written again (one task per batch):
    their fold may have moved with the AOI's chips, an earlier version may have written
    others or none, and a resumed run must give the same catalog as a fresh one."""
    with job.writer.committed_together():
        for chip_id, entry, header, bbox in batch:
            for relpath, document in stac.chip_items(job.layout.aoi, chip_id, entry, header, bbox, job.config.bands):
                write_json(job.writer, job.layout.url(relpath), document)
    return len(batch)


def _write_stac_items(chip: ChipRecord, job: ChipJob, header: ChipHeader, entry: ChipEntry) -> None:
    """The chip's STAC items (`stac.chip_items`), written here rather than by the client
    after the run: at 20,000 chips that was 40,000 writes in a row with every worker idle."""
    from sn5dask.core.crs import lonlat_bbox

    try:
        bbox = lonlat_bbox(header)
    except Exception as exc:  # the scan found no footprint either
        entry.warnings.append(f"{chip.image}: no lon/lat footprint ({exc}): no STAC item, no fold")
        return
    for relpath, document in stac.chip_items(job.layout.aoi, chip.chip_id, entry, header, bbox, job.config.bands):
        write_json(job.writer, job.layout.url(relpath), document)


def _stretch(
    chip: ChipRecord,
    job: ChipJob,
    header: ChipHeader,
    bands: np.ndarray,
    result: ChipResult,
) -> np.ndarray | None:
    config, rules = job.config, job.config.rules
    nodata = [header.nodata[b - 1] for b in config.bands] if rules.honour_nodata_tag else None
    fractions = zero_fractions(bands)
    result.entry.zero_fraction = {str(b): round(f, 6) for b, f in zip(config.bands, fractions, strict=True)}
    if min(fractions) == 1.0:
        result.entry.warnings.append(f"{chip.image}: every pixel of bands {list(config.bands)} is 0 (all nodata)")
    if rules.skip_zero_fraction is not None and max(fractions) >= rules.skip_zero_fraction:
        worst = max(range(len(fractions)), key=fractions.__getitem__)
        result.entry.status = "skipped"
        result.entry.reason = (
            f"{chip.image}: band {config.bands[worst]} is {fractions[worst]:.1%} zeros "
            f"(>= {rules.skip_zero_fraction:.0%}): CRESI's skip rule writes no RGB"
        )
        return None
    if job.aoi_cuts is not None:
        cuts = list(job.aoi_cuts)
    else:
        hist = band_histograms(bands, nodata)
        chip_percentiles = [
            percentiles_from_histogram(h, config.percentiles, bands.dtype) for h in hist
        ]
        result.entry.percentiles = {
            str(b): p for b, p in zip(config.bands, chip_percentiles, strict=True)
        }
        cuts = [band_cut(low, high) for low, high in chip_percentiles]
    for band, cut in zip(config.bands, cuts, strict=True):
        if cut.lo is None:
            result.entry.warnings.append(f"{chip.image}: band {band} has no valid pixel: written as 0")
        elif cut.is_flat and rules.warn_flat_band:
            result.entry.warnings.append(
                f"{chip.image}: band {band} percentiles are equal ({cut.lo:g}): "
                "pixels <= it become 0, above it 255"
            )
    return stretch_to_uint8(bands, cuts, nodata, rules.rgb_valid_floor)


def _burn(
    chip: ChipRecord,
    job: ChipJob,
    header: ChipHeader,
    image: np.ndarray,
    result: ChipResult,
) -> dict[str, np.ndarray]:
    # Imported here (by the fork server's preload, or a worker's first chip task), not
    # with this module: the client imports it for `ChipJob` and needs neither rasterio nor
    # shapely and pyproj.
    from sn5dask.core.labels import parse_road_labels
    from sn5dask.io.burn import burn_chip_masks

    assert chip.label is not None
    config = job.config
    max_bytes = int(config.max_label_mb * 2**20)
    try:
        text = job.reader.read_label(chip.label, max_bytes=max_bytes)
    except ValueError as exc:
        raise LabelError(chip.label, f"label file too large: {exc} (--max-label-mb)") from None
    except OSError as exc:
        raise LabelError(chip.label, f"cannot be read ({exc})") from None
    labels = parse_road_labels(
        text,
        chip.label,
        speed_field=config.speed_field,
        default_speed_mph=config.default_speed,
    )
    result.entry.warnings.extend(labels.warnings)
    return burn_chip_masks(
        labels,
        header.grid,
        kinds=config.masks,
        profile=config.rules,
        buffer_m=config.buffer_m,
        image=image,
        warnings=result.entry.warnings,
    )
