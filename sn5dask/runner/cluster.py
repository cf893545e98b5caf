"""Get a `distributed` client: an embedded LocalCluster, or an existing scheduler.

An address comes from `--scheduler`, else `DASK_SCHEDULER_ADDRESS` / dask's own
`scheduler-address` config (dask-cloudprovider, the dask-kubernetes operator, Coiled and
dask-gateway all hand out such an address). Everything else (memory limits, retries,
timeouts) is dask configuration, not sn5dask's.
"""

from __future__ import annotations

import ast
import inspect
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import dask.config
import dask.utils
from distributed import Client, LocalCluster, fire_and_forget

from sn5dask.errors import ConfigError
from sn5dask.runner.forkserver import (
    METHOD_KEY,
    PRE_SPAWN_KEY,
    environ,
    prepare_local_workers,
    scheduler_address,
    sigint_ignored,
    start_worker_server,
    worker_process_environ,
    worker_start_method,
)

__all__ = ["get_client", "prepare_local_workers", "prepare_worker", "warm_up_workers"]

log = logging.getLogger("sn5dask")


def default_worker_count() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


@contextmanager
def get_client(
    scheduler: str | None = None,
    workers: int | None = None,
    on_waiting: Callable[[str], None] | None = None,
) -> Iterator[Client]:
    """A client for the run; a LocalCluster it starts is closed on exit.

    The LocalCluster has one single-threaded worker process per core: the per-chip work
    (histograms, GEOS buffering, DEFLATE) holds the GIL often enough that processes beat
    threads, and a chip's memory is then bounded per process.
    """
    address = scheduler_address(scheduler)
    if address:
        try:
            client = Client(address)
        except OSError as exc:  # distributed's connect timeout (distributed.comm.timeouts.connect)
            raise ConfigError(
                f"--scheduler {address}: no scheduler answered ({exc}); check the address "
                "and that the scheduler runs and is reachable from here"
            ) from None
        try:
            wait_for_a_worker(client, address, on_waiting)
            yield client
        finally:
            client.close()
        return
    with environ_kept():
        yield from _local_client(workers)


#: dask config key: how long a run waits for the first worker of a scheduler it is given.
WORKER_WAIT_KEY = "sn5dask.worker-wait-timeout"
DEFAULT_WORKER_WAIT = "5 minutes"


def wait_for_a_worker(
    client: Client, address: str, on_waiting: Callable[[str], None] | None = None
) -> None:
    """Return once the scheduler at `address` has a worker. A scheduler without any (its
    workers not started yet, or all gone) is said at once through `on_waiting` (the CLI
    prints it), then waited for up to `sn5dask.worker-wait-timeout` in dask config (default
    5 minutes); after that, a `ConfigError` says so (no silent hang)."""
    if client.scheduler_info(n_workers=1)["workers"]:
        return
    timeout = dask.utils.parse_timedelta(dask.config.get(WORKER_WAIT_KEY, DEFAULT_WORKER_WAIT))
    if on_waiting is not None:
        on_waiting(f"waiting for workers at {address} (up to {timeout:g} s, {WORKER_WAIT_KEY})")
    try:
        client.wait_for_workers(1, timeout=timeout)
    except TimeoutError:
        raise ConfigError(
            f"--scheduler {address}: no worker joined within {timeout:g} s; start workers "
            f"(dask worker {address}) or wait longer ({WORKER_WAIT_KEY} in dask config)"
        ) from None


