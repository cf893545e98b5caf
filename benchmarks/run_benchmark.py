"""sn5dask throughput and memory benchmark (prints its figures; not a test).

    python benchmarks/run_benchmark.py                       # 40 chips, 3 runs each
    python benchmarks/run_benchmark.py --chips 40 --repeat 3 --memory-sizes 10,40,160

Generates a full-size synthetic AOI (1300 x 1300 x 8 uint16, uncompressed and striped like
real SpaceNet PS-MS; 25-60 roads per chip) once under --data, then, in the same process
and for each repetition, times:
- sn5dask (`sn5dask.run` on the same LocalCluster `sn5dask run` starts: 2 single-threaded
  worker processes, cluster start-up included), GeoTIFF only and GeoTIFF + Zarr;
- the read floor and the straightforward 2-process script (benchmarks/plain_script.py);
- `sn5dask run` and the straightforward script each as a fresh process from the shell
  (interpreter start to exit: what a user waits for; issue 18 compares these two);
and prints chips/s (min/median/max), ratios measured within each repetition, CPU seconds
per chip, per-stage times, each chip's pixel-read count, and the peak RSS of the client and
of each worker at several AOI sizes. The page cache is warmed by a read pass first, and
dirty pages are flushed (`os.sync`) before each timed job.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import psutil

import sn5dask  # noqa: E402
from sn5dask.config import load_config  # noqa: E402
from sn5dask.runner.cluster import get_client  # noqa: E402
from sn5dask.synthetic import SYNTHETIC_AOI, make_synthetic_aoi  # noqa: E402

STAGES = ("read", "stretch", "masks", "write_rgb", "write_masks", "write_zarr")


def make_data(data_dir: Path, n_chips: int) -> Path:
    """The full-size AOI with `n_chips` (generated once, reused across runs)."""
    root = data_dir / f"aoi_{n_chips}"
    marker = root / ".complete"
    if not marker.exists():
        shutil.rmtree(root, ignore_errors=True)
        print(f"generating {n_chips} full-size chips in {root} ...", flush=True)
        make_synthetic_aoi(root, n_chips=n_chips, size=1300, seed=11, with_edge_cases=False)
        marker.touch()
    return root




def _worker_stats() -> dict:
    from sn5dask.io import raster

    process = psutil.Process()
    cpu = process.cpu_times()
    return {
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "cpu_s": cpu.user + cpu.system,
        "reads": dict(raster.PIXEL_READS),
        "ppid": os.getppid(),
    }


_SERVER_CPU_SEEN: dict[int, float] = {}


def fork_server_cpu(workers: dict) -> float:
    """CPU seconds the workers' fork server used since last asked (its imports, on the
    first run in this process). Forked workers' own CPU times leave it out; 0 with spawn."""
    total = 0.0
    for pid in {s["ppid"] for s in workers.values()} - {os.getpid()}:
        try:
            cpu = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        used = cpu.user + cpu.system
        total += used - _SERVER_CPU_SEEN.get(pid, 0.0)
        _SERVER_CPU_SEEN[pid] = used
    return total


class PeakRss:
    """Peak RSS of this (client) process while a run lasts, sampled every 20 ms."""

    def __enter__(self) -> "PeakRss":
        self.peak = psutil.Process().memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        process = psutil.Process()
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, process.memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_sn5dask(root: Path, out: Path, formats: str) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    settle()
    client_cpu = time.process_time()
    client_rss = PeakRss().__enter__()
    started = time.perf_counter()
    with get_client(workers=2) as client:  # the same LocalCluster `sn5dask run` starts
        summary = sn5dask.run(load_config(None, root=str(root), out=str(out), formats=formats),
                              client=client)
        seconds = time.perf_counter() - started
        workers = client.run(_worker_stats)
    client_rss.__exit__()
    aoi = summary.aois[0]
    assert summary.exit_code == 0 and aoi.counts["failed"] == 0, aoi.failures
    reads: Counter[str] = Counter()
    for stats in workers.values():
        reads.update(stats["reads"])
    return {
        "seconds": seconds,
        "chips": aoi.processed,
        "cpu_s": sum(s["cpu_s"] for s in workers.values())
        + fork_server_cpu(workers)
        + time.process_time()
        - client_cpu,
        "scan_s": aoi.scan_seconds,
        "stages": {k: [t[k] for t in aoi.timings if k in t] for k in STAGES},
        "reads": reads,
        "worker_peak_rss": sorted(s["peak_rss"] for s in workers.values()),
        "client_peak_rss": client_rss.peak,
    }


