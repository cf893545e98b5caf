"""Worker-local copies of chips between the scan pass and the write pass.

Two kinds, both placed the same way (the scan records the worker in `AoiScan.cached_on`;
the write task prefers that worker) and both a saving, never a requirement:
- S3 chips: a copy of the object on the worker's disk (below);
- small chips (`keeps_pixels`), wherever they are stored: their decoded pixels in the
  worker's memory (`keep_pixels`, `take_pixels`), so such a chip is decoded once.

S3 copies: without them every byte of an `s3://` chip crosses the network twice: the scan reads it for
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
from typing import TYPE_CHECKING

import dask.config
import numpy as np

from sn5dask import files

if TYPE_CHECKING:
    from sn5dask.raster import ChipHeader

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


# -- decoded pixels of small chips ---------------------------------------------------------
#
# A 64 px chip costs more to open than to decode: reading it a second time in the write
# pass was a tenth of its worker CPU (benchmarks/README.md). The scan keeps the pixels of
# such a chip in memory; its write task takes them (and so frees them) instead of reading
# the file again. Bounded per process by `sn5dask.pixel-cache-bytes` (dask config, default
# 128 MiB); only chips whose file is at most `SMALL_CHIP_BYTES` (a SpaceNet chip, 27 MB,
# never is) and whose pixels are at most that too. Entries belong to one run (its token):
# the run removes what its write pass did not take (`drop_pixels`), and a run that finds
# the budget full first drops what other runs left behind.

PIXELS_CONFIG_KEY = "sn5dask.pixel-cache-bytes"
DEFAULT_PIXELS_MAX_BYTES = 128 * 2**20
SMALL_CHIP_BYTES = 2**20

_pixels: dict[str, tuple[str, ChipHeader, np.ndarray]] = {}  # URL -> (run, header, pixels)
_pixels_bytes = 0  # the sum of the kept arrays' nbytes


def keeps_pixels(image_bytes: int | None) -> bool:
    """Whether the scan should keep the pixels of a chip whose file has `image_bytes`."""
    if image_bytes is None or image_bytes > SMALL_CHIP_BYTES:
        return False
    return int(dask.config.get(PIXELS_CONFIG_KEY, DEFAULT_PIXELS_MAX_BYTES)) > 0


def keep_pixels(url: str, run: str, header: ChipHeader, pixels: np.ndarray) -> bool:
    """Keep a chip's pixels (every band) for the write pass of `run`; False when they do
    not fit (then the write task reads the chip again)."""
    limit = int(dask.config.get(PIXELS_CONFIG_KEY, DEFAULT_PIXELS_MAX_BYTES))
    if pixels.nbytes > min(limit, SMALL_CHIP_BYTES):
        return False
    with _lock:
        _pop_pixels(url)
        if _pixels_bytes + pixels.nbytes > limit:
            for other in [key for key, entry in _pixels.items() if entry[0] != run]:
                _pop_pixels(other)
        if _pixels_bytes + pixels.nbytes > limit:
            return False
        _put_pixels(url, (run, header, pixels))
    return True


def take_pixels(url: str, run: str) -> tuple[ChipHeader, np.ndarray] | None:
    """The header and pixels (every band) the scan of `run` kept for `url`, removed from
    the cache; None when there are none."""
    with _lock:
        entry = _pixels.get(url)
        if entry is None or entry[0] != run:
            return None
        _pop_pixels(url)
    return entry[1], entry[2]


def drop_pixels(run: str) -> int:
    """Remove what `run` kept and its write pass did not take (chips done before a resume,
    tasks that ran on another worker); the number of chips removed."""
    with _lock:
        stale = [key for key, entry in _pixels.items() if entry[0] == run]
        for key in stale:
            _pop_pixels(key)
    return len(stale)


def _put_pixels(url: str, entry: tuple[str, ChipHeader, np.ndarray]) -> None:
    global _pixels_bytes
    _pixels[url] = entry
    _pixels_bytes += entry[2].nbytes


def _pop_pixels(url: str) -> None:
    global _pixels_bytes
    entry = _pixels.pop(url, None)
    if entry is not None:
        _pixels_bytes -= entry[2].nbytes
