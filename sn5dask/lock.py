"""The run lock `OUT/<AOI>/.sn5dask.lock` (its path is `layout.AoiLayout.lock`).

Local: created with `O_CREAT | O_EXCL`, so two runs can never both hold it. S3 has no
exclusive create here, so the lock is advisory there: it is checked, then written (a race
between two starts can slip by). On both, a lock left by a dead process of this host is
taken over.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from typing import Any

from fsspec.implementations.local import LocalFileSystem

from sn5dask.errors import LockError
from sn5dask.files import filesystem, read_bytes


class RunLock:
    """The lock file at `url`, holding this process's host and pid while held."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.holder = {"host": socket.gethostname(), "pid": os.getpid()}
        self._held = False

    def acquire(self) -> None:
        fs, path = filesystem(self.url)
        payload = json.dumps(self.holder).encode()
        if isinstance(fs, LocalFileSystem):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            for _ in range(2):
                try:
                    _create_whole(path, payload)
                except FileExistsError:
                    if not self._take_over_stale(path):
                        raise LockError(self._held_message(path)) from None
                    continue
                self._held = True
                return
            raise LockError(self._held_message(path))
        if fs.exists(path) and not self._take_over_stale(path):
            raise LockError(self._held_message(path))
        fs.pipe_file(path, payload)
        self._held = True

    def check_free(self) -> None:
        """`LockError` when another live run holds the lock (checked before a cluster is
        started; `acquire` checks again). A stale lock of this host counts as free."""
        fs, path = filesystem(self.url)
        if not fs.exists(path):
            return
        holder = _read_holder(self.url)
        pid = holder.get("pid")
        if holder.get("host") == socket.gethostname() and isinstance(pid, int) and not _pid_alive(pid):
            return
        raise LockError(self._held_message(path))

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
        """Remove a lock left by a dead process of this host (local or S3); False when the
        holder may be alive (another host's process cannot be checked)."""
        holder = _read_holder(self.url)
        if not holder or holder.get("host") != socket.gethostname():
            return False
        pid = holder.get("pid")
        if not isinstance(pid, int) or _pid_alive(pid):
            return False
        fs, _ = filesystem(self.url)
        try:
            fs.rm_file(path)
        except FileNotFoundError:
            pass
        return True


def _create_whole(path: str, payload: bytes) -> None:
    """Create `path` holding `payload`, or raise `FileExistsError` if it exists.

    The lock appears with its content (written to a private file, then hard-linked under
    `path`, which is atomic and fails if `path` exists), so no other run ever reads it
    empty. Where hard links are not supported, `O_CREAT | O_EXCL` and a write.
    """
    private = f"{path}.{os.getpid()}.{threading.get_ident()}.new"
    with open(private, "wb") as f:
        f.write(payload)
    try:
        os.link(private, path)
        return
    except FileExistsError:
        raise
    except OSError:
        pass  # no hard links here
    finally:
        os.remove(private)
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(payload)


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