def run_cli(root: Path, out: Path) -> None:
    """`sn5dask run` as a user types it: a fresh process, interpreter start to exit."""
    script = Path(sys.executable).with_name("sn5dask")
    command = [str(script)] if script.exists() else [sys.executable, "-c",
                                                     "from sn5dask.cli import main; main()"]
    subprocess.run([*command, "run", str(root), "--out", str(out), "--formats", "geotiff"],
                   check=True, capture_output=True)


def run_plain_script(root: Path, out: Path) -> None:
    """The straightforward script as a practitioner runs it: a fresh process from the shell
    (interpreter start, its imports, its pool), like `run_cli`."""
    script = Path(__file__).resolve().with_name("plain_script.py")
    subprocess.run([sys.executable, str(script), str(root / SYNTHETIC_AOI), str(out)],
                   check=True, capture_output=True)


def settle() -> None:
    """Flush dirty pages left by the previous job before timing the next one.

    The straightforward script writes ~150 MB without fsync; the kernel writes it back
    ~30 s later (vm.dirty_expire_centisecs), in the middle of whichever job runs then.
    sn5dask fsyncs every output inside its own timing, so this only spares the others.
    """
    os.sync()


def timed(fn, *args) -> float:
    settle()
    started = time.perf_counter()
    fn(*args)
    return time.perf_counter() - started


def spread(values: list[float], fmt: str = "{:.2f}") -> str:
    return "min {} / median {} / max {}".format(*(fmt.format(v) for v in
                                                  (min(values), statistics.median(values), max(values))))


