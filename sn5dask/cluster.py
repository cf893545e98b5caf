"""Get a `distributed` client: an embedded LocalCluster, or an existing scheduler.

An address comes from `--scheduler`, else `DASK_SCHEDULER_ADDRESS` / dask's own
`scheduler-address` config (dask-cloudprovider, the dask-kubernetes operator, Coiled and
dask-gateway all hand out such an address). Everything else (memory limits, retries,
timeouts) is dask configuration, not sn5dask's.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.forkserver
import os
import signal
import threading
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import dask.config
from distributed import Client, LocalCluster, fire_and_forget

log = logging.getLogger("sn5dask")
_TRIM_KEY = "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"
_DISTRIBUTED_DEFAULT_TRIM = "65536"
_METHOD_KEY = "distributed.worker.multiprocessing-method"
_PRE_SPAWN_KEY = "distributed.nanny.pre-spawn-environ"
#: dask config key: how the LocalCluster sn5dask starts makes its worker processes.
START_METHOD_KEY = "sn5dask.worker-start-method"
#: What the fork server imports once, so that every worker forked from it starts with
#: them: the client's main module (which multiprocessing otherwise re-imports in every
#: worker, as spawn does), distributed and the chip-task code (rasterio/GDAL, shapely,
#: pyproj, odc-geo).
WORKER_MODULES = ("__main__", "distributed", "sn5dask.aoistats", "sn5dask.chiptask")


def worker_environment_overrides() -> dict[str, object]:
    """dask config for the workers sn5dask starts itself.

    distributed sets MALLOC_TRIM_THRESHOLD_=65536 in every worker it spawns, so glibc hands
    freed memory straight back to the OS and each chip's large arrays are page-faulted
    afresh: measured 17-20 % fewer chips/s than glibc's own default (+15 MiB peak RSS per
    worker; benchmarks/README.md). Unset it (distributed's documented `None`) unless the
    user chose a value, in dask config or as the environment variable.
    """
    if "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return {}
    if str(dask.config.get(_TRIM_KEY, None)) != _DISTRIBUTED_DEFAULT_TRIM:
        return {}
    return {_TRIM_KEY: None}


def worker_start_method() -> str:
    """`forkserver` (default where the platform has it) or `spawn` (dask's default).

    Spawned workers each start a fresh interpreter and import distributed, GDAL, GEOS and
    PROJ bindings again (~0.9 s of CPU per worker, benchmarks/README.md). Forked from a
    server that imported them once, they start in milliseconds. The server is
    single-threaded when it forks, unlike the client, which is why `fork` itself is never
    used. Set `sn5dask.worker-start-method: spawn` in dask config (or
    DASK_SN5DASK__WORKER_START_METHOD=spawn) to get dask's default back.
    """
    method = str(dask.config.get(START_METHOD_KEY, "forkserver"))
    if method not in ("forkserver", "spawn"):
        raise ValueError(f"{START_METHOD_KEY} must be forkserver or spawn, not {method!r}")
    if method not in multiprocessing.get_all_start_methods():
        return "spawn"
    return method


def worker_process_environ() -> dict[str, str]:
    """The variables a worker process must have from its first instruction (one thread for
    OpenMP/BLAS, ...): distributed's `nanny.pre-spawn-environ` with sn5dask's overrides,
    where the client's environment does not already set them."""
    with dask.config.set(worker_environment_overrides()):
        # (a copy: dask restores the same dict in place when the context exits)
        configured = dict(dask.config.get(_PRE_SPAWN_KEY))
    return {k: os.environ.get(k, str(v)) for k, v in configured.items() if v is not None}


@contextmanager
def _environ(extra: Mapping[str, str]) -> Iterator[None]:
    """`os.environ` with `extra` for the duration of the block (a process started inside
    inherits it), then exactly as it was: the caller's environment is not changed."""
    saved = {key: os.environ.get(key) for key in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored while worker processes start, so they keep ignoring it: a Ctrl-C in
    the terminal reaches the whole process group, and only the client should act on it
    (it records what finished and closes the cluster). Without this each worker prints a
    KeyboardInterrupt traceback. Python keeps an inherited SIG_IGN, and the fork server
    hands its children the disposition it started with. (Only the main thread may set
    signal handlers; elsewhere this does nothing.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def start_worker_server() -> None:
    """Start the fork server for local workers now, so its imports overlap with whatever
    the client does next (discovery, the scheduler's own start). Idempotent and cheap
    once running; a no-op with the spawn method.

    The server's environment is the one its workers start with, so it is started with
    `worker_process_environ()` added; the client's own `os.environ` is left as it was.
    Only what a process reads as it starts (allocator, thread pools) comes from the
    server's environment: `get_client` hands each worker the client's current variables.
    """
    if worker_start_method() != "forkserver":
        return
    multiprocessing.set_forkserver_preload(list(WORKER_MODULES))
    with _environ(worker_process_environ()), _sigint_ignored():
        multiprocessing.forkserver.ensure_running()


def prepare_local_workers(scheduler: str | None = None) -> None:
    """Start the fork server now when this run will start its own LocalCluster."""
    if not scheduler_address(scheduler):
        start_worker_server()


def scheduler_address(scheduler: str | None = None) -> str | None:
    """The scheduler to use: the argument, else DASK_SCHEDULER_ADDRESS / dask config."""
    return (
        scheduler
        or os.environ.get("DASK_SCHEDULER_ADDRESS")
        or dask.config.get("scheduler-address", None)
    )


def default_worker_count() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


@contextmanager
def get_client(scheduler: str | None = None, workers: int | None = None) -> Iterator[Client]:
    """A client for the run; a LocalCluster it starts is closed on exit.

    The LocalCluster has one single-threaded worker process per core: the per-chip work
    (histograms, GEOS buffering, DEFLATE) holds the GIL often enough that processes beat
    threads, and a chip's memory is then bounded per process.
    """
    address = scheduler_address(scheduler)
    if address:
        client = Client(address)
        try:
            yield client
        finally:
            client.close()
        return
    n_workers = workers or default_worker_count()
    start_worker_server()
    process_environ = worker_process_environ()
    # distributed's nanny would write its pre-spawn variables into this process's
    # os.environ (and leave them there); sn5dask hands them to the workers instead: set
    # only while the worker processes start, and as each worker's `env`.
    # No work stealing: the write task of an S3 chip is placed on the worker holding the
    # scan's local copy (`chipcache`), and a steal would download the chip a second time.
    # Chips without a copy are queued on the scheduler, where nothing is stolen anyway.
    local_config = {
        _PRE_SPAWN_KEY: {},
        _METHOD_KEY: worker_start_method(),
        "distributed.scheduler.work-stealing": False,
    }
    with dask.config.set(local_config):
        with _environ(process_environ), _sigint_ignored(), warnings.catch_warnings():
            # With 8787 taken (a notebook's cluster, another run), distributed warns in
            # four lines and serves the dashboard elsewhere; the link sn5dask prints
            # names the port actually used.
            warnings.filterwarnings("ignore", message="Port .* is already in use", category=UserWarning)
            cluster = LocalCluster(
                n_workers=n_workers,
                threads_per_worker=1,
                processes=True,
                silence_logs=logging.ERROR,
                dashboard_address=dask.config.get("distributed.dashboard.address", ":8787"),
                # Forked workers inherit the fork server's environment, which may be older
                # than the client's (AWS_*, GDAL_* set since): each worker applies the
                # client's current variables first thing, as spawned workers would have.
                env={**os.environ, **process_environ},
            )
        with cluster, Client(cluster) as client:
            yield client


def warm_up_workers(client: Client) -> None:
    """Have every current worker import the chip-task code now, while the client is still
    discovering chips and building the graph (fire and forget).

    A spawned worker (a remote cluster, or `worker-start-method: spawn`) otherwise pays
    ~0.5 s of imports inside its first scan and chip tasks, and even a forked one reads
    PROJ's UTM table (~0.1 s) in its first chip task, while the other queues wait on it
    (benchmarks/README.md). The task runs in the worker's task thread ahead of the chip
    tasks; on a warm worker it is a no-op.
    """
    for address in client.scheduler_info(n_workers=-1)["workers"]:
        fire_and_forget(
            client.submit(
                # allow_other_workers: a worker that left meanwhile must not leave an
                # unrunnable task behind on a long-lived cluster (elsewhere it is a no-op)
                prepare_worker, workers=[address], allow_other_workers=True, pure=False, priority=1
            )
        )


def prepare_worker() -> None:
    """Everything a worker process needs before its first chip, in one place: the chip-task
    imports, GDAL set-up and PROJ's UTM table. Idempotent (cheap on a warm worker)."""
    from sn5dask import aoistats, chiptask, masks, raster  # noqa: F401

    with raster.gdal_env("local"):
        masks.utm_crs_containing(0.0, 0.0)  # reads PROJ's UTM table once per process
