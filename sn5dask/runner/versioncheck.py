"""Every worker runs the sn5dask, and the libraries that decide pixels, of the client.

A worker without sn5dask cannot even deserialise a chip task (distributed then leaves the
task waiting: a silent hang), and a worker with another sn5dask, numpy, GDAL, GEOS or PROJ
may write other pixels. So the run compares, before its first task, each worker's
versions with the client's, and keeps comparing the workers that join later; the chip
task itself checks again on its worker before it writes anything. A difference stops the
run with one line naming the worker and both versions (`VersionSkewError`, exit 2).

The first comparison uses distributed's own `Client.get_versions(packages=...)`, which
needs no sn5dask on the worker; the native libraries (GDAL, GEOS, PROJ) are compared by
a task once the worker's sn5dask is known to match.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, cast

from distributed import Client, Future

from sn5dask.errors import VersionSkewError
from sn5dask.versions import versions

log = logging.getLogger("sn5dask")

# Distributions whose version decides the bytes sn5dask writes (metadata names).
PIXEL_PACKAGES = ("sn5dask", "numpy", "rasterio", "shapely", "pyproj", "zarr", "numcodecs")
# And the native libraries under them (keys of `sn5dask.versions.versions()`).
PIXEL_LIBRARIES = ("gdal", "geos", "proj")
WATCH_EVERY_S = 0.5


def pixel_versions(found: Mapping[str, Any]) -> dict[str, str]:
    """The pixel-deciding entries of a versions mapping (`None`: not installed)."""
    return {name: str(found.get(name)) for name in (*PIXEL_PACKAGES, *PIXEL_LIBRARIES) if name in found}


@functools.cache
def _this_process_versions() -> dict[str, str]:
    return pixel_versions(versions())


def require_versions(expected: Mapping[str, str] | None, where: str = "this worker") -> None:
    """Raise `VersionSkewError` if this process's pixel-deciding versions differ from
    `expected` (the client's); None expects nothing. Run by each chip task."""
    if expected is None:
        return
    mismatch = _difference(dict(expected), _this_process_versions())
    if mismatch:
        try:
            from distributed import get_worker

            where = f"worker {get_worker().address}"
        except ValueError:  # not in a worker (a test calling the task directly)
            pass
        raise VersionSkewError(_message(where, mismatch))


def _difference(client: dict[str, str], worker: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """(name, the client's version, the worker's) for each name they disagree on."""
    return [
        (name, version, str(worker.get(name)))
        for name, version in client.items()
        if name in worker and str(worker.get(name)) != version
    ]


def _message(where: str, mismatch: list[tuple[str, str, str]]) -> str:
    shown = "; ".join(
        f"{name} {'not installed' if theirs == 'None' else theirs} there, {mine} here"
        for name, mine, theirs in mismatch
    )
    return (
        f"{where} runs other versions than this client ({shown}): install the same "
        "versions on the client and every worker (e.g. the same image or lock file), "
        "then run again"
    )


class WorkerVersions:
    """The versions of the workers this run has checked (for stats.json), and the check
    of the ones it has not seen yet."""

    def __init__(
        self, client: Client, on_notice: Callable[[str], None] | None = None, *, own_cluster: bool = False
    ) -> None:
        self.client = client
        # Workers sn5dask started itself run this interpreter's installation: nothing to
        # compare, and their versions are this installation's. They are read once, by a
        # task on a worker, where GDAL, GEOS and PROJ are loaded already: the client would
        # import rasterio for them alone, on the run's critical path.
        self.own_cluster = own_cluster
        #: the pixel-deciding versions each worker must have (the client's); None for
        #: workers this run started itself (this installation: nothing to compare)
        self.expected: dict[str, str] | None = None if own_cluster else _this_process_versions()
        self._installation: Future | None = (
            client.submit(versions, pure=False, priority=1) if own_cluster else None
        )
        self.of_worker: dict[str, dict[str, str]] = {}
        self.on_notice = on_notice or log.warning
        self._lock = threading.Lock()
        self._joined: set[str] = set()  # workers that joined while a watch ran
        self._lost: list[str] = []  # and were removed unexpectedly
        self._said: set[str] = set()

    def installation(self) -> dict[str, str]:
        """This run's versions (`sn5dask.versions.versions()`), for stats.json: the
        client's, read on a worker of its own cluster (the same installation)."""
        if self._installation is None:
            return versions()
        try:
            return cast(dict[str, str], self._installation.result())
        except Exception:  # the worker was lost meanwhile: read them here instead
            return versions()

    def worker_versions(self) -> dict[str, dict[str, str]]:
        """Each checked worker's versions, by address (a worker of this run's own cluster:
        this installation's pixel-deciding ones, as they were recorded before)."""
        if not self.own_cluster:
            return dict(sorted(self.of_worker.items()))
        return {address: pixel_versions(self.installation()) for address in sorted(self.of_worker)}

    def _on_scheduler_event(self, event: tuple[float, Any]) -> None:
        """distributed's "all" topic (in the client's event loop: no blocking here)."""
        message = event[1]
        if not isinstance(message, dict):
            return
        if message.get("action") == "add-worker":
            self._joined.add(message.get("worker", ""))
        elif message.get("action") == "remove-worker" and not message.get("expected"):
            self._lost.append(message.get("worker", ""))

    def _say_lost_unchecked(self) -> None:
        """A worker that joined and died before it could be checked is said, not silent:
        a worker without sn5dask dies unpickling the first task the scheduler sends it
        (distributed then runs that task elsewhere)."""
        for address in list(self._lost):
            if address in self._joined and address not in self.of_worker and address not in self._said:
                self._said.add(address)
                self.on_notice(
                    f"worker {address} joined and was lost at once, before its versions "
                    "could be checked (a worker without sn5dask dies on the first task it "
                    "is sent); its chips run elsewhere. Check what is installed there"
                )

    def check_new_workers(self) -> None:
        """Compare every worker not checked yet; raise `VersionSkewError` at the first
        that differs. Cheap when no worker joined (one small scheduler call)."""
        with self._lock:
            workers = set(self.client.nthreads())
            new = workers - set(self.of_worker)
            if not new:
                return
            if self.own_cluster:
                self.of_worker.update({address: {} for address in new})  # filled by `worker_versions`
                return
            expected = self.expected or _this_process_versions()
            report = cast(dict[str, Any], self.client.get_versions(packages=PIXEL_PACKAGES))
            info = report["workers"]
            if not self.of_worker:  # the first check: the scheduler unpickles the graphs too
                theirs = report.get("scheduler", {}).get("packages", {}).get("sn5dask")
                if str(theirs) != expected.get("sn5dask"):
                    raise VersionSkewError(_message(
                        "the scheduler", [("sn5dask", expected.get("sn5dask", "?"), str(theirs))]
                    ))  # fmt: skip
            for address in sorted(new & set(info)):
                packages = info[address]["packages"]
                mismatch = _difference(
                    {k: v for k, v in expected.items() if k in PIXEL_PACKAGES},
                    {name: str(packages.get(name)) for name in PIXEL_PACKAGES},
                )
                if mismatch:
                    raise VersionSkewError(_message(f"worker {address}", mismatch))
            native = self.client.run(versions, workers=sorted(new & set(info)), on_error="return")
            for address, found in native.items():
                if isinstance(found, BaseException):  # the worker left meanwhile
                    continue
                mismatch = _difference(expected, pixel_versions(found))
                if mismatch:
                    raise VersionSkewError(_message(f"worker {address}", mismatch))
                self.of_worker[address] = found

    @contextmanager
    def watched(self, futures: list[Future]) -> Iterator[list[BaseException]]:
        """While the block waits on `futures`, check workers that join every
        `WATCH_EVERY_S`; on a difference, cancel `futures` (so the block's wait ends) and
        keep the error in the yielded list for the block to raise (`raise_found`). A
        worker that joins and is lost before its check is said (`on_notice`)."""
        found: list[BaseException] = []
        stop = threading.Event()
        self.check_new_workers()  # one that joined since the last pass, before it gets a task
        self.client.subscribe_topic("all", self._on_scheduler_event)

        def watch() -> None:
            while not stop.wait(WATCH_EVERY_S):
                try:
                    self.check_new_workers()
                    self._say_lost_unchecked()
                except VersionSkewError as exc:
                    found.append(exc)
                    self.client.cancel(futures)
                    return
                except Exception as exc:  # a lost scheduler: the run's own wait says so
                    log.debug("worker version check: %s", exc)
                    return

        thread = threading.Thread(target=watch, name="sn5dask-version-watch", daemon=True)
        thread.start()
        try:
            yield found
        except Exception:
            raise_found(found)  # the cancelled wait's error says less than the difference
            raise
        finally:
            stop.set()
            thread.join()
            if self.client.status == "running":
                self.client.unsubscribe_topic("all")
                self._say_lost_unchecked()
        raise_found(found)


def raise_found(found: list[BaseException]) -> None:
    """Raise the version difference the watch found, if any."""
    if found:
        raise found[0] from None
