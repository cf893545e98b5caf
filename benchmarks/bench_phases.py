"""Where the whole-process time of `sn5dask run` goes, from outside the process: start-up
(until the dask dashboard line), the chips and the outputs (until the last line of the
summary), and the exit (last line to the end of every process holding its output), plus
the CPU seconds the whole machine spent meanwhile (/proc/stat; run it on a quiet machine)
and the peak RSS of the largest process of the run (client, fork server or a worker).

    python ../shared/bench/make_aoi.py --chips 24 --out /tmp/aoi24
    git worktree add /tmp/before <commit>          # optional: the code to compare with
    python benchmarks/bench_phases.py /tmp/aoi24 --pairs 3 --before /tmp/before

Runs alternate (this checkout, then `--before`), the first round warms the page cache and
is left out; medians are printed. CPU per chip: run it on two AOI sizes and divide the
difference of the CPU medians by the difference of the chip counts.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
MASKS = "binary,continuous,binned,multichannel"


def machine_cpu_seconds() -> float:
    """User + nice + system time of all CPUs since boot (/proc/stat)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:4]
    return sum(int(f) for f in fields) / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid: int, done: threading.Event, peak: list[float]) -> None:
    """Poll the RSS of `pid` and its descendants every 20 ms until `done`; keep the largest
    single process's in `peak[0]` (MiB)."""
    root = psutil.Process(pid)
    while not done.is_set():
        try:
            processes = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        for process in processes:
            try:
                peak[0] = max(peak[0], process.memory_info().rss / 2**20)
            except psutil.Error:
                pass
        done.wait(0.02)


def one_run(root: str, out: Path, code: str) -> tuple[float, float, float, float, float]:
    """(start-up, chips and outputs, exit, machine CPU) of one `sn5dask run` in seconds,
    and its largest process's peak RSS in MiB."""
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "sn5dask.cli", "run", root, "--out", str(out), "--workers", "2",
               "--masks", MASKS, "--formats", "geotiff", "--overwrite"]  # fmt: skip
    cpu = machine_cpu_seconds()
    started = time.perf_counter()
    process = subprocess.Popen(command, env={**os.environ, "PYTHONPATH": code}, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, cwd=out.parent)  # fmt: skip
    done, peak = threading.Event(), [0.0]
    watcher = threading.Thread(target=peak_rss_mib, args=(process.pid, done, peak))
    watcher.start()
    dashboard = last = None
    assert process.stdout is not None
    for line in process.stdout:  # read until every process holding the pipe has ended
        now = time.perf_counter() - started
        if dashboard is None and "dask dashboard" in line:
            dashboard = now
        last = now
    if process.wait() != 0 or dashboard is None or last is None:
        raise SystemExit(f"{code}: sn5dask run failed (exit {process.returncode})")
    ended = time.perf_counter() - started
    cpu = machine_cpu_seconds() - cpu
    done.set()
    watcher.join()
    return dashboard, last - dashboard, ended - last, cpu, peak[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="an AOI folder made by make_aoi.py")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--before", help="another sn5dask checkout to compare with")
    args = parser.parse_args()
    codes = {"this checkout": str(REPO)}
    if args.before:
        codes["--before"] = args.before
    work = Path(tempfile.mkdtemp(prefix="sn5dask-phases-"))
    runs: dict[str, list[tuple[float, float, float, float, float]]] = {name: [] for name in codes}
    try:
        for round_ in range(args.pairs + 1):
            for name, code in codes.items():
                result = one_run(args.root, work / "out", code)
                if round_:
                    runs[name].append(result)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for name, results in runs.items():
        start, chips, exit_, cpu, rss = (statistics.median(r[i] for r in results) for i in range(5))
        print(f"{name}: start-up {start:.2f} s, chips and outputs {chips:.2f} s, exit {exit_:.2f} s, "
              f"total {start + chips + exit_:.2f} s; machine CPU {cpu:.2f} s; largest process's "
              f"peak RSS {rss:.0f} MiB (medians of {len(results)})")


if __name__ == "__main__":
    main()
