"""The fixed cost per chip: many tiny chips (64 x 64 px), so pixel work is negligible.

Prints the workers' CPU per chip (measured on the workers, cluster start-up left out), the
wall time per chip and the client's peak RSS, for an AOI of `--chips` synthetic chips.

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
from sn5dask.cluster import get_client
from sn5dask.config import load_config
from sn5dask.synthetic import make_synthetic_aoi


def worker_cpu() -> float:
    times = psutil.Process().cpu_times()
    return times.user + times.system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chips", type=int, default=2000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--formats", default="geotiff,zarr")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sn5dask-small-"))
    started = time.perf_counter()
    aoi = make_synthetic_aoi(work / "in", n_chips=args.chips, size=args.size, seed=2,
                             roads_per_chip=(2, 4))
    print(f"generated {args.chips} chips of {args.size} px in {time.perf_counter() - started:.0f} s")
    with get_client(workers=2) as client:
        before = sum(client.run(worker_cpu).values())
        client_cpu = time.process_time()
        started = time.perf_counter()
        summary = sn5dask.run(load_config(None, root=str(aoi.root), out=str(work / "out"),
                                          formats=args.formats), client=client)
        seconds = time.perf_counter() - started
        after = sum(client.run(worker_cpu).values())
        client_cpu = time.process_time() - client_cpu
    n = summary.aois[0].processed
    if summary.aois[0].counts["failed"]:
        raise SystemExit(f"chips failed: {summary.aois[0].failures[:3]}")
    print(f"{n} chips ({args.formats}): {seconds:.1f} s wall = {seconds / n * 1000:.1f} ms per chip; "
          f"workers' CPU {(after - before) / n * 1000:.1f} ms per chip; client CPU "
          f"{client_cpu / n * 1000:.1f} ms per chip; client peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
