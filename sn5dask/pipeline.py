"""The run: per AOI, a scan graph (histograms -> tree sum -> percentiles), then one task
per chip (read, stretch, burn, write), with resume, fault isolation and progress.

Graph shape, and why:
- The scan pass is one dask graph of `scan_chip` tasks summed pairwise in a tree
  (`combine_scans`, fan-in 8) and finalized on a worker, submitted at once so dask's
  ordering combines histograms as soon as they exist (memory stays flat) and the client
  receives only percentiles and per-chip headers.
- The write pass is one independent task per chip: each chip is read once more, and
  nothing but a small `ChipResult` comes back, so the client never holds pixels.
- Results are consumed with `as_completed`, so the manifest grows as chips finish and an
  interrupted run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Protocol

import dask
from distributed import Client, as_completed

from sn5dask import storage
from sn5dask.aoistats import AoiStats, combine_scans, finalize_scan, scan_chip
from sn5dask.catalog import AoiCatalog, ChipRecord, discover
from sn5dask.chiptask import ChipJob, ChipResult, process_chip
from sn5dask.cluster import get_client, prepare_local_workers, warm_up_workers
from sn5dask.config import RunConfig
from sn5dask.errors import ParamsChangedError, Sn5daskError
from sn5dask.manifest import MANIFEST_NAME, STATS_NAME, Manifest, done_chips, read_manifest
from sn5dask.stretch import band_cut
from sn5dask.versions import versions

log = logging.getLogger("sn5dask")
TREE_FAN_IN = 8
MANIFEST_EVERY_S = 2.0


class Reporter(Protocol):
    """What the run tells its caller (the CLI draws it with rich; the API logs it)."""

    def cluster(self, dashboard_link: str | None) -> None: ...
    def aoi_started(self, aoi: str, total: int, already_done: int) -> None: ...
    def chip_finished(self, aoi: str, result: ChipResult) -> None: ...
    def aoi_finished(self, summary: AoiSummary) -> None: ...


class LogReporter:
    """Default reporter: one log line per AOI and per failed chip."""

    def cluster(self, dashboard_link: str | None) -> None:
        log.info("dask dashboard: %s", dashboard_link)

    def aoi_started(self, aoi: str, total: int, already_done: int) -> None:
        log.info("%s: %d chips (%d already done)", aoi, total, already_done)

    def chip_finished(self, aoi: str, result: ChipResult) -> None:
        if result.status == "failed":
            log.warning("%s %s failed: %s", aoi, result.chip_id, result.reason)

    def aoi_finished(self, summary: AoiSummary) -> None:
        log.info("%s: %s", summary.aoi, summary.counts)


@dataclass
class AoiSummary:
    aoi: str
    manifest: str
    counts: dict[str, int]
    seconds: float
    processed: int
    scan_seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)
    orphan_labels: list[str] = field(default_factory=list)
    timings: list[dict[str, float]] = field(default_factory=list)

    @property
    def chips_per_second(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0


@dataclass
class RunSummary:
    aois: list[AoiSummary]
    dashboard_link: str | None = None

    @property
    def failed(self) -> int:
        return sum(a.counts.get("failed", 0) for a in self.aois)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


def run(
    config: RunConfig, client: Client | None = None, reporter: Reporter | None = None
) -> RunSummary:
    """Run the whole job for every AOI under `config.root` (the CLI's `sn5dask run`)."""
    reporter = reporter or LogReporter()
    if client is None:
        prepare_local_workers(config.scheduler)  # its imports overlap with discovery
    catalogs = discover(config.root, list(config.aois) or None)
    storage.makedirs(config.out)
    context = nullcontext(client) if client is not None else get_client(
        config.scheduler, config.workers
    )
    with context as active:
        assert active is not None
        warm_up_workers(active)
        reporter.cluster(active.dashboard_link)
        summaries = [run_aoi(active, config, catalog, reporter) for catalog in catalogs]
        return RunSummary(summaries, active.dashboard_link)


def run_aoi(
    client: Client, config: RunConfig, catalog: AoiCatalog, reporter: Reporter
) -> AoiSummary:
    started = time.perf_counter()
    out_aoi = storage.join(config.out, catalog.aoi)
    storage.makedirs(out_aoi)
    with storage.RunLock(out_aoi):
        storage.remove_partials(out_aoi)  # left by a run that was killed mid-write
        previous = read_manifest(out_aoi)
        with_histogram = config.stretch_scope == "aoi"
        scan_started = time.perf_counter()
        stats = scan_aoi(client, catalog.chips, config, with_histogram)
        scan_seconds = time.perf_counter() - scan_started
        params = _aoi_params(config, catalog, stats)
        _check_params(previous, params, config, out_aoi)

        zarr_url = storage.join(out_aoi, f"{catalog.aoi}.zarr") if "zarr" in config.formats else None
        done = {} if config.overwrite else done_chips(previous, params, out_aoi)
        chip_ids = [c.chip_id for c in catalog.chips]
        if zarr_url is not None:
            from sn5dask import store  # zarr is only imported by runs that write the store

            if not done or store.store_chip_ids(zarr_url) != chip_ids:
                store.create_store(
                    zarr_url,
                    chip_ids=chip_ids,
                    headers=stats.headers,
                    n_bands=len(config.bands),
                    mask_kinds=config.masks,
                    attrs={"aoi": catalog.aoi, "params": params, "stats": stats.as_json()},
                )
                done = {}
        _write_stats(out_aoi, catalog, config, stats, params)

        manifest = Manifest(
            catalog.aoi, params, root=config.root, orphan_labels=catalog.orphan_labels
        )
        for chip in catalog.chips:
            if chip.chip_id in done:
                manifest.chips[chip.chip_id] = done[chip.chip_id]
            elif chip.chip_id in stats.errors:
                manifest.chips[chip.chip_id] = ChipResult(
                    chip.chip_id, "failed", stats.errors[chip.chip_id], chip.image, chip.label
                ).manifest_entry()
        todo = [c for c in catalog.chips if c.chip_id not in manifest.chips]
        reporter.aoi_started(catalog.aoi, len(catalog.chips), len(done))
        timings = _process_chips(client, config, catalog, stats, out_aoi, zarr_url, todo,
                                 manifest, reporter)
        manifest.chips = {c.chip_id: manifest.chips[c.chip_id] for c in catalog.chips}
        _write_manifest(manifest, out_aoi, final=True)

    counts = manifest.as_json()["counts"]
    summary = AoiSummary(
        aoi=catalog.aoi,
        manifest=storage.join(out_aoi, MANIFEST_NAME),
        counts=counts,
        seconds=time.perf_counter() - started,
        processed=len(todo),
        scan_seconds=scan_seconds,
        failures=[(cid, e["reason"]) for cid, e in manifest.chips.items() if e["status"] == "failed"],
        orphan_labels=catalog.orphan_labels,
        timings=timings,
    )
    reporter.aoi_finished(summary)
    return summary


def scan_tree(
    chips: Sequence[ChipRecord], bands: Sequence[int], with_histogram: bool, use_nodata: bool = True
) -> Any:
    """Delayed `AoiScan` of all chips: `scan_chip` per chip summed by a tree of
    `combine_scans` (fan-in 8), so no task ever holds more than 8 partial sums."""
    scan = dask.delayed(scan_chip, pure=False)
    combine = dask.delayed(combine_scans, pure=False)
    level = [scan(chip, tuple(bands), with_histogram, use_nodata) for chip in chips]
    while len(level) > 1:
        level = [combine(*level[i : i + TREE_FAN_IN]) for i in range(0, len(level), TREE_FAN_IN)]
    return level[0]


def scan_graph(
    chips: Sequence[ChipRecord],
    bands: Sequence[int],
    percentiles: Sequence[float],
    with_histogram: bool,
    use_nodata: bool = True,
) -> Any:
    """The scan pass as one delayed object that computes to `AoiStats` (the tree, then
    `finalize_scan` on a worker: only percentiles and headers reach the client)."""
    return dask.delayed(finalize_scan, pure=False)(
        scan_tree(chips, bands, with_histogram, use_nodata),
        tuple(bands),
        tuple(percentiles),
        with_histogram,
    )


def scan_aoi(
    client: Client, chips: Sequence[ChipRecord], config: RunConfig, with_histogram: bool
) -> AoiStats:
    """First pass: chip headers (and histograms for AOI stretch), reduced as a tree."""
    graph = scan_graph(
        chips, config.bands, config.percentiles, with_histogram, config.profile != "cresi"
    )
    return client.compute(graph).result()


def _process_chips(
    client: Client,
    config: RunConfig,
    catalog: AoiCatalog,
    stats: AoiStats,
    out_aoi: str,
    zarr_url: str | None,
    todo: list[ChipRecord],
    manifest: Manifest,
    reporter: Reporter,
) -> list[dict[str, float]]:
    cuts = None
    if config.stretch_scope == "aoi":
        assert stats.values is not None
        cuts = tuple(band_cut(*stats.values[b]) for b in config.bands)
    job = ChipJob(config=config, out_aoi=out_aoi, aoi_cuts=cuts, zarr_url=zarr_url)
    index = {c.chip_id: i for i, c in enumerate(catalog.chips)}
    futures = {
        client.submit(process_chip, chip, job, index[chip.chip_id], pure=False): chip
        for chip in todo
    }
    timings: list[dict[str, float]] = []
    last_write = time.monotonic()
    finished = False
    try:
        for future in as_completed(futures):
            chip = futures[future]
            try:
                result = future.result()
            except Exception as exc:  # the task itself never raises: the worker died
                result = ChipResult(
                    chip.chip_id,
                    "failed",
                    f"{chip.image}: worker lost while processing this chip "
                    f"({type(exc).__name__}: {exc}); re-run to retry it",
                    chip.image,
                    chip.label,
                )
            future.release()
            manifest.chips[chip.chip_id] = result.manifest_entry()
            timings.append(result.timings)
            reporter.chip_finished(catalog.aoi, result)
            if time.monotonic() - last_write > MANIFEST_EVERY_S:
                _write_manifest(manifest, out_aoi, final=False)
                last_write = time.monotonic()
        finished = True
    finally:
        if not finished:  # Ctrl-C or an error on the client: stop the chips still queued
            client.cancel([f for f in futures if not f.done()])
        # Also on Ctrl-C: record what finished, so a re-run resumes from here.
        _write_manifest(manifest, out_aoi, final=True)
    return timings


def _write_manifest(manifest: Manifest, out_aoi: str, *, final: bool) -> None:
    """Interim writes may fail (a full disk, a flaky bucket): the run goes on and the next
    write retries. The final write must succeed, else the run stops with a clear error."""
    try:
        manifest.write(out_aoi)
    except OSError as exc:
        path = storage.join(out_aoi, MANIFEST_NAME)
        if final:
            raise Sn5daskError(
                f"{path}: cannot write the run manifest ({exc}); outputs written so far are "
                "complete, but a re-run cannot know which: free space and re-run"
            ) from None
        log.warning("%s: cannot write the manifest yet (%s); will retry", path, exc)


def _aoi_params(config: RunConfig, catalog: AoiCatalog, stats: AoiStats) -> dict[str, Any]:
    params = config.output_params()
    if config.stretch_scope == "aoi":
        params["aoi_percentiles"] = stats.as_json()["values"]
    if "zarr" in config.formats:
        ids = json.dumps([c.chip_id for c in catalog.chips]).encode()
        params["zarr_chip_ids_sha256"] = hashlib.sha256(ids).hexdigest()
    return params


def _check_params(
    previous: dict[str, Any] | None, params: dict[str, Any], config: RunConfig, out_aoi: str
) -> None:
    if previous is None or config.overwrite or previous.get("params") == params:
        return
    old = previous.get("params") or {}
    changes = [
        f"{key}: {old.get(key)!r} -> {params.get(key)!r}"
        for key in sorted(set(old) | set(params))
        if old.get(key) != params.get(key)
    ]
    hint = ""
    if "aoi_percentiles" in "".join(changes) or "zarr_chip_ids" in "".join(changes):
        hint = " (the AOI's chips changed since that run)"
    raise ParamsChangedError(
        f"{storage.join(out_aoi, MANIFEST_NAME)}: outputs were made with other parameters"
        f"{hint}: {'; '.join(changes)}. Re-run with --overwrite to replace them, or "
        "choose another --out"
    )


def _write_stats(
    out_aoi: str, catalog: AoiCatalog, config: RunConfig, stats: AoiStats, params: dict[str, Any]
) -> None:
    document = {
        "aoi": catalog.aoi,
        **stats.as_json(),
        "stretch": config.stretch_scope,
        "n_chips": len(catalog.chips),
        "unreadable_chips": stats.errors,
        "params": params,
        "versions": versions(),
        "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    storage.write_json_atomic(storage.join(out_aoi, STATS_NAME), document)
