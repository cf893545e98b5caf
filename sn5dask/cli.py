"""The `sn5dask` command line (typer). It parses and prints; the work is elsewhere.

Exit codes: 0 when no chip failed (warnings and skipped chips don't count), 1 when some
chip failed, 2 for bad arguments, no chips, a held lock or changed parameters.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from sn5dask.errors import ConfigError, LockError, ParamsChangedError, Sn5daskError

if TYPE_CHECKING:  # the CLI imports the pipeline only when a command runs it
    from sn5dask.config import RunConfig
    from sn5dask.runner.chiptask import ChipResult
    from sn5dask.runner.report import AoiSummary, RunSummary

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="SpaceNet 5 road-network training data (8-bit RGB + speed masks) on a Dask cluster.",
)
out_console = Console()
err_console = Console(stderr=True)
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C


class RichReporter:
    """Progress bar per AOI on stderr; the summary table goes to stdout at the end."""

    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[failed]} failed"),
            TimeElapsedColumn(),
            console=err_console,
            transient=False,
        )
        self.tasks: dict[str, TaskID] = {}
        #: chips finished (any status, this run or before) and chips in total, all AOIs
        self.finished = 0
        self.total = 0

    def cluster(self, dashboard_link: str | None, closes_with_run: bool) -> None:
        _startup_over()
        # A LocalCluster this run started goes away with it: say so, so nobody bookmarks it.
        lasts = " (until this run ends)" if closes_with_run else " (your cluster's; it stays up)"
        err_console.print(f"dask dashboard: {escape(str(dashboard_link))}{lasts}", highlight=False, soft_wrap=True)

    def waiting(self, message: str) -> None:
        err_console.print(escape(message), highlight=False, soft_wrap=True)

    def notice(self, message: str) -> None:
        err_console.print(f"warning: {escape(message)}", highlight=False, soft_wrap=True)

    def aoi_started(self, aoi: str, total: int, already_done: int, already_failed: int) -> None:
        if not self.tasks:
            self.progress.start()
        # Chips the scan could not read are failed before any chip task: counted as the
        # summary table counts them.
        self.tasks[aoi] = self.progress.add_task(
            aoi, total=total, completed=already_done + already_failed, failed=already_failed
        )
        self.finished += already_done + already_failed
        self.total += total

    def chip_finished(self, aoi: str, result: ChipResult) -> None:
        task = self.tasks[aoi]
        failed = self.progress.tasks[task].fields["failed"] + (result.status == "failed")
        self.progress.update(task, advance=1, failed=failed)
        self.finished += 1

    def aoi_finished(self, summary: AoiSummary) -> None:
        task = self.tasks.get(summary.aoi)
        if task is not None:
            self.progress.update(task, completed=sum(summary.counts.values()))

    def stop(self) -> None:
        if self.tasks:
            self.progress.stop()


class _InterruptedSyncNoise(logging.Filter):
    """Drops the one record distributed's Ctrl-C handling can log by mistake.

    `distributed.utils.sync` answers a KeyboardInterrupt by scheduling a `cancel` callback
    on its event loop. When the interrupt comes before the awaited coroutine has started
    (distributed 2026.8 only annotates the variable holding it), that callback fails with
    NameError and tornado logs it with a traceback, after the interrupt itself was handled
    (one line, exit 130). Any other record passes.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, NameError) and error.__traceback__ is not None:
            where = traceback.extract_tb(error.__traceback__)[-1]
            if where.name == "cancel" and where.filename.replace(os.sep, "/").endswith("/distributed/utils.py"):
                return False
        return True


def _setup_logging(verbose: bool) -> None:
    handler = RichHandler(console=err_console, show_path=False)
    handler.setLevel(logging.INFO if verbose else logging.WARNING)
    handler.addFilter(_InterruptedSyncNoise())
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s",
                        handlers=[handler])
    # Road-level warnings go to the manifest; on the terminal they would drown the progress.
    logging.getLogger("sn5dask").setLevel(logging.INFO if verbose else logging.ERROR)
    # distributed logs its cluster's life at INFO through its own loggers: keep the
    # terminal for the progress bar and real problems.
    _quiet_distributed(verbose)