@contextmanager
def environ_kept() -> Iterator[None]:
    """`os.environ` exactly as it was when the block ends. Starting a LocalCluster, dask
    and distributed write into the client's environment (`PYTHONHASHSEED` for their
    workers, `__DASK_PARENT_PID` for process titles) and leave it there: a script that
    calls `sn5dask.run()` would find its environment changed afterwards."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        for key in set(os.environ) - set(saved):
            del os.environ[key]
        for key, value in saved.items():
            if os.environ.get(key) != value:
                os.environ[key] = value


def check_main_guard() -> None:
    """`ConfigError` when a LocalCluster would be started from the top level of a script
    that does not guard it with `if __name__ == "__main__":`.

    Worker processes import the main script again when they start (as every Python
    multiprocessing start method but fork does), so such a script would start a cluster
    inside each worker: distributed then fails with pages of tracebacks. The call's line
    in the script is looked up in the script's syntax tree; a notebook or `python -c`
    has no script file and is never refused.
    """
    main = sys.modules.get("__main__")
    script = getattr(main, "__file__", None)
    if main is None or not script or not str(script).endswith(".py"):
        return
    frame = inspect.currentframe()
    while frame is not None and frame.f_globals is not vars(main):
        frame = frame.f_back
    if frame is None or frame.f_code.co_name != "<module>":
        return
    try:
        tree = ast.parse(Path(script).read_text(), script)
    except (OSError, SyntaxError, ValueError):
        return
    line = frame.f_lineno
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_main_test(node.test):
            if node.lineno <= line <= (node.end_lineno or node.lineno):
                return
    raise ConfigError(
        f"{script}, line {line}: sn5dask starts worker processes, which import this script "
        'again; put the call under `if __name__ == "__main__":` (README: Python API)'
    )


def _is_main_test(test: ast.expr) -> bool:
    """`__name__ == "__main__"` (either way round)."""
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)):
        return False
    return {ast.unparse(test.left), ast.unparse(test.comparators[0])} == {"__name__", "'__main__'"}


def _local_client(workers: int | None) -> Iterator[Client]:
    """A LocalCluster sized to the machine, and a client of it (see `get_client`)."""
    check_main_guard()
    n_workers = workers or default_worker_count()
    start_worker_server()
    process_environ = worker_process_environ()
    # distributed's nanny would write its pre-spawn variables into this process's
    # os.environ; sn5dask hands them to the workers instead: in the fork server's
    # environment, set only while the worker processes start, and as each worker's `env`.
    # No work stealing: the write task of an S3 chip is placed on the worker holding the
    # scan's local copy (`chipcache`), and a steal would download the chip a second time.
    # Chips without a copy are queued on the scheduler, where nothing is stolen anyway.
    local_config = {
        PRE_SPAWN_KEY: {},
        METHOD_KEY: worker_start_method(),
        "distributed.scheduler.work-stealing": False,
    }
    dashboard_address = loopback_dashboard_address(
        dask.config.get("distributed.dashboard.address", ":8787")
    )
    with dask.config.set(local_config):
        with environ(process_environ), sigint_ignored(), warnings.catch_warnings():
            # With 8787 taken (a notebook's cluster, another run), distributed warns in
            # four lines and serves the dashboard elsewhere; the link sn5dask prints
            # names the port actually used.
            warnings.filterwarnings("ignore", message="Port .* is already in use", category=UserWarning)
            cluster = LocalCluster(
                n_workers=n_workers,
                threads_per_worker=1,
                processes=True,
                silence_logs=logging.ERROR,
                dashboard_address=dashboard_address,
                # Forked workers inherit the fork server's environment, which may be older
                # than the client's (AWS_*, GDAL_* set since): each worker applies the
                # client's current variables first thing, as spawned workers would have.
                env={**os.environ, **process_environ},
            )
        with cluster, Client(cluster) as client:
            yield client


def loopback_dashboard_address(address: str | None) -> str | None:
    """The dask dashboard of a cluster sn5dask starts listens on 127.0.0.1 only.

    distributed's default, ":8787", listens on every interface: the scheduler's identity,
    the workers' folders and task names with file paths would be open to the network.
    A bare port keeps its number on 127.0.0.1; an address that names a host (dask config
    `distributed.dashboard.address: 0.0.0.0:8787`) is the user's choice and kept.
    """
    if address is not None and address.startswith(":"):
        return "127.0.0.1" + address
    return address


def warm_up_workers(client: Client) -> None:
    """Have every current worker import the chip-task code now, while the client is still
    discovering chips and building the graph (fire and forget).

    A spawned worker (a remote cluster, or `worker-start-method: spawn`) otherwise pays
    its imports inside its first scan and chip tasks, and even a forked one opens PROJ's
    database in its first chip task, while the other queues wait on it. The task runs in
    the worker's task thread ahead of the chip tasks; on a warm worker it is a no-op.
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
    imports, GDAL set-up and PROJ's database. Idempotent (cheap on a warm worker)."""
    from sn5dask.core import crs, masks  # noqa: F401
    from sn5dask.io import raster
    from sn5dask.runner import aoistats, chiptask  # noqa: F401

    with raster.gdal_env("local"):
        crs.utm_crs_containing(0.0, 0.0)  # opens PROJ's database once per process
