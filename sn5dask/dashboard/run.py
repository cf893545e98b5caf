"""Runs started from the dashboard, and the cluster it keeps for them (no UI code here).

One `RunController` per process is shared by every browser session: one cluster, at most
one run at a time. The cluster outlives runs (the Dask dashboard and dask-labextension
panes stay connected) until the user closes it; what it costs while idle is measured so
the page can say it.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal

from sn5dask.dashboard.data import Progress

log = logging.getLogger("sn5dask")

RunState = Literal["idle", "starting", "running", "finished", "failed"]


class LiveCounts:
    """A `runner.report.Reporter` that keeps each AOI's counts and chip statuses as chips
    finish (the manifest is rewritten only every few seconds). Chips/s counts only the
    chips this run made: those done by earlier runs are its starting point."""

    def __init__(self) -> None:
        self.counts: dict[str, Progress] = {}
        self.chip_status: dict[str, dict[str, str]] = {}
        self.started: dict[str, tuple[float, int]] = {}  # aoi -> (monotonic start, chips already done)
        self.waiting_for: str | None = None  # "waiting for workers at ..." until one joins
        self.changes = 0  # bumped on every report: the page redraws what changed

    def cluster(self, dashboard_link: str | None, closes_with_run: bool) -> None:
        pass

    def waiting(self, message: str) -> None:
        self.waiting_for = message
        self.changes += 1

    def notice(self, message: str) -> None:
        log.warning(message)

    def aoi_started(self, aoi: str, total: int, already_done: int, already_failed: int) -> None:
        self.waiting_for = None
        self.counts[aoi] = Progress(total=total, ok=already_done, failed=already_failed, running=True)
        self.chip_status[aoi] = {}
        self.started[aoi] = (time.monotonic(), already_done + already_failed)
        self.changes += 1

    def chip_finished(self, aoi: str, result: Any) -> None:
        progress = self.counts[aoi]
        setattr(progress, result.status, getattr(progress, result.status) + 1)
        self.chip_status[aoi][result.chip_id] = result.status
        started_at, done_before = self.started[aoi]
        elapsed = time.monotonic() - started_at
        made = progress.done - done_before
        if elapsed > 0 and made > 0:
            progress.chips_per_second = made / elapsed
            progress.eta_seconds = (progress.total - progress.done) / progress.chips_per_second
        self.changes += 1

    def aoi_finished(self, summary: Any) -> None:
        progress = self.counts.get(summary.aoi)
        if progress is not None:
            progress.running = False
            progress.eta_seconds = None
        self.changes += 1


@dataclass(frozen=True)
class ClusterCost:
    """What the kept cluster holds while idle: its workers' memory and CPU use."""

    workers: int
    memory_bytes: int
    cpu_percent: float
    local: bool  # a LocalCluster started here (closing it frees the memory)

    def describe(self) -> str:
        kind = "local cluster" if self.local else "connection to your scheduler"
        return (f"kept {kind}: {self.workers} worker{'s' if self.workers != 1 else ''}, "
                f"{self.memory_bytes / 2**20:.0f} MB, {self.cpu_percent:.0f} % CPU")  # fmt: skip


class KeptCluster:
    """A dask client (and the LocalCluster behind it, if any) opened and closed in one
    thread of its own: distributed's client sets context variables on entry that can only
    be reset in the context that set them, so closing it from another thread (Ctrl-C of
    the server, a browser session's callback) would raise."""

    def __init__(self, scheduler: str | None, workers: int | None) -> None:
        self.scheduler = scheduler
        self.client: Any = None
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._close = threading.Event()
        self._thread = threading.Thread(target=self._own, args=(workers,), name="sn5dask-cluster", daemon=True)
        self._thread.start()

    def _own(self, workers: int | None) -> None:
        from sn5dask.runner.cluster import get_client

        try:
            with get_client(self.scheduler, workers) as client:
                self.client = client
                self._ready.set()
                self._close.wait()
        except Exception as exc:  # reported by `wait_ready` to whoever asked for the client
            self.error = exc
        finally:
            self.client = None
            self._ready.set()

    def wait_ready(self) -> Any:
        self._ready.wait()
        if self.client is None:
            raise self.error or RuntimeError("the cluster closed")
        return self.client

    def close(self, timeout: float = 60.0) -> None:
        self._close.set()
        self._thread.join(timeout)


