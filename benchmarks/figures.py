"""The current figures, in one table: runs the benchmarks below on this machine and prints
the table `docs/performance.md` shows; `--write` replaces that table in place.

    python benchmarks/figures.py [--write] [--pairs 3]

| row | from |
|---|---|
| whole process, 24 and 8 full-size chips: sn5dask, the plain script, the floor | `bench_whole_process.py --floor` |
| engine start and stop | `bench_engine_startup.py` |
| chip and scan task on the workers | `bench_chip_timings.py` |
| S3 bytes per chip | `bench_s3_bytes.py` (moto on 127.0.0.1) |
| worker CPU per 64 px chip, 2,000 chips | `bench_small_chips.py` |

The AOIs of full-size chips are made by `../shared/bench/make_aoi.py` in the temporary
folder when `--aoi24` / `--aoi8` do not exist. About 2.5 minutes on the 2-core VM; run it on
a quiet machine (CPU is the whole machine's).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import bench_chip_timings
import bench_engine_startup
import bench_s3_bytes
import bench_small_chips
import bench_whole_process as whole

REPO = Path(__file__).resolve().parents[1]
MAKE_AOI = REPO.parent / "shared" / "bench" / "make_aoi.py"
DOC = REPO / "docs" / "performance.md"
BEGIN, END = "<!-- figures.py: begin -->", "<!-- figures.py: end -->"


def aoi(path: str, chips: int) -> str:
    if not Path(path).exists():
        subprocess.run([sys.executable, str(MAKE_AOI), "--chips", str(chips), "--out", path], check=True,
                       stdout=subprocess.DEVNULL)
    return path


def table(pairs: int, aoi24: str, aoi8: str) -> str:
    big = whole.measure_whole_process(aoi(aoi24, 24), pairs, floor=True, verbose=False)
    small = whole.measure_whole_process(aoi(aoi8, 8), pairs, floor=True, verbose=False)
    engines = bench_engine_startup.measure_engines(pairs)
    chips, _, stages = bench_chip_timings.measure_chip_timings(aoi24)
    s3 = bench_s3_bytes.measure_s3_bytes(12, 1300)["with chip copies"][0]
    small_chips = bench_small_chips.measure_small_chips(2000, 64)
    plain = big[whole.PLAIN]["wall_s"]
    rows = ["| figure | sn5dask | plain script | floor script |", "|---|---|---|---|"]
    for n, results in ((24, big), (8, small)):
        cells = [f"{r['wall_s']:.2f} s ({plain / r['wall_s']:.2f} ×), CPU {r['cpu_s']:.2f} s"
                 if n == 24 else f"{r['wall_s']:.2f} s, CPU {r['cpu_s']:.2f} s"
                 for r in (results[whole.SN5DASK], results[whole.PLAIN], results[whole.FLOOR])]
        label = f"whole process, {n} full-size chips{' (× the plain script)' if n == 24 else ''}"
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    per_chip = []
    for name in (whole.SN5DASK, whole.PLAIN, whole.FLOOR):
        wall = (big[name]["wall_s"] - small[name]["wall_s"]) / 16 * 1000
        cpu = (big[name]["cpu_s"] - small[name]["cpu_s"]) / 16 * 1000
        per_chip.append(f"{wall:.0f} ms wall, {cpu:.0f} ms CPU")
    rows.append("| each further full-size chip (24 vs 8) | " + " | ".join(per_chip) + " |")
    engine = {name: f"{r['wall_s']:.2f} s, CPU {r['cpu_s']:.2f} s" for name, r in engines.items()}
    rows.append(f"| engine start and stop, 2 processes | LocalCluster: "
                f"{engine['LocalCluster, 2 processes, dashboard']} (no dashboard: "
                f"{engine['LocalCluster, 2 processes, no dashboard']}) | "
                f"Pool: {engine['multiprocessing.Pool(2)']} | Pool, as the plain script |")
    rows.append(f"| chip task / scan task on a worker, {chips} full-size chips | "
                f"{stages['chip task']:.0f} ms / {stages['scan task']:.0f} ms | | |")
    rows.append(f"| S3 bytes served per chip / its size, 12 full-size chips | "
                f"max {max(s3):.3f} (limit 1.05) | | |")
    rows.append(f"| worker CPU per 64 px chip, 2,000 chips, GeoTIFF + Zarr | "
                f"{small_chips['worker_cpu_ms']:.1f} ms (limit 25) | | |")
    machine = (f"{datetime.date.today()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
               f"medians of {pairs} alternating rounds")
    return "\n".join([f"Measured by `python benchmarks/figures.py --write` ({machine}):", "", *rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--aoi24", default="/tmp/aoi24")
    parser.add_argument("--aoi8", default="/tmp/aoi8")
    parser.add_argument("--write", action="store_true", help=f"replace the table in {DOC}")
    args = parser.parse_args()
    text = table(args.pairs, args.aoi24, args.aoi8)
    print(text)
    if args.write:
        doc = DOC.read_text()
        if BEGIN not in doc or END not in doc:
            sys.exit(f"{DOC}: no {BEGIN} ... {END} block to replace")
        doc = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: f"{BEGIN}\n{text}\n{END}", doc,
                     flags=re.DOTALL)
        DOC.write_text(doc)
        print(f"written to {DOC}")


if __name__ == "__main__":
    main()
