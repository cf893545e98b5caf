"""Profile the worker processes of a real `sn5dask` run with py-spy (prints a summary).

    pip install py-spy
    python benchmarks/profile_workers.py [--chips 40] [--data DIR] [--formats geotiff,zarr]

Starts the same LocalCluster as `sn5dask run` (2 workers), attaches `py-spy record` to each
worker process, runs the job on the benchmark's full-size synthetic AOI and prints where
the workers' time went: by sn5dask stage (inclusive) and by leaf function (exclusive).
Raw py-spy stacks are kept in DIR/profile-<pid>.txt for flame graphs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run_benchmark import make_data  # noqa: E402

import sn5dask  # noqa: E402
from sn5dask.config import load_config  # noqa: E402
from sn5dask.runner.cluster import get_client  # noqa: E402

# Inclusive buckets: the first of these functions found on a stack (leaf first) names it.
STAGES = (
    ("scan_chip", "scan pass (read + histogram)"),
    ("_stretch", "stretch"),
    ("burn_chip_masks", "masks"),
    ("encode_geotiff", "GeoTIFF encode"),
    ("write_bytes_atomic", "GeoTIFF file write"),
    ("write_chip", "Zarr write"),
    ("read_chip", "read (write pass)"),
)


def summarise(raw_files: list[Path]) -> None:
    stages: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = 0
    for raw in raw_files:
        for line in raw.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            n = int(count)
            frames = stack.split(";")
            total += n
            leaves[frames[-1].split(" (")[0]] += n
            for function, label in STAGES:
                if any(f.startswith(f"{function} (") for f in frames):
                    stages[label] += n
                    break
            else:
                stages["idle / dask / other"] += n
    print(f"{total} samples over {len(raw_files)} workers")
    print("by stage (inclusive):")
    for label, n in stages.most_common():
        print(f"  {n / total:6.1%}  {label}")
    print("by leaf function (exclusive), top 15:")
    for name, n in leaves.most_common(15):
        print(f"  {n / total:6.1%}  {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chips", type=int, default=40)
    parser.add_argument("--formats", default="geotiff,zarr")
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "sn5dask-bench")
    args = parser.parse_args()
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    root = make_data(args.data, args.chips)
    out = args.data / "profile_out"
    shutil.rmtree(out, ignore_errors=True)
    with get_client(workers=2) as client:
        pids = client.run(os.getpid)
        spies = []
        raws = []
        for pid in pids.values():
            raw = args.data / f"profile-{pid}.txt"
            raws.append(raw)
            spies.append(subprocess.Popen(
                [py_spy, "record", "--pid", str(pid), "--rate", "200", "--format", "raw",
                 "--output", str(raw), "--nonblocking"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))  # fmt: skip
        time.sleep(1.0)  # let py-spy attach
        started = time.perf_counter()
        summary = sn5dask.run(load_config(None, root=str(root), out=str(out), formats=args.formats),
                              client=client)
        seconds = time.perf_counter() - started
        for spy in spies:
            spy.send_signal(signal.SIGINT)
        for spy in spies:
            spy.wait(60)
    print(f"{summary.aois[0].processed} chips in {seconds:.1f} s (cluster already up)")
    summarise([r for r in raws if r.exists()])


if __name__ == "__main__":
    main()