def _quiet_distributed(verbose: bool) -> None:
    """distributed's loggers at ERROR (its client's at CRITICAL: a lost scheduler is said
    in one line by the run itself). Applied again once distributed is imported, because
    importing it sets its own loggers' levels from its config."""
    for name in ("distributed", "bokeh"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.ERROR)
    logging.getLogger("distributed.client").setLevel(logging.INFO if verbose else logging.CRITICAL)


@contextmanager
def _startup_without_collections() -> Iterator[None]:
    """The collector pauses while a run starts (around the `run` and `demo` commands):
    dask, distributed, the scheduler and its bokeh dashboard create some 10^5 objects that
    live as long as the process, and each full collection during their imports walked all
    of them again. `_startup_over` resumes it once the cluster is up; a command that
    ends before (a mistake in its options) resumes it here. Only in the `sn5dask`
    command's own process (`main`): code that calls `app` keeps its collector as it is."""
    global _paused_for_startup
    if _own_process and gc.isenabled():
        gc.disable()
        _paused_for_startup = True
    try:
        yield
    finally:
        _startup_over(freeze=False)


#: True while `_startup_without_collections` holds the collector paused.
_paused_for_startup = False
#: True when this process runs the `sn5dask` command itself (`main`), not a caller's code.
_own_process = False


def _startup_over(freeze: bool = True) -> None:
    """The cluster is up: what start-up made is frozen (later collections skip it) and the
    collector resumes for the run itself."""
    global _paused_for_startup
    if _paused_for_startup:
        if freeze:
            gc.freeze()
        gc.enable()
        _paused_for_startup = False


def _fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    # Every message is escaped: paths, reasons and exception text may hold "[...]", which
    # rich would take for markup and drop.
    err_console.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


