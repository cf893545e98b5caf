"""One chip's whole job, run as one task on a worker: read, stretch, burn, write.

`process_chip` is the single place where a per-chip failure is caught and recorded: it
never raises for a bad chip, it returns a `ChipResult` with status `failed` and a reason
naming the file. Everything it receives (`ChipRecord`, `ChipJob`) is small and pickled to
the worker; pixels are read on the worker and never travel back to the client.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sn5dask import raster, storage
from sn5dask.catalog import ChipRecord
from sn5dask.config import RunConfig
from sn5dask.errors import ChipError, LabelError
from sn5dask.labels import parse_road_labels
from sn5dask.masks import burn_chip_masks
from sn5dask.raster import ChipHeader
from sn5dask.stretch import (
    BandCut,
    band_cut,
    band_histograms,
    percentiles_from_histogram,
    stretch_to_uint8,
    zero_fractions,
)

log = logging.getLogger("sn5dask")
#: CRESI's `--max_zero_frac`: a chip with this share of zeros in a selected band is skipped.
CRESI_MAX_ZERO_FRACTION = 0.3


@dataclass(frozen=True)
class ChipJob:
    """What every chip task of one AOI shares (small; pickled once per task)."""

    config: RunConfig
    out_aoi: str
    aoi_cuts: tuple[BandCut, ...] | None  # None: per-chip stretch
    zarr_url: str | None


@dataclass
class ChipResult:
    """A chip's manifest entry plus timings (seconds per stage) for benchmarks."""

    chip_id: str
    status: str
    reason: str | None = None
    image: str | None = None
    label: str | None = None
    warnings: list[str] = field(default_factory=list)
    zero_fraction: dict[str, float] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    percentiles: dict[str, list[float | None]] | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def manifest_entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "status": self.status,
            "image": self.image,
            "label": self.label,
            "reason": self.reason,
            "warnings": self.warnings,
            "zero_fraction": self.zero_fraction,
            "outputs": self.outputs,
        }
        if self.percentiles is not None:
            entry["percentiles"] = self.percentiles
        return entry


def rgb_relpath(chip: ChipRecord) -> str:
    return f"PS-RGB/{chip.output_name}"


def mask_relpath(kind: str, chip: ChipRecord) -> str:
    return f"masks/{kind}/{chip.output_name}"


def process_chip(chip: ChipRecord, job: ChipJob, zarr_index: int | None = None) -> ChipResult:
    """Run one chip; failures come back as a `failed` result, never as an exception.

    `zarr_index` is the chip's position along the store's `chip` dimension.
    """
    result = ChipResult(chip.chip_id, "ok", image=chip.image, label=chip.label)
    try:
        if chip.problem:
            raise ChipError(chip.image, chip.problem)
        _process(chip, job, zarr_index, result)
    except ChipError as exc:
        result.status, result.reason = "failed", str(exc)
    except Exception as exc:  # one bad chip never kills the run: recorded, reported
        log.exception("chip %s failed", chip.image)
        result.status = "failed"
        result.reason = f"{chip.image}: unexpected error {type(exc).__name__}: {exc}"
    return result


