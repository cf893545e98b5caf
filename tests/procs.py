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
def real_cluster(n_workers: int = 2, env: dict[str, str] | None = None,
                 hidden: Path | None = None,
                 worker_envs: list[dict[str, str]] | None = None) -> Iterator[RealCluster]:
    """`dask scheduler` and `n_workers` single-threaded `dask worker` processes (no nanny,
    so a killed worker stays dead) on 127.0.0.1.

    `hidden`: a folder the workers do not share with this process, as on a host of its
    own: each worker runs in a mount namespace of its own (`unshare`, as root) where an
    empty tmpfs lies over that folder.
    `worker_envs`: the environment of each worker (replacing this process's, with PATH and
    HOME kept), e.g. from `python_without_sn5dask` / `python_with_sn5dask_version`."""
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
        for i in range(n_workers):
            workers.append(start_worker(address, environment if worker_envs is None else worker_envs[i],
                                        hidden=hidden, own_environment=worker_envs is not None))
        from distributed import Client

        if n_workers:
            with Client(address, timeout=30) as client:
                client.wait_for_workers(n_workers, timeout=60)
        yield RealCluster(address, scheduler, workers)
    finally:
        for process in workers + [scheduler]:
            stop(process)


def start_worker(address: str, env: dict[str, str], hidden: Path | None = None,
                 own_environment: bool = True) -> subprocess.Popen:
    """One single-threaded `dask worker` (no nanny) for the scheduler at `address`.
    `env`: its whole environment when `own_environment` (PATH and HOME kept), e.g. from
    `python_without_sn5dask`; `hidden`: see `real_cluster`."""
    command = [str(BIN / "dask"), "worker", address, "--nthreads", "1", "--no-nanny",
               "--host", "127.0.0.1", "--no-dashboard"]  # fmt: skip
    if own_environment:
        env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/"), **env}
    if "SN5DASK_TEST_PYTHON_FLAGS" in env:  # `python -S`: no site-packages
        command = [sys.executable, env["SN5DASK_TEST_PYTHON_FLAGS"], "-c",
                   "from distributed.cli.dask_worker import main; main()", *command[2:]]  # fmt: skip
    if hidden is not None:
        command = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                   f'mount -t tmpfs none "$0" && exec "$@"', str(hidden), *command]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env, cwd=env.get("SN5DASK_TEST_CWD"))


def python_without_sn5dask(folder: Path) -> dict[str, str]:
    """The environment of a worker on a host where sn5dask is not installed: `python -S`
    with a folder that links every installed package of this environment but sn5dask."""
    import site

    folder.mkdir(parents=True, exist_ok=True)
    for packages in site.getsitepackages():
        for entry in Path(packages).iterdir():
            name = entry.name.lower()
            if "sn5dask" in name or entry.suffix == ".pth" or (folder / entry.name).exists():
                continue
            (folder / entry.name).symlink_to(entry)
    return {"PYTHONPATH": str(folder), "SN5DASK_TEST_PYTHON_FLAGS": "-S", "SN5DASK_TEST_CWD": str(folder)}


def python_with_sn5dask_version(folder: Path, version: str) -> dict[str, str]:
    """The environment of a worker whose installed sn5dask says it is `version` (the
    distribution metadata found first on its path)."""
    info = folder / f"sn5dask-{version}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: sn5dask\nVersion: {version}\n")
    return {"PYTHONPATH": str(folder), "SN5DASK_TEST_CWD": str(folder)}


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


# A shell starts background jobs with SIGINT ignored and children inherit that, so Python
# installs no KeyboardInterrupt handler. Reset it to the default, as a terminal would, in a
# trampoline that then execs the CLI (a default disposition survives exec; preexec_fn is
# unsafe in a threaded parent like this test process).
_WITH_DEFAULT_SIGINT = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)


def sn5dask_cli(*args: str, env: dict[str, str] | None = None, **kwargs) -> subprocess.Popen:
    """Start the installed `sn5dask` console script in its own process group, with the
    default SIGINT disposition (so a test's SIGINT acts like Ctrl-C)."""
    return subprocess.Popen(
        [sys.executable, "-c", _WITH_DEFAULT_SIGINT, str(BIN / "sn5dask"), *map(str, args)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, **(env or {})}, start_new_session=True, **kwargs,
    )  # fmt: skip


def kill_group(process: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    os.killpg(process.pid, sig)
    process.wait(30)


def upload_tree(env: dict[str, str], local_root: Path, bucket: str, prefix: str = "in",
                acl: str | None = None) -> None:
    """Create `bucket` on the moto server of `env` and upload every file under
    `local_root` to `<prefix>/<relative path>` (with `acl`, e.g. "public-read")."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                      aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
    s3.create_bucket(Bucket=bucket)
    for path in local_root.rglob("*"):
        if path.is_file():
            s3.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(local_root)}",
                           ExtraArgs={"ACL": acl} if acl else None)


class FaultyProxy:
    """An HTTP proxy on 127.0.0.1 in front of an S3 endpoint (moto) that answers some
    requests with 503 SlowDown instead of forwarding them.

    `fail(method, path, n)` decides: `n` is the 1-based count of requests seen so far.
    `deny(headers)`, when given, answers 403 AccessDenied instead where it returns True
    (e.g. requests without an Authorization header: a bucket that is not public).
    Runs in a thread of the test process; bounded (it only serves while the test runs).
    """

    def __init__(self, upstream: str, fail, deny=None) -> None:
        import http.client
        import http.server
        import threading
        import urllib.parse

        target = urllib.parse.urlsplit(upstream)
        proxy = self
        self.count = 0
        self.failed = 0
        self.lock = threading.Lock()
        #: bytes of response bodies served per request path (GETs), to count S3 traffic
        self.bytes_served: dict[str, int] = {}

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _error(self, status: int, code: str, message: str) -> None:
                payload = (f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code>"
                           f"<Message>{message}</Message></Error>").encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":  # a HEAD answer has no body
                    self.wfile.write(payload)

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                with proxy.lock:
                    proxy.count += 1
                    n = proxy.count
                if deny is not None and deny(self.headers):
                    self._error(403, "AccessDenied", "Access Denied")
                    return
                if fail(self.command, self.path, n):
                    with proxy.lock:
                        proxy.failed += 1
                    self._error(503, "SlowDown", "Please reduce your request rate.")
                    return
                connection = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                connection.request(self.command, self.path, body=body, headers=headers)
                response = connection.getresponse()
                data = response.read()
                self.send_response(response.status, response.reason)
                for key, value in response.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                # A HEAD answer announces the object's length without sending it.
                length = response.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                    with proxy.lock:
                        key = urllib.parse.unquote(self.path.split("?", 1)[0])
                        proxy.bytes_served[key] = proxy.bytes_served.get(key, 0) + len(data)
                connection.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FaultyProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def lock_held_elsewhere(url: str) -> Iterator[subprocess.Popen]:
    """Another process of this host holds the sn5dask run lock at `url` until the block
    ends (it is then SIGKILLed, as a run that dies would be)."""
    process = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom sn5dask.io.lock import RunLock\n"
         "lock = RunLock(sys.argv[1]); lock.acquire(); print('held', flush=True); time.sleep(600)", url],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "held"
        yield process
    finally:
        process.kill()
        process.wait(30)
