"""Real processes for the slow tests: a `dask scheduler` + `dask worker`s, a moto server."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s} s")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@dataclass
class RealCluster:
    address: str
    scheduler: subprocess.Popen
    workers: list[subprocess.Popen]


@contextmanager
def real_cluster(n_workers: int = 2, env: dict[str, str] | None = None) -> Iterator[RealCluster]:
    """`dask scheduler` and `n_workers` single-threaded `dask worker` processes (no nanny,
    so a killed worker stays dead) on 127.0.0.1."""
    port = free_port()
    environment = {**os.environ, **(env or {})}
    scheduler = subprocess.Popen(
        [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
         "--dashboard-address", ":0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environment,
    )  # fmt: skip
    workers: list[subprocess.Popen] = []
    try:
        wait_for_port(port)
        address = f"tcp://127.0.0.1:{port}"
        for _ in range(n_workers):
            workers.append(
                subprocess.Popen(
                    [str(BIN / "dask"), "worker", address, "--nthreads", "1", "--no-nanny",
                     "--host", "127.0.0.1", "--no-dashboard"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environment,
                )  # fmt: skip
            )
        from distributed import Client

        with Client(address, timeout=30) as client:
            client.wait_for_workers(n_workers, timeout=60)
        yield RealCluster(address, scheduler, workers)
    finally:
        for process in workers + [scheduler]:
            stop(process)


@contextmanager
def moto_server() -> Iterator[dict[str, str]]:
    """A moto S3 server on 127.0.0.1; yields the environment that points AWS clients at it."""
    port = free_port()
    process = subprocess.Popen(
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_port(port)
        yield {
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
            "AWS_ACCESS_KEY_ID": "testing-key-id",
            "AWS_SECRET_ACCESS_KEY": "testing-secret-never-logged",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
    finally:
        stop(process)


def sn5dask_cli(*args: str, env: dict[str, str] | None = None, **kwargs) -> subprocess.Popen:
    """Start the installed `sn5dask` console script in its own process group."""
    return subprocess.Popen(
        [str(BIN / "sn5dask"), *map(str, args)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, **(env or {})}, start_new_session=True, **kwargs,
    )  # fmt: skip


def kill_group(process: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    os.killpg(process.pid, sig)
    process.wait(30)
