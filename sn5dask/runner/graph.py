"""The dask graphs of a run, built without computing anything (no I/O, no client).

Shapes, and why:
- **Scan**: one `scan_chips` task per batch of chips (`scan_batches`: a full-size chip
  is a batch of its own, small chips share one), summed by a tree of `combine_scans`
  (fan-in 8), then `finalize_scan`. Submitted as one graph, dask's ordering combines histograms
  as soon as they exist, so memory stays flat: no task ever holds more than 8 partial
  sums, and only the finalized `AoiStats` (percentiles and per-chip headers) reaches the
  client; histograms stay on the workers.
- **Chips**: one independent `process_chip_batch` task per chip (per small batch when
  the AOI has many small chips), keyed by AOI and chip id, so each can finish, fail or be
  retried alone and the manifest grows as they finish. Only small `ChipResult`s come
  back: the client never holds pixels.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import dask
from dask.delayed import Delayed

from sn5dask.io.catalog import ChipRecord
from sn5dask.io.chipio import ChipReader, RasterioReader
from sn5dask.runner.aoistats import combine_scans, finalize_scan, scan_chips
from sn5dask.runner.chiptask import ChipJob, ChipWork, process_chip_batch

TREE_FAN_IN = 8
# Small chips are handled in batches: each dask task costs the scheduler and the worker
# more CPU than the whole scan of a 64 px chip (`benchmarks/bench_small_chips.py`). A
# batch holds at most SCAN_BATCH_BYTES of input by the size discovery recorded (a 27 MB
# SpaceNet chip is a batch of its own) and at most SCAN_BATCH_CHIPS chips. The write pass
# also keeps at least MIN_CHIP_TASKS tasks per AOI, so that progress, Ctrl-C and load
# balancing stay fine-grained: an AOI of a few hundred chips gets one task per chip.
SCAN_BATCH_BYTES = 4 * 2**20
SCAN_BATCH_CHIPS = 32
MIN_CHIP_TASKS = 64

T = TypeVar("T")


def batches(
    items: Sequence[T],
    chip_of: Callable[[T], ChipRecord],
    *,
    max_chips: int,
    group_of: Callable[[T], object] = lambda item: None,
) -> list[list[T]]:
    """`items` in order, cut into batches of at most `max_chips` chips and
    `SCAN_BATCH_BYTES` of input. A chip of unknown size is a batch of its own, and items
    with another `group_of` (e.g. the worker holding a chip's copy) start a new batch."""
    out: list[list[T]] = []
    batch: list[T] = []
    batch_bytes = 0
    for item in items:
        size = chip_of(item).image_bytes
        if batch and (
            size is None
            or batch_bytes + size > SCAN_BATCH_BYTES
            or len(batch) >= max_chips
            or group_of(item) != group_of(batch[0])
        ):
            out.append(batch)
            batch, batch_bytes = [], 0
        batch.append(item)
        batch_bytes += size if size is not None else SCAN_BATCH_BYTES
    if batch:
        out.append(batch)
    return out


def scan_batches(chips: Sequence[ChipRecord]) -> list[list[ChipRecord]]:
    """The scan's batches of `chips` (see `batches`)."""
    return batches(chips, lambda chip: chip, max_chips=SCAN_BATCH_CHIPS)


def scan_tree(
    chips: Sequence[ChipRecord],
    bands: Sequence[int],
    *,
    with_histogram: bool,
    use_nodata: bool = True,
    reader: ChipReader | None = None,
    for_run: str | None = None,
) -> Delayed:
    """Delayed `AoiScan` of all chips: `scan_chips` per batch summed by a tree of
    `combine_scans`. `with_histogram=False` reads headers only (no pixels). `for_run`: the
    run whose write pass follows (the scan keeps chip copies for it, `chipcache`)."""
    reader = reader or RasterioReader()
    scan = dask.delayed(scan_chips, pure=False)
    combine = dask.delayed(combine_scans, pure=False)
    level = [
        scan(batch, tuple(bands), with_histogram, use_nodata, reader, for_run)
        for batch in scan_batches(chips)
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
    for_run: str | None = None,
) -> Delayed:
    """The scan pass as one delayed object that computes to `AoiStats` (the tree, then
    `finalize_scan` on a worker)."""
    tree = scan_tree(
        chips, bands, with_histogram=with_histogram, use_nodata=use_nodata, reader=reader,
        for_run=for_run,
    )  # fmt: skip
    return dask.delayed(finalize_scan, pure=False)(
        tree, tuple(bands), tuple(percentiles), with_histogram
    )


def chip_tasks(
    chips: Sequence[tuple[ChipRecord, int]],
    job: ChipJob,
    placement: Mapping[str, str] | None = None,
    folds: Mapping[str, int | None] | None = None,
) -> list[tuple[list[ChipRecord], Delayed]]:
    """The write pass over (chip, index in the AOI), in the given order: a delayed
    `process_chip_batch` per batch (one chip, unless the chips are small and many; see
    `MIN_CHIP_TASKS`), each with its chips. Every task computes to a list of `ChipResult`.

    Keys name the chip (`process_chip-<AOI>-<chip id>-<token>`; a batch:
    `process_chip-<AOI>-<first chip id>+<n more>-<token>`), so dask's dashboard shows which
    chip a task is; the token keeps two runs on one cluster apart. `placement` maps a chip
    id to the worker holding the copy the scan kept of it (`chipcache`): the task prefers
    that worker, and runs elsewhere only if it is gone (then it reads the chip again).
    `folds` maps a chip id to its spatial fold (from the scan), which its task records.
    """
    task = dask.delayed(process_chip_batch, pure=False)
    token = uuid.uuid4().hex[:12]
    placement = placement or {}
    folds = folds or {}
    max_chips = max(1, min(SCAN_BATCH_CHIPS, len(chips) // MIN_CHIP_TASKS))
    tasks = []
    for batch in batches(
        chips, lambda item: item[0], max_chips=max_chips,
        group_of=lambda item: placement.get(item[0].chip_id),
    ):  # fmt: skip
        first = batch[0][0]
        more = f"+{len(batch) - 1}" if len(batch) > 1 else ""
        key = f"process_chip-{first.aoi}-{first.chip_id}{more}-{token}"
        address = placement.get(first.chip_id)
        records = [chip for chip, _ in batch]
        work = [ChipWork(chip, index, folds.get(chip.chip_id)) for chip, index in batch]
        if address is None:
            tasks.append((records, task(work, job, dask_key_name=key)))
            continue
        with dask.annotate(workers=[address], allow_other_workers=True):
            tasks.append((records, task(work, job, dask_key_name=key)))
    return tasks