def mib(n: float) -> str:
    return f"{n / 2**20:.0f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chips", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--memory-sizes", default="10,40,160")
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "sn5dask-bench")
    parser.add_argument("--small-chips", type=int, default=1000,
                        help="chips of 64 px for the fixed cost per chip (0: skip)")
    parser.add_argument("--s3-chips", type=int, default=6,
                        help="full-size chips read from a moto S3 server, bytes counted (0: skip)")
    args = parser.parse_args()
    # Imported here, not at the top: dask's spawned workers re-import this script as
    # `__mp_main__`, and the reference script's geopandas would cost each sn5dask worker
    # ~0.27 s of imports that `sn5dask run` never pays.
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from plain_script import aoi_chips, plain_job, read_floor

    print(f"machine: {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, "
          f"python {sys.version.split()[0]}, sn5dask {sn5dask.__name__} "
          f"{__import__('importlib.metadata').metadata.version('sn5dask')}")
    root = make_data(args.data, args.chips)
    chips = aoi_chips(root / SYNTHETIC_AOI)
    paths = [p for p, _ in chips]
    out = args.data / "out"
    read_floor(paths)  # warm the page cache

    rows: dict[str, list[float]] = {
        k: [] for k in ("floor", "plain", "geotiff", "zarr", "cli", "plain_cli")
    }
    ratios: dict[str, list[float]] = {
        k: [] for k in ("vs_plain", "vs_floor", "zarr_vs_plain", "cli_vs_plain", "cli_vs_plain_cli")
    }
    runs = []
    for rep in range(args.repeat):
        floor_s = timed(read_floor, paths)
        plain_s = timed(plain_job, chips, str(args.data / "plain_out"))
        geotiff = run_sn5dask(root, out, "geotiff")
        zarr = run_sn5dask(root, out, "geotiff,zarr")
        shutil.rmtree(args.data / "out_cli", ignore_errors=True)
        cli_s = timed(run_cli, root, args.data / "out_cli")
        shutil.rmtree(args.data / "plain_out_cli", ignore_errors=True)
        plain_cli_s = timed(run_plain_script, root, args.data / "plain_out_cli")
        n = len(chips)
        rows["cli"].append(n / cli_s)
        rows["plain_cli"].append(n / plain_cli_s)
        ratios["cli_vs_plain"].append(plain_s / cli_s)
        ratios["cli_vs_plain_cli"].append(plain_cli_s / cli_s)
        rows["floor"].append(n / floor_s)
        rows["plain"].append(n / plain_s)
        rows["geotiff"].append(n / geotiff["seconds"])
        rows["zarr"].append(n / zarr["seconds"])
        ratios["vs_plain"].append(plain_s / geotiff["seconds"])
        ratios["vs_floor"].append(floor_s / geotiff["seconds"])
        ratios["zarr_vs_plain"].append(plain_s / zarr["seconds"])
        runs.append((geotiff, zarr))
        print(f"run {rep + 1}: floor {n / floor_s:.1f}, plain {n / plain_s:.2f}, "
              f"sn5dask {n / geotiff['seconds']:.2f}, sn5dask+zarr {n / zarr['seconds']:.2f}, "
              f"sn5dask CLI {n / cli_s:.2f}, plain script fresh {n / plain_cli_s:.2f} chips/s",
              flush=True)

    n = len(chips)
    print(f"\n== throughput, {n} full-size chips, 2 workers, warm cache, {args.repeat} runs ==")
    print(f"read floor (8 bands, 2 processes)   chips/s {spread(rows['floor'])}")
    print(f"straightforward 2-process script    chips/s {spread(rows['plain'])}")
    print(f"sn5dask, GeoTIFF RGB + 4 masks      chips/s {spread(rows['geotiff'])}")
    print(f"sn5dask, GeoTIFF + Zarr             chips/s {spread(rows['zarr'])}")
    print(f"sn5dask CLI, fresh process          chips/s {spread(rows['cli'])}")
    print(f"straightforward script, fresh process chips/s {spread(rows['plain_cli'])}")
    print(f"ratio sn5dask / straightforward     {spread(ratios['vs_plain'])}")
    print(f"ratio sn5dask+zarr / straightforward {spread(ratios['zarr_vs_plain'])}")
    print(f"ratio sn5dask CLI / straightforward {spread(ratios['cli_vs_plain'])} "
          "(the script timed in this process)")
    print(f"ratio both from a fresh process     {spread(ratios['cli_vs_plain_cli'])} "
          "(interpreter start to exit, each)")
    print(f"ratio sn5dask / read floor          {spread(ratios['vs_floor'])}")
    geotiff = runs[len(runs) // 2][0]
    zarr = runs[len(runs) // 2][1]
    print("\n== one sn5dask run (the median repetition) ==")
    for label, run in (("GeoTIFF", geotiff), ("GeoTIFF + Zarr", zarr)):
        print(f"{label}: CPU s per chip {run['cpu_s'] / n:.3f} (workers, their fork server, client; "
              f"start-up included); "
              f"histogram pass {run['scan_s']:.2f} s")
        for stage, values in run["stages"].items():
            if values:
                print(f"  {stage:12s} ms per chip: {spread([v * 1000 for v in values], '{:.1f}')}")
    counts = Counter(geotiff["reads"].values())
    print(f"pixel reads per chip: {dict(sorted(counts.items()))} (read count: number of chips)")
    print(f"peak RSS: client {mib(geotiff['client_peak_rss'])}, workers "
          f"{', '.join(mib(r) for r in geotiff['worker_peak_rss'])}")

    sizes = [int(s) for s in args.memory_sizes.split(",") if s]
    if sizes:
        print("\n== memory vs AOI size (GeoTIFF + Zarr) ==")
        for size in sizes:
            run = run_sn5dask(make_data(args.data, size), args.data / f"out_{size}", "geotiff,zarr")
            print(f"{size:4d} chips: {size / run['seconds']:.2f} chips/s, peak RSS client "
                  f"{mib(run['client_peak_rss'])}, workers "
                  f"{', '.join(mib(r) for r in run['worker_peak_rss'])}", flush=True)

    if args.small_chips:
        from bench_small_chips import measure_small_chips

        print(f"\n== fixed cost per chip ({args.small_chips} chips of 64 px, GeoTIFF + Zarr) ==")
        r = measure_small_chips(args.small_chips, 64)
        print(f"{r['wall_ms']:.1f} ms wall per chip; workers' CPU {r['worker_cpu_ms']:.1f} ms per chip; "
              f"client CPU {r['client_cpu_ms']:.1f} ms per chip", flush=True)
    if args.s3_chips:
        import statistics

        from bench_s3_bytes import measure_s3_bytes

        print(f"\n== S3 bytes per chip ({args.s3_chips} chips of 1300 px, moto on 127.0.0.1) ==")
        for label, (ratios, seconds) in measure_s3_bytes(args.s3_chips, 1300).items():
            print(f"{label:20s} bytes served / chip size: min {min(ratios):.3f} / median "
                  f"{statistics.median(ratios):.3f} / max {max(ratios):.3f}   run {seconds:.1f} s", flush=True)


if __name__ == "__main__":
    main()
