"""The run lock `OUT/<AOI>/.sn5dask.lock` (its path is `layout.AoiLayout.lock_url`).

Local: an OS file lock through `filelock`. The kernel releases it when the holding process
ends, however it ends, so a lock is never left behind by a dead run; the lock file holds
the holder's host and pid, for messages only (it stays, unlocked, after the run).

S3: the lock is an object created with a conditional PUT (`If-None-Match: *`, s3fs's
`mode="create"`): of two runs that start together exactly one creates it. A lock left by
a dead process of this host is taken over; one left by a client on another host (a killed
Kubernetes job, say) cannot be checked from here: the message names `--break-lock`, which
removes it and takes the lock.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any

import filelock

from sn5dask.errors import LockError
from sn5dask.io import files

BREAK_LOCK_FLAG = "--break-lock"


class RunLock:
    """The lock at `url`, holding this process's host and pid while held.

    `break_lock`: take an S3 lock whatever holds it (the user says its holder is gone).
    """

    def __init__(self, url: str, *, break_lock: bool = False) -> None:
        self.url = url
        self.break_lock = break_lock
        self.holder = {"host": socket.gethostname(), "pid": os.getpid()}
        self._file_lock: filelock.BaseFileLock | None = None
        self._s3_held = False

    # -- local ---------------------------------------------------------------------------
    def _acquire_local(self) -> None:
        os.makedirs(os.path.dirname(self.url), exist_ok=True)
        lock = filelock.FileLock(self.url, timeout=0, is_singleton=False)
        try:
            lock.acquire()
        except filelock.Timeout:
            raise LockError(self._held_message(local=True)) from None
        try:  # the holder, for the message another run shows
            with open(self.url, "w") as f:
                json.dump(self.holder, f)
        except OSError:
            pass
        self._file_lock = lock

    # -- S3 ------------------------------------------------------------------------------
    def _acquire_s3(self) -> None:
        fs, path = files.filesystem(self.url)
        payload = json.dumps(self.holder).encode()
        for _ in range(2):
            try:
                fs.pipe_file(path, payload, mode="create")
            except FileExistsError:
                if self.break_lock or self._held_by_dead_local_process():
                    _remove(fs, path)
                    continue
                raise LockError(self._held_message(local=False)) from None
            self._s3_held = True
            return
        raise LockError(self._held_message(local=False))

    def acquire(self) -> None:
        if files.is_local(self.url):
            self._acquire_local()
        else:
            self._acquire_s3()

    def check_free(self) -> None:
        """`LockError` when another run holds the lock (checked before a cluster starts;
        `acquire` decides)."""
        if files.is_local(self.url):
            if not os.path.exists(self.url):
                return
            probe = filelock.FileLock(self.url, timeout=0, is_singleton=False)
            try:
                probe.acquire()
            except filelock.Timeout:
                raise LockError(self._held_message(local=True)) from None
            probe.release()
            return
        fs, path = files.filesystem(self.url)
        if fs.exists(path) and not self.break_lock and not self._held_by_dead_local_process():
            raise LockError(self._held_message(local=False))

    def release(self) -> None:
        if self._file_lock is not None:
            self._file_lock.release()
            self._file_lock = None
        if self._s3_held:
            fs, path = files.filesystem(self.url)
            _remove(fs, path)
            self._s3_held = False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _held_message(self, *, local: bool) -> str:
        holder = _read_holder(self.url)
        who = f"host {holder.get('host')} pid {holder.get('pid')}" if holder else "holder unknown"
        if local:
            return f"{self.url}: another sn5dask run holds this output ({who}); wait for it to finish"
        return (
            f"{self.url}: another sn5dask run holds this output ({who}); wait for it to "
            f"finish, or, if that run is gone (its client was killed), run again with "
            f"{BREAK_LOCK_FLAG}"
        )

    def _held_by_dead_local_process(self) -> bool:
        """The S3 lock names a process of this host that no longer runs."""
        holder = _read_holder(self.url)
        pid = holder.get("pid")
        if holder.get("host") != socket.gethostname() or not isinstance(pid, int):
            return False
        return not pid_alive(pid)


def _remove(fs: Any, path: str) -> None:
    try:
        fs.rm_file(path)
    except FileNotFoundError:
        pass


def _read_holder(url: str) -> dict[str, Any]:
    try:
        holder = json.loads(files.read_bytes(url))
        return holder if isinstance(holder, dict) else {}
    except (OSError, ValueError):
        return {}


def pid_alive(pid: int) -> bool:
    """Whether a process of this host with that pid runs."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
