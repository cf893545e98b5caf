"""Worker-local copies of S3 chips between the scan pass and the write pass.

Without them every byte of an `s3://` chip crosses the network twice: the scan reads it for
the AOI histograms, the write task reads it again for the RGB and the masks. With them the
scan downloads each chip once (one GET) into this worker's local directory and reads it
there; the write task, which the graph places on that worker (`dask.annotate`, other
workers allowed when it is gone), opens the local copy and removes it when the chip is
done. A chip whose write task runs elsewhere simply reads S3 again: the copy is a saving,
never a requirement.

Bounded: a copy is made only while this process's copies stay under
`sn5dask.chip-cache-bytes` (dask config, default 8 GiB) and the disk keeps 1 GiB free;
otherwise the chip is read from S3 as before. The folder is inside the dask worker's
local directory, which distributed removes when the worker closes, so a killed run leaves
nothing behind for long. Per process, thread-safe.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading

import dask.config

from sn5dask import files

CONFIG_KEY = "sn5dask.chip-cache-bytes"
DEFAULT_MAX_BYTES = 8 * 2**30
FREE_DISK_RESERVE = 2**30

_lock = threading.Lock()
_copies: dict[str, tuple[str, int]] = {}  # URL -> (local path, bytes)


def enabled(url: str) -> bool:
    """Copies are made for S3 chips only (local files are read in place)."""
    return url.startswith("s3://") and int(dask.config.get(CONFIG_KEY, DEFAULT_MAX_BYTES)) > 0


def fetch(url: str, size: int | None = None) -> str | None:
    """Download `url` into this process's cache (once) and return the local path, or None
    when it does not fit (then the caller reads S3 directly)."""
    with _lock:
        if url in _copies:
            return _copies[url][0]
    folder = _folder()
    limit = int(dask.config.get(CONFIG_KEY, DEFAULT_MAX_BYTES))
    with _lock:
        used = sum(n for _, n in _copies.values())
    expected = size if size is not None else 0
    if used + expected > limit or shutil.disk_usage(folder).free - expected < FREE_DISK_RESERVE:
        return None
    local = os.path.join(folder, hashlib.sha1(url.encode()).hexdigest() + ".tif")
    data = files.read_bytes(url)  # one GET, length checked
    partial = local + ".partial"
    with open(partial, "wb") as f:
        f.write(data)
    os.replace(partial, local)
    with _lock:
        _copies[url] = (local, len(data))
    return local


def lookup(url: str) -> str | None:
    """The local copy of `url` in this process, if there is one."""
    with _lock:
        entry = _copies.get(url)
    if entry is None or not os.path.exists(entry[0]):
        return None
    return entry[0]


def evict(url: str) -> None:
    """Remove the local copy of `url` (its last reader is done)."""
    with _lock:
        entry = _copies.pop(url, None)
    if entry is not None:
        try:
            os.remove(entry[0])
        except FileNotFoundError:
            pass


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
