"""Worker-local copies of S3 chips between the scan pass and the write pass.

Without them every byte of an `s3://` chip crosses the network twice: the scan reads it for
the AOI histograms, the write task reads it again for the RGB and the masks. With them the
scan downloads each chip once (one GET, through fsspec's whole-file cache, `simplecache`)
into this worker's local directory and reads it there; the write task, which the graph places on that worker (`dask.annotate`, other
workers allowed when it is gone), opens the local copy and removes it when the chip is
done. A chip whose write task runs elsewhere simply reads S3 again: the copy is a saving,
never a requirement.

Identity: a copy is kept under a `CopyKey`, the run that made it, the URL and the object's
stamp ("size:ETag") as this run's discovery listed it, and it is found only inside
`reading(key)` with that very key. A later run (whose token differs), or a reader outside
a chip task, never sees it, even after the object was replaced under the same name; the
run removes what it kept when it ends (`drop_run`), and a run that finds the budget full
removes what other runs left behind.

Bounded: a copy is made only while this process's copies stay under
`sn5dask.chip-cache-bytes` (dask config, default 8 GiB) and the disk keeps 1 GiB free;
otherwise the chip is read from S3 as before. The folder is inside the dask worker's
local directory, which distributed removes when the worker closes, so a killed run leaves
nothing behind for long. Per process, thread-safe.
"""

from __future__ import annotations

import contextvars
import hashlib
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import dask.config
import fsspec

from sn5dask.io import files

CONFIG_KEY = "sn5dask.chip-cache-bytes"
DEFAULT_MAX_BYTES = 8 * 2**30
FREE_DISK_RESERVE = 2**30

@dataclass(frozen=True)
class CopyKey:
    """The identity of a kept copy: the run that keeps it, the object's URL, and its stamp
    ("size:ETag" on S3, as the run's discovery listed it; None when unknown)."""

    run: str
    url: str
    stamp: str | None

    @property
    def size(self) -> int | None:
        """The object's size in bytes as listed, when the stamp says it."""
        text = (self.stamp or "").split(":", 1)[0]
        return int(text) if text.isdigit() else None


_lock = threading.Lock()
_copies: dict[CopyKey, tuple[str, int]] = {}  # key -> (local path, bytes)
#: The copy the code running in this context (a chip's scan or write task) may read.
_reading: contextvars.ContextVar[CopyKey | None] = contextvars.ContextVar(
    "sn5dask_chip_copy", default=None
)


def enabled(url: str) -> bool:
    """Copies are made for S3 chips only (local files are read in place)."""
    return url.startswith("s3://") and int(dask.config.get(CONFIG_KEY, DEFAULT_MAX_BYTES)) > 0


def fetch(key: CopyKey) -> str | None:
    """Download `key.url` into this process's cache (once per key) and return the local
    path, or None when it does not fit or its size is not the listed one (then the caller
    reads S3 directly)."""
    with _lock:
        if key in _copies:
            return _copies[key][0]
    folder = _folder()
    limit = int(dask.config.get(CONFIG_KEY, DEFAULT_MAX_BYTES))
    expected = key.size or 0
    with _lock:
        if sum(n for _, n in _copies.values()) + expected > limit:
            for other in [k for k in _copies if k.run != key.run]:  # left by other runs
                _remove_copy(other)
        used = sum(n for _, n in _copies.values())
    if used + expected > limit or shutil.disk_usage(folder).free - expected < FREE_DISK_RESERVE:
        return None
    # fsspec's own whole-file cache downloads the object (one GET) into a folder of this
    # key's own: run, URL and listed stamp, so nothing else is ever found there.
    identity = hashlib.sha1(repr((key.url, key.stamp)).encode()).hexdigest()[:20]
    storage = os.path.join(folder, _run_folder(key.run), identity)
    target, path = files.filesystem(key.url)
    cache = fsspec.filesystem("simplecache", fs=target, cache_storage=storage, skip_instance_cache=True)
    with cache.open(path, "rb") as copy:
        local = str(copy.name)
    size = os.path.getsize(local)
    if key.size is not None and size != key.size:
        shutil.rmtree(storage, ignore_errors=True)
        return None  # replaced since it was listed (or cut short): not the object this run scanned
    with _lock:
        _copies[key] = (local, size)
    return local


def _run_folder(run: str) -> str:
    """The folder name of a run's copies (a run token is a hex string already)."""
    return "run-" + hashlib.sha1(run.encode()).hexdigest()[:16]


@contextmanager
def reading(key: CopyKey) -> Iterator[None]:
    """Within this block (one chip's scan or write task) `lookup(key.url)` finds the copy
    kept under `key`, and only that one."""
    token = _reading.set(key)
    try:
        yield
    finally:
        _reading.reset(token)


def lookup(url: str) -> str | None:
    """The local copy of `url` that the enclosing `reading` block may read, if any."""
    key = _reading.get()
    if key is None or key.url != url:
        return None
    with _lock:
        entry = _copies.get(key)
    if entry is None or not os.path.exists(entry[0]):
        return None
    return entry[0]


def evict(key: CopyKey) -> None:
    """Remove the copy kept under `key` (its last reader is done)."""
    with _lock:
        _remove_copy(key)


def drop_run(run: str) -> int:
    """Remove every S3 copy `run` kept on this worker that its write pass did not use, and
    the run's folder; the number of copies removed. Called on every worker when the run's
    write pass ends, so nothing a run kept outlives it."""
    with _lock:
        stale = [key for key in _copies if key.run == run]
        for key in stale:
            _remove_copy(key)
    shutil.rmtree(os.path.join(_folder(), _run_folder(run)), ignore_errors=True)
    return len(stale)


def _remove_copy(key: CopyKey) -> None:
    """Forget and delete one copy, with its cache folder (the caller holds `_lock`)."""
    entry = _copies.pop(key, None)
    if entry is not None:
        shutil.rmtree(os.path.dirname(entry[0]), ignore_errors=True)


def worker_address() -> str | None:
    """The address of the dask worker this runs on (None outside a worker)."""
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return None


def _folder() -> str:
    try:
        from distributed import get_worker

        base = get_worker().local_directory
    except (ImportError, ValueError):
        base = tempfile.gettempdir()
    folder = os.path.join(base, "sn5dask-chip-cache")
    os.makedirs(folder, exist_ok=True)
    return folder
