"""The client at scale: a whole `sn5dask run` of a 20,000-chip AOI of tiny chips on an
external cluster (`dask scheduler` + `dask worker` processes, each in a folder of its own).

Prints the client's peak RSS, the time from the client's start to the cluster's first
task, and the time the client works alone: the part of the run's wall time in which no
worker runs any task (start-up, discovery and graph building before the first task,
between the scan and the write pass, and after the last chip: manifest, folds, STAC), as
a share of the wall. Task times come from the scheduler's task stream
(`Client.get_task_stream`); both clocks are this machine's.

    python benchmarks/bench_scale.py [--chips 20000] [--size 16] [--workers 2] [--data /tmp/sn5dask-scale]

The AOI is generated once under --data and reused (20,000 chips take a few minutes).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_cluster(workers: int, work: Path) -> tuple[str, list[subprocess.Popen]]:
    port = free_port()
    processes = [subprocess.Popen(
        [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port), "--dashboard-address", ":0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=work,
    )]  # fmt: skip
    address = f"tcp://127.0.0.1:{port}"
    for i in range(workers):
        folder = work / f"worker{i}"
        folder.mkdir()
        processes.append(subprocess.Popen(
            [str(BIN / "dask"), "worker", address, "--nthreads", "1", "--host", "127.0.0.1",
             "--no-dashboard", "--local-directory", str(folder)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=folder,
        ))  # fmt: skip
    from distributed import Client

    with Client(address, timeout=60) as client:
        client.wait_for_workers(workers, timeout=120)
    return address, processes


def covered(intervals: list[tuple[float, float]], start: float, stop: float) -> float:
    """Length of the union of `intervals` clipped to [start, stop]."""
    total, reach = 0.0, start
    for begin, end in sorted(intervals):
        begin, end = max(begin, reach), min(end, stop)
        if end > begin:
            total += end - begin
            reach = end
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chips", type=int, default=20000)
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--data", type=Path, default=Path("/tmp/sn5dask-scale"))
    parser.add_argument("--formats", default="geotiff")
    args = parser.parse_args()

    root = args.data / f"{args.chips}x{args.size}"
    if not (root / "done").exists():
        from sn5dask.synthetic import make_synthetic_aoi

        shutil.rmtree(root, ignore_errors=True)
        started = time.perf_counter()
        make_synthetic_aoi(root, n_chips=args.chips, size=args.size, seed=4, roads_per_chip=(1, 2))
        (root / "done").touch()
        print(f"generated {args.chips} chips in {time.perf_counter() - started:.0f} s")

    work = Path(tempfile.mkdtemp(prefix="sn5dask-scale-"))
    address, processes = start_cluster(args.workers, work)
    try:
        from distributed import Client

        with Client(address) as observer:
            observer.get_task_stream()  # starts the scheduler's task-stream plugin
            started = time.time()
            run = subprocess.run(
                [str(BIN / "sn5dask"), "run", str(root), "--out", str(work / "out"), "--scheduler", address,
                 "--formats", args.formats],
                capture_output=True, text=True, cwd=work,
            )  # fmt: skip
            stopped = time.time()
            if run.returncode != 0:
                raise SystemExit(f"sn5dask run failed ({run.returncode}):\n{run.stdout[-3000:]}")
            tasks = observer.get_task_stream(start=started - 1)
        peak_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB -> MiB
        intervals = [
            (part["start"], part["stop"]) for task in tasks for part in task["startstops"]
            if part["action"] == "compute"
        ]
        wall = stopped - started
        busy = covered(intervals, started, stopped)
        first = min(begin for begin, _ in intervals) - started
        last = stopped - max(end for _, end in intervals)
        print(f"chips: {args.chips} of {args.size} px, {args.workers} workers, formats {args.formats}")
        print(f"wall: {wall:.1f} s; tasks: {len(tasks)}")
        print(f"client peak RSS: {peak_rss:.0f} MiB")
        print(f"time to first task: {first:.1f} s")
        print(f"after the last task: {last:.1f} s")
        alone = wall - busy
        print(f"client alone (no task running): {alone:.1f} s = {alone / wall:.1%} of the wall")
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            process.wait(30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
