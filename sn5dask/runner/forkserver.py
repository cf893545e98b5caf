"""How the LocalCluster sn5dask starts makes its worker processes.

distributed starts worker processes with the start method in dask config
(`distributed.worker.multiprocessing-method`). sn5dask asks for `forkserver`: workers are
forked from Python's fork server, a single-threaded process (so safe to fork) that has
imported distributed and the chip-task code once (`multiprocessing.set_forkserver_preload`).
Spawned workers would each import distributed, GDAL, GEOS and PROJ bindings again.
`sn5dask.worker-start-method: spawn` in dask config (or
DASK_SN5DASK__WORKER_START_METHOD=spawn) gives dask's default back.

The server is started early (`start_worker_server`, the CLI's first step), so its imports
run on another core while the client imports its own and starts the scheduler. Everything
here is dask config and the public names of the standard library's multiprocessing.
"""

from __future__ import annotations

import copy
import multiprocessing
import multiprocessing.forkserver
import os
import signal
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import dask.config

PRE_SPAWN_KEY = "distributed.nanny.pre-spawn-environ"
_TRIM_KEY = f"{PRE_SPAWN_KEY}.MALLOC_TRIM_THRESHOLD_"
_DISTRIBUTED_DEFAULT_TRIM = "65536"
METHOD_KEY = "distributed.worker.multiprocessing-method"
#: dask config key: how the LocalCluster sn5dask starts makes its worker processes.
START_METHOD_KEY = "sn5dask.worker-start-method"
#: What the fork server imports once, so that every worker forked from it starts with
#: them: distributed, the chip tasks, and what those import only when they first run
#: (the client needs none of it): rasterio/GDAL, the mask burner with shapely, pyproj
#: and odc-geo (each worker imported them in its first task before), and zarr for the
#: store the default formats write (imported in a worker's first write task otherwise).
WORKER_MODULES = (
    "distributed", "sn5dask.runner.aoistats", "sn5dask.runner.chiptask",
    "sn5dask.io.raster", "sn5dask.io.burn",
)  # fmt: skip
#: And for a run that writes Zarr stores (zarr is left out of a GeoTIFF-only run's workers).
ZARR_MODULES = ("sn5dask.io.zarrstore",)
#: Preloaded first and last: the collector paused while the others are imported, then
#: what they made frozen (see their docstrings).
PAUSE_MODULE, FREEZE_MODULE = "sn5dask.runner.gcpause", "sn5dask.runner.frozen"

#: The variables every local worker starts with unless the user's dask config
#: (`distributed.nanny.pre-spawn-environ`) says otherwise: distributed's own defaults,
#: one thread for OpenMP and BLAS, known here before distributed is imported (so the fork
#: server can start first thing, its imports beside the client's).
WORKER_START_ENVIRON = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def worker_environment_overrides() -> dict[str, object]:
    """dask config for the workers sn5dask starts itself.

    distributed sets MALLOC_TRIM_THRESHOLD_=65536 in every worker it spawns, so glibc hands
    freed memory straight back to the OS and each chip's large arrays are page-faulted
    afresh: fewer chips per second than with glibc's own default. Unset it (distributed's
    documented `None`) unless the user chose another value, in dask config or as the
    environment variable.
    """
    if "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return {}
    if str(dask.config.get(_TRIM_KEY, _DISTRIBUTED_DEFAULT_TRIM)) != _DISTRIBUTED_DEFAULT_TRIM:
        return {}
    return {_TRIM_KEY: None}


def worker_start_method() -> str:
    """`forkserver` (default where the platform has it) or `spawn` (dask's default)."""
    method = str(dask.config.get(START_METHOD_KEY, "forkserver"))
    if method not in ("forkserver", "spawn"):
        raise ValueError(f"{START_METHOD_KEY} must be forkserver or spawn, not {method!r}")
    if method not in multiprocessing.get_all_start_methods():
        return "spawn"
    return method


def worker_process_environ() -> dict[str, str]:
    """The variables a worker process must have from its first instruction:
    `WORKER_START_ENVIRON` under the user's `distributed.nanny.pre-spawn-environ`, with
    sn5dask's overrides, where the client's environment does not already set them. The
    same whether distributed is imported yet or not."""
    config = copy.deepcopy(dask.config.config)
    dask.config.set(worker_environment_overrides(), config=config)
    configured = {**WORKER_START_ENVIRON, **dask.config.get(PRE_SPAWN_KEY, {}, config=config)}
    return {k: os.environ.get(k, str(v)) for k, v in configured.items() if v is not None}


@contextmanager
def environ(extra: Mapping[str, str]) -> Iterator[None]:
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
def sigint_ignored() -> Iterator[None]:
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


def start_worker_server(with_zarr: bool = True) -> None:
    """Start the fork server for local workers now, so its imports overlap with whatever
    the client does next (its own imports, discovery, the scheduler's start). Idempotent;
    a no-op with the spawn method.

    The server is started with the workers' variables (`worker_process_environ`) and
    SIGINT ignored, which every worker then inherits; the client's own `os.environ` is
    left as it was. Only what a process reads as it starts (allocator, thread pools) comes
    from the server's environment: the LocalCluster hands each worker the client's
    current variables too. (`multiprocessing.forkserver.ensure_running` returns at once;
    the server preloads while the client goes on.)
    """
    if worker_start_method() != "forkserver":
        return
    server_environ = worker_process_environ()
    preload = list(WORKER_MODULES) + (list(ZARR_MODULES) if with_zarr else [])
    main = sys.modules.get("__main__")
    main_spec = getattr(main, "__spec__", None)
    if main_spec is not None and main_spec.name.startswith("sn5dask."):  # python -m sn5dask.cli
        preload.append(main_spec.name)
        # runpy then warns, in every worker, that the module it runs again is imported
        # already (which is the point): a filter for that one message, not for the user's.
        noise = f"ignore:'{main_spec.name}' found in sys.modules:RuntimeWarning"
        given = os.environ.get("PYTHONWARNINGS")
        server_environ["PYTHONWARNINGS"] = f"{given},{noise}" if given else noise
    elif "sn5dask.cli" in sys.modules:  # the `sn5dask` console script
        preload.append("sn5dask.cli")
    # Each worker runs the client's main module again as it starts (multiprocessing's
    # forkserver does, on Python 3.11 and 3.12 without the server's own copy of it:
    # CPython gh-126631). For the CLI that is sn5dask.cli with typer and rich; preloaded
    # here, a worker finds them imported and only runs the module body.
    multiprocessing.set_forkserver_preload([PAUSE_MODULE, *preload, FREEZE_MODULE])
    with environ(server_environ), sigint_ignored():
        multiprocessing.forkserver.ensure_running()


def scheduler_address(scheduler: str | None = None) -> str | None:
    """The scheduler to use: the argument, else DASK_SCHEDULER_ADDRESS / dask config."""
    return (
        scheduler
        or os.environ.get("DASK_SCHEDULER_ADDRESS")
        or dask.config.get("scheduler-address", None)
    )


def prepare_local_workers(scheduler: str | None = None, formats: tuple[str, ...] = ("geotiff", "zarr")) -> None:
    """Start the fork server now when this run will start its own LocalCluster
    (`formats`: the outputs the run writes, which decide what its workers import)."""
    if not scheduler_address(scheduler):
        start_worker_server(with_zarr="zarr" in formats)
