"""The fixed cost per chip: many tiny chips (64 x 64 px), so pixel work is negligible.

Prints the workers' CPU per chip (measured on the workers, cluster start-up left out), how
much of it ran in their task threads (the chip work) and in their other threads (dask's
event loop: messages, heartbeats, its profiler), the wall time per chip and the client's
peak RSS, for an AOI of `--chips` synthetic chips.

    python benchmarks/bench_small_chips.py [--chips 2000] [--size 64]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from pathlib import Path

import psutil

import sn5dask
from sn5dask.config import load_config
from sn5dask.runner.cluster import get_client
from sn5dask.synthetic import make_synthetic_aoi


def measure_small_chips(chips: int, size: int, formats: str = "geotiff,zarr") -> dict[str, float]:
    """Per chip: wall ms, workers' CPU ms (all, task threads), client CPU ms; and the
    client's peak RSS (MiB)."""

    def worker_cpu() -> tuple[float, float]:  # nested: pickled by value (workers can't import this file)
        import threading

        process = psutil.Process()
        times = process.cpu_times()
        task_threads = {t.native_id for t in threading.enumerate() if "Dask-Default-Threads" in t.name}
        in_tasks = sum(t.user_time + t.system_time for t in process.threads() if t.id in task_threads)
        return times.user + times.system, in_tasks

    work = Path(tempfile.mkdtemp(prefix="sn5dask-small-"))
    aoi = make_synthetic_aoi(work / "in", n_chips=chips, size=size, seed=2, roads_per_chip=(2, 4))
    with get_client(workers=2) as client:
        before = client.run(worker_cpu)
        client_cpu = time.process_time()
        started = time.perf_counter()
        summary = sn5dask.run(load_config(None, root=str(aoi.root), out=str(work / "out"),
                                          formats=formats), client=client)
        seconds = time.perf_counter() - started
        after = client.run(worker_cpu)
        client_cpu = time.process_time() - client_cpu
    if summary.aois[0].counts["failed"]:
        raise SystemExit(f"chips failed: {summary.aois[0].failures[:3]}")
    n = summary.aois[0].processed
    shutil.rmtree(work, ignore_errors=True)
    worker_s = sum(after[w][0] - before[w][0] for w in after)
    task_s = sum(after[w][1] - before[w][1] for w in after)
    return {"chips": n, "wall_ms": seconds / n * 1000, "worker_cpu_ms": worker_s / n * 1000,
            "task_thread_cpu_ms": task_s / n * 1000,
            "client_cpu_ms": client_cpu / n * 1000,
            "client_peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chips", type=int, default=2000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--formats", default="geotiff,zarr")
    args = parser.parse_args()
    r = measure_small_chips(args.chips, args.size, args.formats)
    print(f"{r['chips']:.0f} chips of {args.size} px ({args.formats}): {r['wall_ms']:.1f} ms wall per chip; "
          f"workers' CPU {r['worker_cpu_ms']:.1f} ms per chip ({r['task_thread_cpu_ms']:.1f} in task "
          f"threads, {r['worker_cpu_ms'] - r['task_thread_cpu_ms']:.1f} in the others); client CPU {r['client_cpu_ms']:.1f} ms "
          f"per chip; client peak RSS {r['client_peak_mib']:.0f} MiB")


if __name__ == "__main__":
    main()