class RunController:
    """The cluster the dashboard keeps (one per process, shared by every browser session)
    and the run it started, if any. `state` says where a run is: idle, starting (the
    cluster comes up: that takes seconds), running, finished, failed (`error`)."""

    def __init__(self, scheduler: str | None = None, workers: int | None = None) -> None:
        self.scheduler, self.workers = scheduler, workers
        self.thread: threading.Thread | None = None
        self.error: str | None = None
        self.state: RunState = "idle"
        self.lock = threading.Lock()
        self.live = LiveCounts()
        self._cluster: KeptCluster | None = None

    @property
    def _client(self) -> Any:
        """The kept cluster's client, or None when none is up (never starts one)."""
        return None if self._cluster is None else self._cluster.client

    @property
    def client(self) -> Any:
        """The kept cluster's client, started on first use."""
        with self.lock:
            if self._cluster is None:
                self._cluster = KeptCluster(self.scheduler, self.workers)
            cluster = self._cluster
        try:
            return cluster.wait_ready()
        except BaseException:
            with self.lock:
                if self._cluster is cluster:
                    self._cluster = None
            raise

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def start(self, root: str, out: str, **options: Any) -> None:
        """Start `sn5dask run` on the kept cluster, in a background thread; returns at once
        (state "starting" until the cluster is up and the run has begun)."""
        from sn5dask.config import load_config
        from sn5dask.runner.pipeline import run

        with self.lock:
            if self.running:
                raise RuntimeError("a run started here is still going")
            config = load_config(None, root=root, out=out, scheduler=self.scheduler, **options)
            self.error = None
            self.state = "starting"
            self.live = LiveCounts()
            live = self.live

            def work() -> None:
                try:
                    client = self.client
                    self.state = "running"
                    run(config, client=client, reporter=live)
                    self.state = "finished"
                except Exception as exc:  # shown in the dashboard, never a dead thread
                    self.error = f"{type(exc).__name__}: {exc}"
                    self.state = "failed"
                live.changes += 1

            self.thread = threading.Thread(target=work, name="sn5dask-run", daemon=True)
            self.thread.start()

    def wait(self, timeout: float | None = None) -> None:
        if self.thread is not None:
            self.thread.join(timeout)

    def cost(self) -> ClusterCost | None:
        """The kept cluster's workers and their memory and CPU (from the scheduler's
        heartbeats), or None when no cluster is kept."""
        client = self._client
        if client is None:
            return None
        try:
            workers = client.scheduler_info(n_workers=-1).get("workers", {})
        except TypeError:  # distributed before n_workers
            workers = client.scheduler_info().get("workers", {})
        except Exception:  # a scheduler going away: say nothing rather than fail the page
            return None
        memory = sum(int(w.get("metrics", {}).get("memory", 0)) for w in workers.values())
        cpu = sum(float(w.get("metrics", {}).get("cpu", 0.0)) for w in workers.values())
        return ClusterCost(len(workers), memory, cpu, local=self.scheduler is None)

    def close_cluster(self, *, force: bool = False) -> None:
        """Close the kept cluster (a LocalCluster stops; a scheduler given is only
        disconnected from). Refused while a run started here goes, unless `force` (the
        server is stopping: the run fails, its finished chips stay in its manifest)."""
        if self.running and not force:
            raise RuntimeError("a run started here is still going")
        with self.lock:
            cluster, self._cluster = self._cluster, None
        if cluster is not None:
            cluster.close()

    def close(self) -> None:
        self.wait()
        self.close_cluster()
