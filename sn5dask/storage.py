"""Files and S3 through fsspec: listing, bounded reads, atomic writes, the run lock.

Local paths and `s3://` URLs go through the same functions. Credentials come from the
standard AWS chain (environment, profile, instance role) via s3fs/botocore; sn5dask never
reads, stores or logs them. `AWS_ENDPOINT_URL` (e.g. a moto server) is honoured.

Atomicity: a local file is written to `<name>.partial` in the same folder and renamed
over the final name (rename is atomic within a filesystem), so a crash never leaves a
truncated file under a final name. On S3 an object is written by one PUT, which is atomic.
"""

from __future__ import annotations

import json
import os
import posixpath
import socket
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from sn5dask.errors import LockError

PARTIAL_SUFFIX = ".partial"
LOCK_NAME = ".sn5dask.lock"


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path without protocol) for a local path or URL."""
    return fsspec.core.url_to_fs(url, **storage_options(url))


def storage_options(url: str) -> dict[str, Any]:
    if url.startswith("s3://"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            return {"client_kwargs": {"endpoint_url": endpoint}}
    return {}


def is_local(url: str) -> bool:
    return isinstance(filesystem(url)[0], LocalFileSystem)


def full_url(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """A path as returned by `fs.glob` turned back into something `filesystem` accepts."""
    if isinstance(fs, LocalFileSystem):
        return path
    return fs.unstrip_protocol(path)


def join(base: str, *parts: str) -> str:
    """Join URL/path parts with `/` (parts are sanitised names, never absolute paths)."""
    for part in parts:
        if part.startswith("/") or ".." in part.split("/"):
            raise ValueError(f"refusing to join unsafe path part {part!r}")
    if is_local(base):
        return os.path.join(base, *parts)
    return posixpath.join(base.rstrip("/"), *parts)


def exists(url: str) -> bool:
    fs, path = filesystem(url)
    return bool(fs.exists(path))


def makedirs(url: str) -> None:
    fs, path = filesystem(url)
    if isinstance(fs, LocalFileSystem):
        os.makedirs(path, exist_ok=True)


def size_bytes(url: str) -> int:
    fs, path = filesystem(url)
    return int(fs.size(path))


def read_bytes(url: str, max_bytes: int | None = None) -> bytes:
    """The whole object, checked against its listed size (a short read raises OSError).

    Raises `ValueError` naming the size when it is over `max_bytes`.
    """
    fs, path = filesystem(url)
    size = int(fs.size(path))
    if max_bytes is not None and size > max_bytes:
        raise ValueError(f"{size / 2**20:.1f} MB is over the limit of {max_bytes / 2**20:g} MB")
    data = fs.cat_file(path)
    if len(data) != size:
        raise OSError(f"short read: got {len(data)} of {size} bytes")
    return data


def write_bytes_atomic(url: str, data: bytes) -> None:
    """Write `data` under `url` so that the final name only ever holds complete content."""
    fs, path = filesystem(url)
    if isinstance(fs, LocalFileSystem):
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        partial = path + PARTIAL_SUFFIX
        try:
            with open(partial, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(partial, path)
        finally:
            if os.path.exists(partial):
                os.remove(partial)
    else:
        fs.pipe_file(path, data)


def write_json_atomic(url: str, document: Any) -> None:
    write_bytes_atomic(url, (json.dumps(document, indent=1, sort_keys=False) + "\n").encode())


def read_json(url: str) -> Any:
    return json.loads(read_bytes(url))


def remove_partials(folder_url: str) -> int:
    """Delete leftover `*.partial` files below a local folder (after a crash); count them."""
    fs, path = filesystem(folder_url)
    if not isinstance(fs, LocalFileSystem) or not os.path.isdir(path):
        return 0
    removed = 0
    for directory, _, files in os.walk(path):
        for name in files:
            if name.endswith(PARTIAL_SUFFIX):
                os.remove(os.path.join(directory, name))
                removed += 1
    return removed


class RunLock:
    """`OUT/<AOI>/.sn5dask.lock`, created exclusively, holding host and pid.

    Local: `O_CREAT | O_EXCL`, so two runs can never both hold it; a lock left by a dead
    process on this host is taken over. S3 has no exclusive create here, so the lock is
    advisory there: it is checked, then written (a race between two starts can slip by).
    """

    def __init__(self, folder_url: str) -> None:
        self.url = join(folder_url, LOCK_NAME)
        self.holder = {"host": socket.gethostname(), "pid": os.getpid()}
        self._held = False

    def acquire(self) -> None:
        fs, path = filesystem(self.url)
        payload = json.dumps(self.holder).encode()
        if isinstance(fs, LocalFileSystem):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            for _ in range(2):
                try:
                    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                except FileExistsError:
                    if not self._take_over_stale(path):
                        raise LockError(self._held_message(path)) from None
                    continue
                with os.fdopen(fd, "wb") as f:
                    f.write(payload)
                self._held = True
                return
            raise LockError(self._held_message(path))
        if fs.exists(path):
            raise LockError(self._held_message(path))
        fs.pipe_file(path, payload)
        self._held = True

    def release(self) -> None:
        if not self._held:
            return
        fs, path = filesystem(self.url)
        try:
            fs.rm_file(path)
        except FileNotFoundError:
            pass
        self._held = False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _held_message(self, path: str) -> str:
        holder = _read_holder(self.url)
        who = f"host {holder.get('host')} pid {holder.get('pid')}" if holder else "unknown"
        return (
            f"{self.url}: another sn5dask run holds this output ({who}); wait for it to "
            f"finish, or delete the lock file if that run is gone"
        )

    def _take_over_stale(self, path: str) -> bool:
        holder = _read_holder(self.url)
        if not holder or holder.get("host") != socket.gethostname():
            return False
        pid = holder.get("pid")
        if not isinstance(pid, int) or _pid_alive(pid):
            return False
        try:
            os.remove(path)
        except FileNotFoundError:
            pass
        return True


def _read_holder(url: str) -> dict[str, Any]:
    try:
        holder = json.loads(read_bytes(url))
        return holder if isinstance(holder, dict) else {}
    except (OSError, ValueError):
        return {}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
