"""Making a chip task's small outputs durable: an fsync per file against one flush for the
task (`sn5dask.files.committed_together`). Prints CPU and wall ms per task.

    python benchmarks/bench_durable_writes.py [--tasks 300] [--files 10] [--size 3000]

Run it on the filesystem the outputs go to (`--dir`); the default is the temp folder.
A `syncfs` also writes out whatever else is dirty on that filesystem, so other writers
there (another worker, a copy) make both ways slower; dirty pages are flushed before each
timed pass.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

from sn5dask import files


def time_tasks(folder: str, tasks: int, per_task: int, data: bytes, together: bool) -> tuple[float, float]:
    """(CPU ms, wall ms) per task of `per_task` atomic writes."""
    cpu, wall = time.process_time(), time.perf_counter()
    for task in range(tasks):
        if together:
            with files.committed_together():
                for i in range(per_task):
                    files.write_bytes_atomic(os.path.join(folder, f"t{task}_{i}.tif"), data)
        else:
            for i in range(per_task):
                files.write_bytes_atomic(os.path.join(folder, f"t{task}_{i}.tif"), data)
    return ((time.process_time() - cpu) / tasks * 1e3, (time.perf_counter() - wall) / tasks * 1e3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=300)
    parser.add_argument("--files", type=int, default=10)
    parser.add_argument("--size", type=int, default=3000)
    parser.add_argument("--dir", default=tempfile.gettempdir())
    args = parser.parse_args()
    data = os.urandom(args.size)
    device = os.stat(args.dir).st_dev
    print(f"{args.dir}: {files._filesystem_type(device)}, one syncfs per task: "
          f"{files._syncfs() is not None and files._flushed_by_syncfs(device)}")
    for together in (False, True, False, True):  # alternating, as the machine drifts
        folder = tempfile.mkdtemp(dir=args.dir)
        os.sync()  # start clean: a syncfs also writes whatever else is dirty on the filesystem
        cpu, wall = time_tasks(folder, args.tasks, args.files, data, together)
        label = "flushed together" if together else "fsync per file  "
        print(f"{label}: {cpu:.2f} ms CPU, {wall:.2f} ms wall per task of {args.files} files")
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
