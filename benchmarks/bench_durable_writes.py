"""Making a chip task's small outputs durable: each written on its own (fsync, rename, fsync
of the folder) against written together (`sn5dask.io.files.committed_together`: every file
fsynced, then all renamed, then each folder fsynced once). Prints CPU and wall ms per task.

    python benchmarks/bench_durable_writes.py [--tasks 300] [--files 10] [--size 3000]

Run it on the filesystem the outputs go to (`--dir`); the default is the temp folder.
Other writers on that filesystem make both ways slower; dirty pages are flushed before
each timed pass.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

from sn5dask.io import files


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
    print(f"{args.dir}: {args.tasks} tasks of {args.files} files of {args.size} bytes")
    for together in (False, True, False, True):  # alternating, as the machine drifts
        folder = tempfile.mkdtemp(dir=args.dir)
        os.sync()  # start clean
        cpu, wall = time_tasks(folder, args.tasks, args.files, data, together)
        label = "written together" if together else "each on its own "
        print(f"{label}: {cpu:.2f} ms CPU, {wall:.2f} ms wall per task of {args.files} files")
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
