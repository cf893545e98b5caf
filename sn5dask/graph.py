"""The dask graphs of a run, built without computing anything (no I/O, no client).

Shapes, and why:
- **Scan**: one `scan_chips` task per batch of chips (`scan_batches`: a full-size chip
  is a batch of its own, small chips share one), summed by a tree of `combine_scans`
  (fan-in 8), then `finalize_scan`. Submitted as one graph, dask's ordering combines histograms
  as soon as they exist, so memory stays flat: no task ever holds more than 8 partial
  sums, and only the finalized `AoiStats` (percentiles and per-chip headers) reaches the
  client; histograms stay on the workers.
- **Chips**: one independent `process_chip` task per chip, keyed by AOI and chip id, so
  each can finish, fail or be retried alone and the manifest grows as they finish. Only
  a small `ChipResult` comes back: the client never holds pixels.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence

import dask
from dask.delayed import Delayed

from sn5dask.aoistats import combine_scans, finalize_scan, scan_chips
from sn5dask.catalog import ChipRecord
from sn5dask.chipio import ChipReader, RasterioReader
from sn5dask.chiptask import ChipJob, process_chip

TREE_FAN_IN = 8
# Small chips are scanned in batches: each dask task costs the scheduler and the worker
# a few ms of CPU, more than the whole scan of a 64 px chip (benchmarks/README.md). A
# batch holds at most SCAN_BATCH_BYTES of input by the size discovery recorded (a 27 MB
# SpaceNet chip is a batch of its own) and at most SCAN_BATCH_CHIPS chips.
SCAN_BATCH_BYTES = 4 * 2**20
SCAN_BATCH_CHIPS = 32


def scan_batches(chips: Sequence[ChipRecord]) -> list[list[ChipRecord]]:
    """`chips` in order, cut into batches (a chip of unknown size is a batch of its own)."""
    batches: list[list[ChipRecord]] = []
    batch: list[ChipRecord] = []
    batch_bytes = 0
    for chip in chips:
        size = chip.image_bytes
        if batch and (size is None or batch_bytes + size > SCAN_BATCH_BYTES or len(batch) == SCAN_BATCH_CHIPS):
            batches.append(batch)
            batch, batch_bytes = [], 0
        batch.append(chip)
        batch_bytes += size if size is not None else SCAN_BATCH_BYTES
    if batch:
        batches.append(batch)
    return batches


def scan_tree(
    chips: Sequence[ChipRecord],
    bands: Sequence[int],
    *,
    with_histogram: bool,
    use_nodata: bool = True,
    reader: ChipReader | None = None,
) -> Delayed:
    """Delayed `AoiScan` of all chips: `scan_chips` per batch summed by a tree of
    `combine_scans`. `with_histogram=False` reads headers only (no pixels)."""
    reader = reader or RasterioReader()
    scan = dask.delayed(scan_chips, pure=False)
    combine = dask.delayed(combine_scans, pure=False)
    level = [
        scan(batch, tuple(bands), with_histogram, use_nodata, reader) for batch in scan_batches(chips)
    ]
    if not level:
        return combine()
    while len(level) > 1:
        level = [combine(*level[i : i + TREE_FAN_IN]) for i in range(0, len(level), TREE_FAN_IN)]
    return level[0]


def scan_graph(
    chips: Sequence[ChipRecord],
    bands: Sequence[int],
    percentiles: Sequence[float],
    *,
    with_histogram: bool,
    use_nodata: bool = True,
    reader: ChipReader | None = None,
) -> Delayed:
    """The scan pass as one delayed object that computes to `AoiStats` (the tree, then
    `finalize_scan` on a worker)."""
    tree = scan_tree(
        chips, bands, with_histogram=with_histogram, use_nodata=use_nodata, reader=reader
    )
    return dask.delayed(finalize_scan, pure=False)(
        tree, tuple(bands), tuple(percentiles), with_histogram
    )


def chip_tasks(
    chips: Sequence[tuple[ChipRecord, int]],
    job: ChipJob,
    placement: Mapping[str, str] | None = None,
) -> list[Delayed]:
    """One delayed `process_chip` per (chip, index in the AOI), in the given order.

    Keys name the chip (`process_chip-<AOI>-<chip id>-<token>`), so dask's dashboard shows
    which chip a task is; the token keeps two runs on one cluster apart. `placement` maps
    a chip id to the worker holding the local copy the scan made of it (S3 chips): the
    task prefers that worker, and runs elsewhere if it is gone (then it reads S3 again).
    """
    task = dask.delayed(process_chip, pure=False)
    token = uuid.uuid4().hex[:12]
    placement = placement or {}
    tasks = []
    for chip, index in chips:
        key = f"process_chip-{chip.aoi}-{chip.chip_id}-{token}"
        address = placement.get(chip.chip_id)
        if address is None:
            tasks.append(task(chip, job, index, dask_key_name=key))
            continue
        with dask.annotate(workers=[address], allow_other_workers=True):
            tasks.append(task(chip, job, index, dask_key_name=key))
    return tasks
