"""The fork server local workers are forked from, and the environment they start with.

Importing this module does not import distributed (≈0.7 s): the CLI starts the server
first thing, so the server's imports (distributed, GDAL, GEOS, PROJ bindings) run on
another core while the client still imports its own. `cluster.get_client` then forks its
workers from it in milliseconds.
"""

from __future__ import annotations

import copy
import importlib.util
import multiprocessing
import multiprocessing.forkserver
import multiprocessing.process
import multiprocessing.spawn
import os
import signal
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import dask.config
import yaml

PRE_SPAWN_KEY = "distributed.nanny.pre-spawn-environ"
_TRIM_KEY = f"{PRE_SPAWN_KEY}.MALLOC_TRIM_THRESHOLD_"
_DISTRIBUTED_DEFAULT_TRIM = "65536"
#: dask config key: how the LocalCluster sn5dask starts makes its worker processes.
START_METHOD_KEY = "sn5dask.worker-start-method"
#: Set only in the fork server's environment: the client's main script (`_import_client_main`).
_MAIN_PATH_VARIABLE = "SN5DASK_FORKSERVER_MAIN"
#: What the fork server imports once, so that every worker forked from it starts with
#: them: the client's main module (which multiprocessing otherwise re-imports in every
#: worker, as spawn does), distributed and the chip-task code (rasterio/GDAL, shapely,
#: pyproj, odc-geo, and zarr for the store the default formats write: ≈0.2 s that each
#: worker otherwise spends in its first write task).
WORKER_MODULES = ("__main__", "distributed", "sn5dask.aoistats", "sn5dask.chiptask", "sn5dask.zarrstore")


def dask_config() -> dict[str, Any]:
    """dask's configuration as distributed sees it once imported: its `distributed.yaml`
    defaults under whatever the user set (dask config files, DASK_* variables).

    Before `import distributed` those defaults are not loaded yet; they are read here from
    the file distributed loads them from, without importing it or changing dask's config.
    """
    if "distributed.config" in sys.modules:
        return dask.config.config
    spec = importlib.util.find_spec("distributed")
    if spec is None or not spec.submodule_search_locations:
        return dask.config.config
    with open(os.path.join(list(spec.submodule_search_locations)[0], "distributed.yaml")) as f:
        defaults = yaml.safe_load(f)
    merged = copy.deepcopy(dask.config.config)
    dask.config.update(merged, defaults, priority="old")  # as distributed's update_defaults
    return merged


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
    if str(dask.config.get(_TRIM_KEY, None, config=dask_config())) != _DISTRIBUTED_DEFAULT_TRIM:
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
    config = copy.deepcopy(dask_config())
    dask.config.set(worker_environment_overrides(), config=config)
    configured = dask.config.get(PRE_SPAWN_KEY, {}, config=config)
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


def start_worker_server() -> None:
    """Start the fork server for local workers now, so its imports overlap with whatever
    the client does next (its own imports, discovery, the scheduler's start). Idempotent
    and cheap once running; a no-op with the spawn method.

    The server's environment is the one its workers start with, so it is started with
    `worker_process_environ()` added; the client's own `os.environ` is left as it was.
    Only what a process reads as it starts (allocator, thread pools) comes from the
    server's environment: `get_client` hands each worker the client's current variables.
    """
    if worker_start_method() != "forkserver":
        return
    preload, server_environ = list(WORKER_MODULES), worker_process_environ()
    main_path = multiprocessing.spawn.get_preparation_data("sn5dask").get("init_main_from_path")
    if main_path:  # see _import_client_main
        preload.insert(0, __name__)
        server_environ[_MAIN_PATH_VARIABLE] = main_path
    multiprocessing.set_forkserver_preload(preload)
    with environ(server_environ), sigint_ignored():
        multiprocessing.forkserver.ensure_running()


def _import_client_main() -> None:
    """In the fork server, where `start_worker_server` preloads this module first: import
    the client's main script once, as `__mp_main__`, so forked workers don't each run it
    again (for `sn5dask run` that is sn5dask.cli with typer and rich, ≈0.15 s per worker).

    `set_forkserver_preload(["__main__"])` is meant to do this, but Python without the fix
    of CPython gh-126631 (2025; not in 3.11 or 3.12) never hands the server the main
    script's path. Where Python did, `__main__` already is that script and nothing is
    done. A script that fails here is left to the workers, as before.
    """
    path = os.environ.pop(_MAIN_PATH_VARIABLE, None)  # not inherited by the workers
    if not path or getattr(sys.modules.get("__main__"), "__file__", None) == path:
        return
    current = multiprocessing.process.current_process()
    current._inheriting = True  # type: ignore[attr-defined]  # as multiprocessing does
    try:
        multiprocessing.spawn.import_main_path(path)
    except BaseException:  # even SystemExit: the server must live; workers then run it
        pass
    finally:
        del current._inheriting  # type: ignore[attr-defined]


def scheduler_address(scheduler: str | None = None) -> str | None:
    """The scheduler to use: the argument, else DASK_SCHEDULER_ADDRESS / dask config."""
    return (
        scheduler
        or os.environ.get("DASK_SCHEDULER_ADDRESS")
        or dask.config.get("scheduler-address", None)
    )


def prepare_local_workers(scheduler: str | None = None) -> None:
    """Start the fork server now when this run will start its own LocalCluster."""
    if not scheduler_address(scheduler):
        start_worker_server()


_import_client_main()  # last: the script may import anything from this module