def _process(
    chip: ChipRecord, job: ChipJob, zarr_index: int | None, result: ChipResult
) -> None:
    config = job.config
    timings = result.timings
    with_masks = bool(config.masks) and chip.label is not None

    started = time.perf_counter()
    header, image = raster.read_chip(chip.image, config.bands, all_bands=with_masks)
    selected = image[raster.band_indexes(config.bands)] if with_masks else image
    timings["read"] = time.perf_counter() - started

    started = time.perf_counter()
    rgb = _stretch(chip, job, header, selected, result)
    timings["stretch"] = time.perf_counter() - started

    masks: dict[str, np.ndarray] = {}
    if config.masks and chip.label is None:
        result.warnings.append(f"{chip.image}: no label file: masks not written")
    elif with_masks:
        started = time.perf_counter()
        masks = _burn(chip, config, header, image, result)
        timings["masks"] = time.perf_counter() - started
    del image, selected

    if "geotiff" in config.formats:
        started = time.perf_counter()
        if rgb is not None:
            path = rgb_relpath(chip)
            raster.write_geotiff(
                storage.join(job.out_aoi, path),
                rgb,
                header,
                compress=config.compress,
                nodata=0,
                photometric="RGB" if rgb.shape[0] == 3 else None,
            )
            result.outputs["rgb"] = path
        timings["write_rgb"] = time.perf_counter() - started
        started = time.perf_counter()
        for kind, mask in masks.items():
            path = mask_relpath(kind, chip)
            raster.write_geotiff(
                storage.join(job.out_aoi, path), mask, header, compress=config.compress, is_mask=True
            )
            result.outputs[kind] = path
        timings["write_masks"] = time.perf_counter() - started
    if job.zarr_url is not None and zarr_index is not None:
        from sn5dask import store  # zarr is only imported by runs that write the store

        started = time.perf_counter()
        store.write_chip(job.zarr_url, zarr_index, rgb, masks)
        result.outputs["zarr"] = f"{job.zarr_url.rstrip('/').rsplit('/', 1)[-1]}#{zarr_index}"
        timings["write_zarr"] = time.perf_counter() - started


def _stretch(
    chip: ChipRecord,
    job: ChipJob,
    header: ChipHeader,
    bands: np.ndarray,
    result: ChipResult,
) -> np.ndarray | None:
    config = job.config
    cresi = config.profile == "cresi"
    # CRESI ignores the nodata tag (only 0 is invalid); the default profile honours it.
    nodata = None if cresi else [header.nodata[b - 1] for b in config.bands]
    fractions = zero_fractions(bands)
    result.zero_fraction = {str(b): round(f, 6) for b, f in zip(config.bands, fractions, strict=True)}
    if min(fractions) == 1.0:
        result.warnings.append(f"{chip.image}: every pixel of bands {list(config.bands)} is 0 (all nodata)")
    if cresi and max(fractions) >= CRESI_MAX_ZERO_FRACTION:
        worst = max(range(len(fractions)), key=fractions.__getitem__)
        result.status = "skipped"
        result.reason = (
            f"{chip.image}: band {config.bands[worst]} is {fractions[worst]:.1%} zeros "
            f"(>= {CRESI_MAX_ZERO_FRACTION:.0%}): CRESI's skip rule writes no RGB"
        )
        return None
    if job.aoi_cuts is not None:
        cuts = list(job.aoi_cuts)
    else:
        hist = band_histograms(bands, nodata)
        chip_percentiles = [
            percentiles_from_histogram(h, config.percentiles, bands.dtype) for h in hist
        ]
        result.percentiles = {
            str(b): p for b, p in zip(config.bands, chip_percentiles, strict=True)
        }
        cuts = [band_cut(low, high) for low, high in chip_percentiles]
    for band, cut in zip(config.bands, cuts, strict=True):
        if cut.lo is None:
            result.warnings.append(f"{chip.image}: band {band} has no valid pixel: written as 0")
        elif cut.is_flat and not cresi:
            result.warnings.append(
                f"{chip.image}: band {band} percentiles are equal ({cut.lo:g}): "
                "pixels <= it become 0, above it 255"
            )
    return stretch_to_uint8(bands, cuts, nodata)


def _burn(
    chip: ChipRecord,
    config: RunConfig,
    header: ChipHeader,
    image: np.ndarray,
    result: ChipResult,
) -> dict[str, np.ndarray]:
    assert chip.label is not None
    max_bytes = int(config.max_label_mb * 2**20)
    try:
        text = storage.read_bytes(chip.label, max_bytes=max_bytes)
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
    result.warnings.extend(labels.warnings)
    return burn_chip_masks(
        labels,
        header.grid,
        kinds=config.masks,
        profile=config.profile,
        buffer_m=config.buffer_m,
        image=image,
        warnings=result.warnings,
    )
