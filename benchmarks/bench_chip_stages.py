"""CPU per stage of the chip task on small chips, in one process (no dask, no profiler).

Each stage function is wrapped with a `time.process_time` timer, then the chips of a
synthetic AOI are processed in batches as the workers do (`process_chip_batch`):

    python benchmarks/bench_chip_stages.py [--chips 500] [--size 64]
"""

from __future__ import annotations

import argparse
import collections
import functools
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from sn5dask.config import load_config
from sn5dask.core import labels
from sn5dask.io import burn, files, raster, zarrstore
from sn5dask.io.catalog import discover
from sn5dask.io.chipio import FileWriter, RasterioReader
from sn5dask.outputs.layout import AoiLayout
from sn5dask.runner import chiptask
from sn5dask.runner.aoistats import combine_scans, finalize_scan, scan_chip
from sn5dask.runner.chiptask import ChipJob, process_chip_batch
from sn5dask.runner.pipeline import aoi_cuts
from sn5dask.synthetic import make_synthetic_aoi

CPU: dict[str, float] = collections.defaultdict(float)
CALLS: collections.Counter[str] = collections.Counter()
#: (module, function) pairs timed; nested ones overlap (a GeoTIFF write includes its file write).
STAGES = [(raster, "read_chip"), (raster, "encode_geotiff"), (files, "write_bytes_atomic"),
          (files, "_commit"), (burn, "burn_chip_masks"), (labels, "parse_road_labels"),
          (chiptask, "_stretch"), (zarrstore, "write_chip")]


def timed(module: ModuleType, name: str) -> None:
    function: Callable[..., Any] = getattr(module, name)
    label = f"{module.__name__.rsplit('.', 1)[-1]}.{name}"

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.process_time()
        try:
            return function(*args, **kwargs)
        finally:
            CPU[label] += time.process_time() - started
            CALLS[label] += 1

    setattr(module, name, wrapper)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chips", type=int, default=500)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sn5dask-stages-"))
    aoi = make_synthetic_aoi(work / "in", n_chips=args.chips, size=args.size, seed=2, roads_per_chip=(2, 4))
    config = load_config(None, root=str(aoi.root), out=str(work / "out"), formats="geotiff,zarr")
    catalog = discover(str(aoi.root))[0]
    reader, writer = RasterioReader(), FileWriter()
    run_token = uuid.uuid4().hex  # the scan keeps small chips' pixels for this run, as in a run
    started = time.process_time()
    scans = [scan_chip(chip, tuple(config.bands), True, True, reader, run_token) for chip in catalog.chips]
    scan_ms = (time.process_time() - started) / len(scans) * 1e3
    stats = finalize_scan(combine_scans(*scans), tuple(config.bands), config.percentiles, True)
    layout = AoiLayout(config.out, catalog.aoi)
    headers = {chip.chip_id: stats.headers[chip.chip_id] for chip in catalog.chips}
    writer.create_zarr(layout.zarr_url, chip_ids=list(headers), headers=headers, bands=config.bands,
                       mask_kinds=config.masks, attrs={})
    job = ChipJob(config, layout, aoi_cuts(config, stats), True, reader, writer, run_token)
    for module, name in STAGES:
        timed(module, name)
    items = [(chip, index) for index, chip in enumerate(catalog.chips)]
    started = time.process_time()
    for first in range(0, len(items), args.batch):
        results = process_chip_batch(items[first:first + args.batch], job)
        assert all(r.status == "ok" for r in results), [r.reason for r in results if r.reason]
    n = len(items)
    print(f"{n} chips of {args.size} px, batches of {args.batch}, GeoTIFF + Zarr")
    print(f"scan pass: {scan_ms:.2f} ms CPU per chip")
    print(f"chip task: {(time.process_time() - started) / n * 1e3:.2f} ms CPU per chip, of which:")
    for label, seconds in sorted(CPU.items(), key=lambda item: -item[1]):
        print(f"  {label:28s} {seconds / n * 1e3:6.2f} ms per chip ({CALLS[label] / n:.2f} calls per chip)")


if __name__ == "__main__":
    main()