@app.command()
def run(
    root: Annotated[Optional[str], typer.Argument(metavar="ROOT", show_default=False, help="Dataset root: a folder or s3://bucket/prefix holding AOI folders (required; or root: in --config)")] = None,
    out: Annotated[Optional[str], typer.Option("--out", show_default=False, help="Output folder or s3:// URL (required; or out: in --config)")] = None,
    aoi: Annotated[Optional[list[str]], typer.Option("--aoi", show_default="every AOI found", help="Only this AOI (repeatable)")] = None,
    scheduler: Annotated[Optional[str], typer.Option(show_default="DASK_SCHEDULER_ADDRESS, else a LocalCluster", help="Scheduler address, e.g. tcp://host:8786")] = None,
    workers: Annotated[Optional[int], typer.Option(show_default="one per core", help="LocalCluster worker processes")] = None,
    profile: Annotated[Optional[str], typer.Option(show_default="sn5dask", help="sn5dask or cresi (CRESI's pixels, bit for bit)")] = None,
    stretch: Annotated[Optional[str], typer.Option(show_default="the profile's: aoi for sn5dask, chip for cresi", help="Percentile scope: aoi or chip")] = None,
    percentiles: Annotated[Optional[str], typer.Option(show_default="2,98", help="The two stretch percentiles, low,high")] = None,
    bands: Annotated[Optional[str], typer.Option(show_default="5,3,2", help="Output bands of the image, 1-based")] = None,
    masks: Annotated[Optional[str], typer.Option(show_default="binary,continuous,binned,multichannel", help="Mask kinds to write, or none")] = None,
    buffer_m: Annotated[Optional[float], typer.Option("--buffer-m", show_default="2", help="Road buffer in metres")] = None,
    default_speed: Annotated[Optional[float], typer.Option(show_default="none: such roads only in binary", help="mph for roads without a usable speed")] = None,
    speed_field: Annotated[Optional[str], typer.Option(show_default="inferred_speed_mph, inferred_speed_mps, SN3 inference", help="Read each road's speed (mph) from this property")] = None,
    formats: Annotated[Optional[str], typer.Option(show_default="geotiff,zarr", help="Outputs to write: geotiff, zarr or both")] = None,
    compress: Annotated[Optional[str], typer.Option(show_default="deflate", help="GeoTIFF codec: deflate, zstd, lzw or none")] = None,
    max_label_mb: Annotated[Optional[float], typer.Option("--max-label-mb", show_default="64", help="Label files over this size fail their chip")] = None,
    folds: Annotated[Optional[int], typer.Option(show_default="5", help="Spatial folds in folds.csv (contiguous blocks of chips)")] = None,
    overwrite: Annotated[Optional[bool], typer.Option("--overwrite", show_default=False, help="Replace outputs made with other parameters")] = None,
    break_lock: Annotated[Optional[bool], typer.Option("--break-lock", show_default=False, help="Take an S3 output's lock left by a run whose client is gone")] = None,
    config: Annotated[Optional[Path], typer.Option(show_default=False, help="YAML run config with the same options (flags win)")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log every warning")] = False,
) -> None:
    """Make 8-bit RGB chips and road masks for every AOI under ROOT."""
    with _startup_without_collections():
        from sn5dask.config import load_config

        _setup_logging(verbose)
        try:
            cfg = load_config(
                config,
                root=root, out=out, aois=aoi or None, scheduler=scheduler, workers=workers,
                profile=profile, stretch=stretch, percentiles=percentiles, bands=bands,
                masks=masks, buffer_m=buffer_m, default_speed=default_speed,
                speed_field=speed_field, formats=formats, compress=compress,
                max_label_mb=max_label_mb, folds=folds, overwrite=overwrite, break_lock=break_lock,
            )  # fmt: skip
        except ConfigError as exc:
            raise _fail(str(exc)) from None
        from sn5dask.runner.forkserver import prepare_local_workers

        prepare_local_workers(cfg.scheduler, cfg.formats)  # the workers' imports overlap with the client's
        raise typer.Exit(_run_and_report(cfg))


def _run_and_report(cfg: RunConfig) -> int:
    from sn5dask.runner.pipeline import run as run_pipeline

    _quiet_distributed(logging.getLogger("sn5dask").level <= logging.INFO)
    reporter = RichReporter()
    started = time.perf_counter()
    try:
        summary = run_pipeline(cfg, reporter=reporter)
    except KeyboardInterrupt:
        reporter.stop()
        done = f"after {reporter.finished} of {reporter.total} chips" if reporter.total else "before any chip"
        raise _fail(
            f"interrupted {done}; run the same command again to resume", EXIT_INTERRUPTED
        ) from None
    except (ConfigError, LockError, ParamsChangedError) as exc:
        reporter.stop()
        raise _fail(str(exc)) from None
    except Sn5daskError as exc:
        reporter.stop()
        raise _fail(str(exc), 1) from None
    except OSError as exc:  # e.g. stats.json or the lock on a full or read-only disk
        reporter.stop()
        raise _fail(f"{exc.filename or cfg.out}: {exc.strerror or exc}", 1) from None
    finally:
        reporter.stop()
    _print_summary(summary, time.perf_counter() - started)
    return summary.exit_code


def _print_summary(summary: RunSummary, seconds: float) -> None:
    table = Table(title=f"sn5dask run ({seconds:.1f} s)")
    table.add_column("AOI", overflow="fold")
    for column in ("ok", "skipped", "failed", "made now", "seconds", "chips/s"):
        table.add_column(column, justify="right")
    for aoi in summary.aois:
        table.add_row(
            aoi.aoi,
            str(aoi.counts.get("ok", 0)),
            str(aoi.counts.get("skipped", 0)),
            str(aoi.counts.get("failed", 0)),
            str(aoi.processed),
            f"{aoi.seconds:.1f}",
            f"{aoi.chips_per_second:.2f}" if aoi.processed else "-",
        )
    out_console.print(table)
    for aoi in summary.aois:
        total = sum(aoi.counts.values())
        if total and not aoi.processed and not aoi.counts.get("failed"):
            out_console.print(f"{aoi.aoi}: all {total} chips already done (nothing to do)")
        out_console.print(f"{aoi.aoi} manifest: {escape(aoi.manifest)}", highlight=False, soft_wrap=True)
        for chip_id, reason in aoi.failures:
            out_console.print(
                f"[red]failed[/red] {aoi.aoi} {escape(chip_id)}: {escape(reason)}", highlight=False, soft_wrap=True
            )
        if aoi.orphan_labels:
            out_console.print(
                f"{aoi.aoi}: {len(aoi.orphan_labels)} label file(s) without an image "
                f"(listed in the manifest's orphan_labels)"
            )


@app.command()
def demo(
    out: Annotated[Path, typer.Argument(help="Where to write the synthetic input and the outputs")] = Path("sn5dask-demo"),
    chips: Annotated[int, typer.Option(min=1, help="Number of synthetic chips")] = 6,
    size: Annotated[int, typer.Option(min=16, help="Chip side in pixels")] = 1300,
    workers: Annotated[Optional[int], typer.Option(min=1, help="LocalCluster worker processes (default: one per core)")] = None,
    profile: Annotated[str, typer.Option(help="sn5dask or cresi")] = "sn5dask",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace outputs made with other parameters")] = False,
) -> None:
    """Generate a synthetic AOI (reused when already there and intact) and run the whole
    job on it on a LocalCluster."""
    with _startup_without_collections():
        from sn5dask.config import load_config
        from sn5dask.io.files import normalise_location
        from sn5dask.runner.forkserver import prepare_local_workers
        from sn5dask.synthetic import ensure_synthetic_aoi

        _setup_logging(False)
        out = Path(normalise_location(out))
        if out.exists() and not out.is_dir():
            raise _fail(f"{out} is a file, not a folder: give the demo a folder to write into")
        prepare_local_workers()  # the workers' imports overlap with making the synthetic AOI
        try:
            synthetic, reused = ensure_synthetic_aoi(out / "input", n_chips=chips, size=size)
        except OSError as exc:
            raise _fail(f"{out / 'input'}: cannot write the synthetic AOI ({exc.strerror or exc})") from None
        state = "reused (already there and intact)" if reused else "written"
        err_console.print(
            f"synthetic AOI {synthetic.aoi}: {len(synthetic.images)} chips {state} in {escape(str(out / 'input'))}",
            highlight=False, soft_wrap=True,
        )
        try:
            cfg = load_config(
                None, root=str(out / "input"), out=str(out / "output"), workers=workers,
                profile=profile, overwrite=overwrite,
            )  # fmt: skip
        except ConfigError as exc:
            raise _fail(str(exc)) from None
        code = _run_and_report(cfg)
        out_console.print(
            f"outputs in {escape(str(out / 'output' / synthetic.aoi))}: PS-RGB/, masks/, "
            f"{synthetic.aoi}.zarr, folds.csv, stats.json, manifest.json; "
            f"STAC catalog {escape(str(out / 'output' / 'catalog.json'))}",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(code)


@app.command()
def stats(
    root: Annotated[str, typer.Argument(help="Dataset root: a folder or s3://bucket/prefix")],
    aoi: Annotated[Optional[str], typer.Option(help="Only this AOI")] = None,
    bands: Annotated[str, typer.Option(help="Bands, 1-based")] = "5,3,2",
    percentiles: Annotated[str, typer.Option(help="Two percentiles")] = "2,98",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
    scheduler: Annotated[Optional[str], typer.Option(help="Scheduler address")] = None,
    workers: Annotated[Optional[int], typer.Option(help="LocalCluster worker processes")] = None,
) -> None:
    """Exact AOI-wide percentiles per band (from per-chip histograms)."""
    from sn5dask.api import aoi_percentiles
    from sn5dask.config import load_config
    from sn5dask.runner.cluster import get_client

    _setup_logging(False)
    try:
        cfg = load_config(None, root=root, out=".", bands=bands, percentiles=percentiles)
        with get_client(scheduler, workers) as client:
            result = aoi_percentiles(
                root, aoi, bands=cfg.bands, percentiles=cfg.percentiles, client=client
            )
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    if as_json:
        document = {name: {k: v for k, v in s.items() if k != "unreadable_chips"} for name, s in result.items()}
        typer.echo(json.dumps(document, indent=1))
    else:
        table = Table(title=f"AOI percentiles {cfg.percentiles[0]:g}/{cfg.percentiles[1]:g}")
        for column in ("AOI", "band", "low", "high", "valid pixels"):
            table.add_column(column)
        for name, s in result.items():
            for band, (low, high) in s["values"].items():
                table.add_row(name, band, f"{low}", f"{high}", f"{s['valid_pixels'][band]:,}")
        out_console.print(table)
    unreadable = {n: s["unreadable_chips"] for n, s in result.items() if s["unreadable_chips"]}
    for name, errors in unreadable.items():
        for chip_id, reason in errors.items():
            err_console.print(
                f"[red]unreadable[/red] {name} {escape(chip_id)}: {escape(reason)}", highlight=False, soft_wrap=True
            )
    raise typer.Exit(1 if unreadable else 0)


@app.command()
def validate(
    out: Annotated[str, typer.Argument(help="An sn5dask output folder or s3:// URL")],
    scheduler: Annotated[Optional[str], typer.Option(show_default="checks run here, one after another", help="Run the per-chip checks on this cluster, e.g. tcp://host:8786")] = None,
    workers: Annotated[Optional[int], typer.Option(min=1, show_default=False, help="Run them on a LocalCluster of this many processes")] = None,
) -> None:
    """Check every output against the manifest and the source georeferencing."""
    from sn5dask.outputs.validate import validate_output

    _setup_logging(False)
    try:
        if scheduler is None and workers is None:
            report = validate_output(out)
        else:
            from sn5dask.runner.cluster import get_client
            from sn5dask.runner.versioncheck import WorkerVersions

            if scheduler is not None:
                from sn5dask.config import check_scheduler_address

                check_scheduler_address(scheduler, "--scheduler")
            with get_client(scheduler, workers) as client:
                WorkerVersions(client).check_new_workers()  # a skewed worker would hang a task
                _check_workers_see(client, out)
                report = validate_output(out, client=client)
    except Sn5daskError as exc:
        raise _fail(str(exc)) from None
    for problem in report.problems:
        out_console.print(f"[red]problem[/red] {escape(problem)}", highlight=False, soft_wrap=True)
    verdict = "OK" if report.ok else f"{len(report.problems)} problem(s)"
    out_console.print(
        f"validated {report.checked_chips} chips, {report.checked_files} files: {verdict}"
    )
    raise typer.Exit(0 if report.ok else 1)


def _check_workers_see(client: Any, out: str) -> None:
    """A local OUT that a cluster's workers do not see would be reported as every file
    missing: refuse it in one line instead."""
    from sn5dask.io import files
    from sn5dask.runner.preflight import workers_not_seeing

    out = files.normalise_location(out)
    if not files.is_local(out):
        return
    blind, total = workers_not_seeing(client, out)
    if blind:
        raise ConfigError(
            f"{out} is a folder on this machine that {len(blind)} of {total} workers "
            f"(e.g. {blind[0]}) do not see: validate an s3:// URL, or a folder every worker mounts"
        )


@app.command()
def dashboard(
    out: Annotated[str, typer.Argument(help="An sn5dask output folder or s3:// URL (it may not exist yet)")],
    root: Annotated[Optional[str], typer.Option(show_default=False, help="Dataset root, to start runs from the dashboard")] = None,
    scheduler: Annotated[Optional[str], typer.Option(show_default="DASK_SCHEDULER_ADDRESS, else a LocalCluster", help="Scheduler for runs started from the dashboard")] = None,
    workers: Annotated[Optional[int], typer.Option(min=1, show_default="one per core", help="LocalCluster worker processes")] = None,
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port on 127.0.0.1")] = 5006,
) -> None:
    """Serve the interactive dashboard of OUT on 127.0.0.1 (live while a run writes there)."""
    _setup_logging(False)
    if scheduler is not None:
        from sn5dask.config import check_scheduler_address

        try:
            check_scheduler_address(scheduler, "--scheduler")
        except ConfigError as exc:
            raise _fail(str(exc)) from None
    try:
        from sn5dask.dashboard import serve
    except ImportError as exc:
        raise _fail(f"the dashboard needs its extra ({exc.name} is missing): pip install 'sn5dask[dashboard]'") from None
    err_console.print(f"sn5dask dashboard: http://127.0.0.1:{port}/ (Ctrl-C stops it)", highlight=False)
    try:
        serve(out, root=root, scheduler=scheduler, port=port, workers=workers)
    except KeyboardInterrupt:
        raise typer.Exit(0) from None
    except OSError as exc:
        raise _fail(f"port {port}: {exc.strerror or exc}; choose another with --port") from None


@app.command()
def versions() -> None:
    """Print the versions of sn5dask and its key libraries (for bug reports)."""
    from sn5dask.versions import show_versions

    show_versions()


def main() -> None:
    """The `sn5dask` command (console script, `python -m sn5dask.cli`): `app` in a process
    of its own, whose garbage collector the CLI may tune (`_startup_without_collections`).
    On the way out, what the interpreter would collect (every module of dask, distributed
    and bokeh) is left to the OS: Python's last collection walked them all after the summary
    was printed (the exit phase of `benchmarks/bench_phases.py`)."""
    global _own_process
    _own_process = True
    try:
        app()
    finally:
        gc.freeze()


if __name__ == "__main__":  # pragma: no cover
    main()
