"""Worker memory over one run (prints its figures; not a test).

    python benchmarks/memory_trace.py --chips 160 [--data DIR]

Runs `sn5dask run` (GeoTIFF + Zarr) on the full-size synthetic AOI that
`run_benchmark.py` generates under --data, samples every worker's RSS every 20 ms from
the client, and prints each worker's peak in the histogram pass and in each quarter of
the write pass: a plateau means memory does not grow with the number of chips done.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

import sn5dask
from sn5dask.config import load_config
from sn5dask.runner.cluster import get_client


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chips", type=int, default=160)
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "sn5dask-bench")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from run_benchmark import make_data

    root = make_data(args.data, args.chips)
    out = args.data / f"out_trace_{args.chips}"
    shutil.rmtree(out, ignore_errors=True)
    with get_client(workers=2) as client:
        workers = [psutil.Process(pid) for pid in client.run(os.getpid).values()]
        samples: list[tuple[float, list[float]]] = []
        stop = threading.Event()
        started = time.perf_counter()

        def sample() -> None:
            while not stop.wait(0.02):
                rss = [w.memory_info().rss / 2**20 for w in workers]
                samples.append((time.perf_counter() - started, rss))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        summary = sn5dask.run(load_config(None, root=str(root), out=str(out), formats="geotiff,zarr"),
                              client=client)
        stop.set()
        sampler.join()
    scan_end = summary.aois[0].scan_seconds
    scan = [rss for t, rss in samples if t <= scan_end]
    write = [rss for t, rss in samples if t > scan_end]

    def peaks(rows: list[list[float]]) -> str:
        return ", ".join(f"{max(r[i] for r in rows):.0f}" for i in range(len(workers))) + " MiB"

    print(f"{args.chips} chips, 2 workers, GeoTIFF + Zarr; worker RSS sampled every 20 ms")
    print(f"histogram pass ({scan_end:.1f} s): peak {peaks(scan)}")
    quarter = max(1, len(write) // 4)
    for k in range(4):
        rows = write[k * quarter : (k + 1) * quarter if k < 3 else len(write)]
        if rows:
            print(f"write pass, quarter {k + 1}: peak {peaks(rows)}")


if __name__ == "__main__":
    main()
