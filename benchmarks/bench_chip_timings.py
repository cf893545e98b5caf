"""Each stage of the chip task as it runs on the workers of a real run (full-size chips,
2 workers, cluster started first and left out), from the timings every chip task returns,
and the median duration of the scan and chip tasks from dask's task stream.

    python ../shared/bench/make_aoi.py --chips 24 --out /tmp/aoi24
    python benchmarks/bench_chip_timings.py /tmp/aoi24
    PYTHONPATH=/tmp/before python benchmarks/bench_chip_timings.py /tmp/aoi24   # other code
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time

from distributed import get_task_stream

import sn5dask
from sn5dask.config import load_config
from sn5dask.runner.cluster import get_client


def task_ms(stream: list[dict], prefix: str) -> float:
    """Median compute time of the tasks whose key starts with `prefix`, ms."""
    durations = [
        part["stop"] - part["start"]
        for task in stream if str(task["key"]).startswith(prefix)
        for part in task["startstops"] if part["action"] == "compute"
    ]  # fmt: skip
    return statistics.median(durations) * 1e3 if durations else float("nan")


def measure_chip_timings(root: str) -> tuple[int, float, dict[str, float]]:
    """(chips, seconds with the cluster up, {stage or task: median ms})."""
    out = tempfile.mkdtemp(prefix="sn5dask-chip-timings-")
    config = load_config(None, root=root, out=out, formats="geotiff", overwrite=True)
    with get_client(workers=2) as client:
        client.run(lambda: None)
        started = time.perf_counter()
        with get_task_stream(client) as stream:
            summary = sn5dask.run(config, client=client)
        seconds = time.perf_counter() - started
    shutil.rmtree(out, ignore_errors=True)
    timings = summary.aois[0].timings
    stages = {stage: statistics.median(t.get(stage, 0.0) for t in timings) * 1e3
              for stage in sorted({name for t in timings for name in t})}
    stages["chip task"] = task_ms(stream.data, "process_chip")
    stages["scan task"] = task_ms(stream.data, "scan_chips")
    return summary.aois[0].processed, seconds, stages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="an AOI folder made by make_aoi.py")
    args = parser.parse_args()
    chips, seconds, stages = measure_chip_timings(args.root)
    print(f"{chips} chips in {seconds:.2f} s (cluster up before)")
    for stage, ms in stages.items():
        print(f"  {stage:12s} {ms:6.1f} ms{' (task stream)' if stage.endswith('task') else ''}")


if __name__ == "__main__":
    main()
