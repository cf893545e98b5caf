"""The fixed cost of the engine alone, as a whole process: start 2 worker processes, run
one trivial task on each, stop. multiprocessing.Pool (what the plain scripts use) against
distributed's LocalCluster with and without its dashboard (sn5dask prints the dashboard
link, DESIGN.md §6). None imports the chip work's libraries (numpy, rasterio): the
engine's cost alone. Alternating rounds, medians; wall time and the machine's CPU
(`/proc/stat`, so run it on a quiet machine).

    python benchmarks/bench_engine_startup.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from bench_whole_process import machine_cpu

ENGINES = {
    "multiprocessing.Pool(2)": """
from multiprocessing import Pool
with Pool(2) as pool:
    pool.map(abs, [1, 2])
""",
    "LocalCluster, 2 processes, dashboard": """
from dask.distributed import Client, LocalCluster
with LocalCluster(n_workers=2, threads_per_worker=1, processes=True) as cluster, Client(cluster) as client:
    client.gather(client.map(abs, [1, 2]))
""",
    "LocalCluster, 2 processes, no dashboard": """
from dask.distributed import Client, LocalCluster
with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \\
        Client(cluster) as client:
    client.gather(client.map(abs, [1, 2]))
""",
}


def measure_engines(rounds: int) -> dict[str, dict[str, float]]:
    """{engine: {"wall_s", "cpu_s"}}, medians of `rounds` alternating rounds after a
    warm-up round."""
    walls: dict[str, list[float]] = {name: [] for name in ENGINES}
    cpus: dict[str, list[float]] = {name: [] for name in ENGINES}
    for round_ in range(rounds + 1):  # the first round warms the page cache
        for name, code in ENGINES.items():
            cpu_before, started = machine_cpu(), time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True, stderr=subprocess.DEVNULL)
            if round_:
                walls[name].append(time.perf_counter() - started)
                cpus[name].append(machine_cpu() - cpu_before)
    return {name: {"wall_s": statistics.median(walls[name]), "cpu_s": statistics.median(cpus[name])}
            for name in ENGINES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    for name, r in measure_engines(args.rounds).items():
        print(f"{name}: wall {r['wall_s']:.2f} s, CPU {r['cpu_s']:.2f} s (medians of {args.rounds})")


if __name__ == "__main__":
    main()
