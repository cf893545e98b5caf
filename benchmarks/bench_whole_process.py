"""`sn5dask run` as a whole process (interpreter start to exit) on full-size chips, against
another checkout of sn5dask and the plain 2-process script, alternating, as issue reviews
compare them. Prints each run's wall time and the medians.

    python ../shared/bench/make_aoi.py --chips 24 --out /tmp/aoi24
    git worktree add /tmp/before <commit>          # the code to compare with (optional)
    python benchmarks/bench_whole_process.py /tmp/aoi24 --pairs 5 --before /tmp/before

The first round warms the page cache and is left out. `--before` runs the other checkout
with PYTHONPATH pointing at it (same interpreter and libraries; its own dependencies, e.g.
tifffile for code before 2026-12-06, must be installed). The plain script is
`../shared/bench/bench_ops.py pipeline` (`--no-script` leaves it out). `--floor` adds
`floor_script.py`, the least work that makes the same GeoTIFFs (its docstring says what it
leaves out). CPU is the whole machine's (`/proc/stat`, every process a run starts however
it forks, e.g. dask's workers under their fork server), so run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PLAIN_SCRIPT = REPO.parent / "shared" / "bench" / "bench_ops.py"
MASKS = "binary,continuous,binned,multichannel"


SN5DASK = "sn5dask (this checkout)"
BEFORE = "sn5dask (--before)"
PLAIN = "plain script"
FLOOR = "floor script"


def measure_whole_process(
    root: str, pairs: int, *, before: str | None = None, formats: str = "geotiff",
    script: bool = True, floor: bool = False, verbose: bool = True,
) -> dict[str, dict[str, float]]:
    """{command: {"wall_s", "cpu_s", "cpu_ms_per_chip"}}, medians of `pairs` alternating
    rounds after one warm-up round."""
    out = Path(tempfile.mkdtemp(prefix="sn5dask-whole-"))
    sn5dask = [sys.executable, "-m", "sn5dask.cli", "run", root, "--workers", "2",
               "--masks", MASKS, "--formats", formats, "--overwrite"]  # fmt: skip
    commands: dict[str, tuple[list[str], dict[str, str]]] = {
        SN5DASK: (sn5dask + ["--out", str(out / "this")], {"PYTHONPATH": str(REPO)}),
    }
    if before:
        commands[BEFORE] = (sn5dask + ["--out", str(out / "before")], {"PYTHONPATH": before})
    if script:
        commands[PLAIN] = ([sys.executable, str(PLAIN_SCRIPT), "pipeline", "--root", root,
                            "--procs", "2", "--out", str(out / "script")], {})  # fmt: skip
    if floor:
        commands[FLOOR] = ([sys.executable, str(REPO / "benchmarks" / "floor_script.py"), root,
                            "--procs", "2", "--out", str(out / "floor")], {})  # fmt: skip
    n_chips = len(list(Path(root).glob("*/PS-MS/*.tif")))
    walls: dict[str, list[float]] = {name: [] for name in commands}
    cpus: dict[str, list[float]] = {name: [] for name in commands}
    try:
        for round_ in range(pairs + 1):
            for name, (command, env) in commands.items():
                for folder in out.iterdir():
                    shutil.rmtree(folder)
                cpu_before = machine_cpu()
                started = time.perf_counter()
                done = subprocess.run(command, check=False, env={**os.environ, **env}, cwd=out,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
                wall = time.perf_counter() - started
                cpu = machine_cpu() - cpu_before
                if done.returncode != 0:
                    sys.exit(f"{name} failed: {done.stderr[-2000:]}")
                if round_:
                    walls[name].append(wall)
                    cpus[name].append(cpu)
                if verbose:
                    print(f"{'warm-up' if not round_ else f'round {round_}'}: {name}: {wall:.2f} s, "
                          f"CPU {cpu:.2f} s", flush=True)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return {name: {"wall_s": statistics.median(walls[name]), "wall_min_s": min(walls[name]),
                   "wall_max_s": max(walls[name]), "cpu_s": statistics.median(cpus[name]),
                   "cpu_ms_per_chip": 1000 * statistics.median(cpus[name]) / max(n_chips, 1)}
            for name in commands}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="an AOI folder made by make_aoi.py")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--before", help="another sn5dask checkout to compare with")
    parser.add_argument("--formats", default="geotiff")
    parser.add_argument("--no-script", action="store_true")
    parser.add_argument("--floor", action="store_true", help="also time floor_script.py")
    args = parser.parse_args()
    results = measure_whole_process(args.root, args.pairs, before=args.before, formats=args.formats,
                                    script=not args.no_script, floor=args.floor)
    for name, r in results.items():
        print(f"{name}: median {r['wall_s']:.2f} s (min {r['wall_min_s']:.2f}, max {r['wall_max_s']:.2f}) "
              f"over {args.pairs} runs; CPU {r['cpu_s']:.2f} s, {r['cpu_ms_per_chip']:.0f} ms per chip")


def machine_cpu() -> float:
    """CPU seconds the machine has spent busy since boot (user, nice, system, irq, softirq)."""
    with open("/proc/stat") as stat:
        fields = stat.readline().split()[1:8]
    user, nice, system, _idle, _iowait, irq, softirq = map(int, fields)
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    main()
