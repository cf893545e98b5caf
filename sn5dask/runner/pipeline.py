"""The run: for each AOI, lock -> previous manifest -> scan -> params check -> Zarr store
-> chips -> manifest, with resume, fault isolation and progress.

`run_aoi` reads as those steps; the graphs it computes are built in `graph` (pure), the
checks before any chip task are in `preflight`, the resume record is read and written in
`resume` (its rules live with the manifest model, `manifest`), what earlier runs left is
reconciled in `outputs.stale`, every path comes from `layout`, and every read and write
goes through the `chipio` seams (fakes in `sn5dask.testing`).
Results are consumed with `as_completed`, so the manifest grows as chips finish and an
interrupted run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import CancelledError
from contextlib import contextmanager, nullcontext
from typing import Any

from distributed import Client, as_completed

from sn5dask.config import RunConfig
from sn5dask.core.folds import spatial_folds
from sn5dask.core.stretch import band_cut
from sn5dask.errors import ConfigError, SchedulerLostError, VersionSkewError
from sn5dask.io import files
from sn5dask.io.catalog import AoiCatalog, ChipRecord, discover
from sn5dask.io.chipio import (
    ChipReader,
    FileWriter,
    OutputWriter,
    RasterioReader,
)
from sn5dask.io.lock import RunLock
from sn5dask.outputs import stac
from sn5dask.outputs.folds import write_folds
from sn5dask.outputs.layout import AoiLayout
from sn5dask.outputs.manifest import ChipEntry, Manifest
from sn5dask.outputs.stac_files import write_collection, write_root_catalog
from sn5dask.outputs.stale import earlier_outputs, not_listed_yet, remove_stale_outputs
from sn5dask.outputs.stats import write_stats
from sn5dask.runner.aoistats import AoiStats
from sn5dask.runner.chiptask import ChipJob, ChipResult, write_items_of_done_chips
from sn5dask.runner.cluster import (
    check_main_guard,
    get_client,
    prepare_local_workers,
    scheduler_address,
    warm_up_workers,
)
from sn5dask.runner.graph import chip_tasks, scan_graph
from sn5dask.runner.preflight import (
    check_bands_exist,
    check_outputs_apart_from_inputs,
    check_workers_reach_s3,
    check_workers_see_local_paths,
)
from sn5dask.runner.report import AoiSummary, LogReporter, Reporter, RunSummary
from sn5dask.runner.resume import (
    read_previous_manifest,
    resumable_chips,
    start_manifest,
    write_manifest,
)
from sn5dask.runner.versioncheck import WorkerVersions, raise_found

log = logging.getLogger("sn5dask")
MANIFEST_EVERY_S = 2.0
#: Resumed chips whose STAC items one task writes again.
ITEMS_PER_TASK = 256
# Interim manifest writes (each O(chips)) are spaced so they take at most 1/20 of the
# run's time: on a large AOI the spacing grows with the manifest, so the writes' total
# cost stays linear in the number of chips instead of quadratic.
MANIFEST_TIME_SHARE = 20


def run(
    config: RunConfig,
    client: Client | None = None,
    reporter: Reporter | None = None,
    *,
    reader: ChipReader | None = None,
    writer: OutputWriter | None = None,
) -> RunSummary:
    """Run the whole job for every AOI under `config.root` (the CLI's `sn5dask run`).

    `reader` / `writer` replace the real rasterio/fsspec/zarr I/O (`sn5dask.testing` has
    in-memory fakes); they must work where the tasks run.
    """
    reporter = reporter or LogReporter()
    if client is None and scheduler_address(config.scheduler) is None:
        check_main_guard()  # before anything is written
    if client is None:
        prepare_local_workers(config.scheduler, config.formats)  # its imports overlap with discovery
    catalogs = discover(config.root, list(config.aois) or None, exclude=config.out)
    check_outputs_apart_from_inputs(config, catalogs)
    for catalog in catalogs:  # fail before a cluster starts, not after
        RunLock(AoiLayout(config.out, catalog.aoi).lock_url, break_lock=config.break_lock).check_free()
    files.makedirs(config.out)
    context = nullcontext(client) if client is not None else get_client(
        config.scheduler, config.workers, on_waiting=reporter.waiting
    )
    with context as active:
        assert active is not None
        own_cluster = client is None and scheduler_address(config.scheduler) is None
        workers_checked = WorkerVersions(active, on_notice=reporter.notice, own_cluster=own_cluster)
        workers_checked.check_new_workers()  # before any task: a skewed worker may hang it
        if not own_cluster:
            check_workers_see_local_paths(active, config, catalogs)
            check_workers_reach_s3(active, config, catalogs)
        warm_up_workers(active)
        reporter.cluster(active.dashboard_link, closes_with_run=own_cluster)
        summaries = []
        for catalog in catalogs:
            try:
                summaries.append(
                    run_aoi(active, config, catalog, reporter, reader=reader, writer=writer,
                            workers_checked=workers_checked)
                )
            except ConfigError:  # e.g. --bands beyond the chips: no empty AOI folder left
                remove_unused_aoi_folder(AoiLayout(config.out, catalog.aoi))
                raise
        write_root_catalog(config.out, writer or FileWriter())
        return RunSummary(summaries, active.dashboard_link)


def remove_unused_aoi_folder(layout: AoiLayout) -> None:
    """Remove an AOI output folder that holds nothing but its (released) lock file: a run
    stopped by a mistake before its first output leaves no empty folder behind."""
    if files.is_local(layout.folder) and os.path.isdir(layout.folder):
        if set(os.listdir(layout.folder)) <= {os.path.basename(layout.lock_url)}:
            try:
                os.remove(layout.lock_url)
            except FileNotFoundError:
                pass
            files.remove_empty_folder(layout.folder)


def run_aoi(
    client: Client,
    config: RunConfig,
    catalog: AoiCatalog,
    reporter: Reporter,
    *,
    reader: ChipReader | None = None,
    writer: OutputWriter | None = None,
    workers_checked: WorkerVersions | None = None,
) -> AoiSummary:
    """One AOI, step by step (see the module docstring). `workers_checked`: the workers'
    versions compared so far (`versioncheck`)."""
    started = time.perf_counter()
    reader = reader or RasterioReader()
    writer = writer or FileWriter()
    workers_checked = workers_checked or WorkerVersions(client)
    layout = AoiLayout(config.out, catalog.aoi)
    files.makedirs(layout.folder)
    if not catalog.chips:  # labels without any image: reported, nothing to make
        return record_orphan_labels(config, catalog, layout, writer, reporter, started)
    with RunLock(layout.lock_url, break_lock=config.break_lock):
        files.remove_partials(layout.folder)  # left by a run that was killed mid-write
        previous = read_previous_manifest(layout, writer)
        earlier = earlier_outputs(previous, layout)
        scan_started = time.perf_counter()
        with kept_for_run(client) as run_token:
            stats = scan_aoi(client, catalog, config, reader, for_run=run_token, workers_checked=workers_checked)
            scan_seconds = time.perf_counter() - scan_started
            check_bands_exist(config, catalog, stats)
            params = run_params(config, catalog, stats)
            done = resumable_chips(previous, params, config, catalog, layout, writer)
            done = prepare_store(config, catalog, layout, writer, stats, params, done)
            footprints = stats.footprints  # computed where each chip was scanned
            nowhere = sorted(set(stats.headers) - set(footprints))
            if nowhere:
                reporter.notice(
                    f"{catalog.aoi}: {len(nowhere)} chip(s) have no lon/lat footprint (e.g. "
                    f"{nowhere[0]}: its CRS does not transform to WGS84): no STAC item, no fold"
                )
            folds = chip_folds(catalog, stats, config)
            write_stats(
                layout, writer, root=config.root, scan=stats.as_json(), stretch=config.stretch_scope,
                n_chips=len(catalog.chips), unreadable_chips=stats.errors, footprints=footprints,
                params=params, versions=workers_checked.installation(),
                worker_versions=workers_checked.worker_versions(), histogram=stats.histogram,
                bands=stats.bands,
            )  # fmt: skip
            manifest = start_manifest(config, catalog, params, stats, done)
            manifest.superseded = not_listed_yet(earlier, manifest, footprints, config.formats, layout)
            todo = [c for c in catalog.chips if c.chip_id not in manifest.chips]
            write_manifest(manifest, layout, writer, final=False)  # watchers see the run at once
            reporter.aoi_started(
                catalog.aoi, len(catalog.chips), len(done), len(manifest.chips) - len(done)
            )
            job = ChipJob(
                config=config,
                layout=layout,
                aoi_cuts=aoi_cuts(config, stats),
                with_zarr="zarr" in config.formats,
                reader=reader,
                writer=writer,
                run_token=run_token,
                expected_versions=workers_checked.expected,
                with_stac_items="geotiff" in config.formats,
            )
            timings = process_chips(
                client, job, catalog, todo, manifest, writer, reporter, stats.cached_on,
                workers_checked=workers_checked, folds=folds,
            )
        # A worker killed mid-write leaves its temporary file (ours, or zarr's own
        # `<chunk>.<uuid>.partial`); every chip task has ended now, so a finished run leaves none.
        files.remove_partials(layout.folder)
        manifest.chips = {c.chip_id: manifest.chips[c.chip_id] for c in catalog.chips}
        for chip_id, entry in manifest.chips.items():  # those done by earlier runs too
            entry.fold = folds.get(chip_id)
        if job.with_stac_items:
            resumed = [c.chip_id for c in catalog.chips if c.chip_id in done]
            write_items_of_resumed_chips(client, job, resumed, manifest, stats)
        stale = remove_stale_outputs(earlier, manifest, footprints, config.formats, layout, writer)
        manifest.superseded = []
        write_manifest(manifest, layout, writer, final=True)
        if not write_folds(manifest, catalog, config.masks, config.formats, layout, writer):
            reporter.notice(
                f"{catalog.aoi}: no chip has masks (no label file, or --masks none): no "
                f"folds.csv written, nothing in this AOI to train on"
            )
        if "geotiff" in config.formats:  # the Items it links point to the GeoTIFFs
            write_collection(manifest, footprints, layout, writer)
        if stats.histogram is None:  # a per-chip stretch: an earlier run's AOI histogram would lie
            writer.remove(layout.histograms_url)
        if stale:
            reporter.notice(
                f"{catalog.aoi}: removed {len(stale)} output(s) of an earlier run that the manifest "
                f"no longer lists (chips failed, gone or made with other parameters), e.g. {stale[0]}"
            )

    counts = manifest.counts()
    summary = AoiSummary(
        aoi=catalog.aoi,
        manifest=layout.manifest_url,
        counts=counts,
        seconds=time.perf_counter() - started,
        processed=len(todo),
        scan_seconds=scan_seconds,
        failures=[(cid, e.reason or "") for cid, e in manifest.chips.items() if e.status == "failed"],
        orphan_labels=catalog.orphan_labels,
        timings=timings,
    )
    reporter.aoi_finished(summary)
    return summary


# -- the steps ---------------------------------------------------------------------------

def record_orphan_labels(
    config: RunConfig,
    catalog: AoiCatalog,
    layout: AoiLayout,
    writer: OutputWriter,
    reporter: Reporter,
    started: float,
) -> AoiSummary:
    """An AOI with label files but no image: a manifest that lists them, and a summary."""
    with RunLock(layout.lock_url, break_lock=config.break_lock):
        manifest = Manifest(
            aoi=catalog.aoi, params=config.output_params(), root=config.root,
            orphan_labels=catalog.orphan_labels,
        )  # fmt: skip
        write_manifest(manifest, layout, writer, final=True)
    reporter.aoi_started(catalog.aoi, 0, 0, 0)
    summary = AoiSummary(
        aoi=catalog.aoi, manifest=layout.manifest_url, counts=manifest.counts(),
        seconds=time.perf_counter() - started, processed=0, orphan_labels=catalog.orphan_labels,
    )  # fmt: skip
    reporter.aoi_finished(summary)
    return summary


def scan_aoi(
    client: Client,
    catalog: AoiCatalog,
    config: RunConfig,
    reader: ChipReader,
    *,
    for_run: str | None = None,
    workers_checked: WorkerVersions | None = None,
) -> AoiStats:
    """First pass: chip headers (and histograms for AOI stretch), reduced as a tree.
    `for_run`: the run whose write pass follows (workers keep chip copies for it)."""
    workers_checked = workers_checked or WorkerVersions(client)
    graph = scan_graph(
        catalog.chips,
        config.bands,
        config.percentiles,
        with_histogram=config.stretch_scope == "aoi",
        use_nodata=config.rules.honour_nodata_tag,
        reader=reader,
        for_run=for_run,
    )
    future = client.compute(graph)
    with workers_checked.watched([future]):  # a worker that joins is checked before it can hang this
        stats: AoiStats = future.result()
    return stats


def run_params(config: RunConfig, catalog: AoiCatalog, stats: AoiStats) -> dict[str, Any]:
    """The resume key: everything that determines the outputs' bytes."""
    params = config.output_params()
    if config.stretch_scope == "aoi":
        params["aoi_percentiles"] = stats.as_json()["values"]
    if "zarr" in config.formats:
        ids = json.dumps([c.chip_id for c in catalog.chips]).encode()
        params["zarr_chip_ids_sha256"] = hashlib.sha256(ids).hexdigest()
    return params


def prepare_store(
    config: RunConfig,
    catalog: AoiCatalog,
    layout: AoiLayout,
    writer: OutputWriter,
    stats: AoiStats,
    params: dict[str, Any],
    done: dict[str, ChipEntry],
) -> dict[str, ChipEntry]:
    """Create the Zarr store unless a resumable one with the same chips exists; returns
    the chips still done (none once the store is created anew)."""
    if "zarr" not in config.formats:
        return done
    chip_ids = [c.chip_id for c in catalog.chips]
    if done and writer.zarr_chip_ids(layout.zarr_url) == chip_ids:
        return done
    writer.create_zarr(
        layout.zarr_url,
        chip_ids=chip_ids,
        headers=stats.headers,
        bands=config.bands,
        has_labels=[chip.label is not None for chip in catalog.chips],
        mask_kinds=config.masks,
        attrs={"aoi": catalog.aoi, "params": params, "stats": stats.as_json()},
    )
    return {}


def aoi_cuts(config: RunConfig, stats: AoiStats) -> tuple[Any, ...] | None:
    """The AOI-wide stretch per output band, or None for a per-chip stretch."""
    if config.stretch_scope != "aoi":
        return None
    assert stats.values is not None
    return tuple(band_cut(*stats.values[b]) for b in config.bands)


@contextmanager
def kept_for_run(client: Client) -> Iterator[str]:
    """A new run token for one AOI's scan and write pass. What the workers kept under it
    (S3 chips' local copies: `chipcache`) and the write pass did not use (chips
    already done, tasks that ran elsewhere) is removed on every worker when the block
    ends, however it ends: nothing a run kept outlives it."""
    from sn5dask.io import chipcache

    run_token = uuid.uuid4().hex
    try:
        yield run_token
    finally:
        try:
            client.run(chipcache.drop_run, run_token, on_error="ignore")
        except Exception as exc:  # a lost scheduler: its workers' copies die with them
            log.debug("could not drop what run %s kept: %s", run_token, exc)


def scheduler_lost(client: Client, exc: BaseException, wait_s: float = 10.0) -> bool:
    """Whether a chip future failed because the client lost its scheduler. A comm error or
    a cancelled future can reach the client a moment before the client's own status
    changes, so such an error waits (up to `wait_s`) for the status to say it."""
    if client.status != "running":
        return True
    if not isinstance(exc, (OSError, CancelledError)):
        return False  # KilledWorker, or an error the worker raised: the chip's own failure
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        time.sleep(0.1)
        if client.status != "running":
            return True
    return False


def process_chips(
    client: Client,
    job: ChipJob,
    catalog: AoiCatalog,
    todo: list[ChipRecord],
    manifest: Manifest,
    writer: OutputWriter,
    reporter: Reporter,
    placement: dict[str, str] | None = None,
    workers_checked: WorkerVersions | None = None,
    folds: dict[str, int | None] | None = None,
) -> list[dict[str, float]]:
    """Compute the chip tasks, recording each result in the manifest as it finishes.
    `folds`: chip id -> its spatial fold (`chip_folds`);
    `placement`: chip id -> the worker holding the copy the scan kept (`chipcache`);
    `workers_checked`: the workers whose versions were compared (a joining one is too)."""
    index = {c.chip_id: i for i, c in enumerate(catalog.chips)}
    tasks = chip_tasks([(chip, index[chip.chip_id]) for chip in todo], job, placement, folds)
    # optimize_graph=False keeps each task's placement
    futures = client.compute([task for _, task in tasks], optimize_graph=False)
    chips_of = {future: chips for future, (chips, _) in zip(futures, tasks, strict=True)}
    workers_checked = workers_checked or WorkerVersions(client)
    timings: list[dict[str, float]] = []
    next_write = time.monotonic() + MANIFEST_EVERY_S
    lost_wait_s = 10.0  # how long a failed future may wait for the client to see a lost scheduler
    finished = False
    try:
        with workers_checked.watched(futures) as skewed:
            for future in as_completed(futures):
                chips = chips_of[future]
                try:
                    results = future.result()
                except VersionSkewError:  # the chip task found its worker's versions differ
                    raise
                except Exception as exc:  # the task never raises for a chip: a worker or the scheduler died
                    raise_found(skewed)  # or the version watch cancelled the tasks
                    if scheduler_lost(client, exc, wait_s=lost_wait_s):  # these were never tried
                        done = sum(1 for c in todo if c.chip_id in manifest.chips)
                        address = scheduler_address(job.config.scheduler) or "of this run"
                        raise SchedulerLostError(
                            f"the scheduler {address} was lost after {done} of {len(todo)} chips "
                            f"of {catalog.aoi} (the finished ones are recorded); run the same "
                            "command again to resume"
                        ) from None
                    lost_wait_s = 0.0  # waited once: the scheduler is up, no future waits again
                    if client.status == "running":  # a joined worker that cannot run sn5dask?
                        workers_checked.check_new_workers()
                    results = [
                        ChipResult.failed(
                            chip,
                            f"{chip.image}: worker lost while processing this chip "
                            f"({type(exc).__name__}: {exc}); re-run to retry it",
                        )
                        for chip in chips
                    ]
                # The future is kept (its result is small ChipResults) until the AOI is done:
                # released results vanish from dask's Progress pane, which would never fill.
                for result in results:
                    manifest.chips[result.chip_id] = result.entry
                    timings.append(result.timings)
                    reporter.chip_finished(catalog.aoi, result)
                if time.monotonic() >= next_write:
                    started = time.monotonic()
                    write_manifest(manifest, job.layout, writer, final=False)
                    took = time.monotonic() - started
                    next_write = time.monotonic() + max(MANIFEST_EVERY_S, MANIFEST_TIME_SHARE * took)
        finished = True
    finally:
        try:
            if not finished and client.status == "running":  # Ctrl-C or a client error:
                client.cancel([f for f in futures if not f.done()])  # stop what is queued
        finally:
            # Also on Ctrl-C or a lost scheduler: record what finished, so a re-run resumes.
            write_manifest(manifest, job.layout, writer, final=True)
        if client.status == "running":
            client.cancel(futures)  # releases every result on the cluster at once
    return timings


def chip_folds(catalog: AoiCatalog, stats: AoiStats, config: RunConfig) -> dict[str, int | None]:
    """Each labelled chip's spatial fold, from the centre of its footprint. Known after the
    scan (the chip tasks record it), computed over every labelled chip the scan read, so a
    resumed run gives the same."""
    centres = {
        chip.chip_id: stats.centres[chip.chip_id]
        for chip in catalog.chips
        if chip.label is not None and chip.chip_id in stats.centres
    }
    return dict(spatial_folds(centres, config.folds))


def write_items_of_resumed_chips(
    client: Client, job: ChipJob, chip_ids: list[str], manifest: Manifest, stats: AoiStats
) -> None:
    """STAC items of the chips an earlier run made, written again on the workers in
    batches (`chiptask.write_items_of_done_chips`)."""
    items = [
        (chip_id, manifest.chips[chip_id], stats.headers[chip_id], stats.footprints[chip_id])
        for chip_id in chip_ids
        if chip_id in stats.headers and stac.has_items(manifest.chips[chip_id], stats.footprints.get(chip_id))
    ]
    if not items:
        return
    batches = [items[i : i + ITEMS_PER_TASK] for i in range(0, len(items), ITEMS_PER_TASK)]
    client.gather(client.map(write_items_of_done_chips, batches, job=job, pure=False))
