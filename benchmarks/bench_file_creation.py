"""CPU to create a chip's small output files: the floor under the fixed cost per chip.

A chip task writes ten files (five GeoTIFFs, five Zarr chunks), each as a `.partial` file
renamed into place (`files.write_bytes_atomic`). This loop does the same with 3 kB files in
ten folders, without flushing, once in each folder given (default: the temporary folder,
and /dev/shm when it exists), and prints the CPU per file:

    python benchmarks/bench_file_creation.py [--chips 2000] [FOLDER ...]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

FILES_PER_CHIP = 10
DATA = b"x" * 3000


def cpu_per_file_ms(base: str, chips: int) -> float:
    work = tempfile.mkdtemp(prefix="sn5dask-files-", dir=base)
    try:
        folders = [os.path.join(work, f"kind{i}") for i in range(FILES_PER_CHIP)]
        for folder in folders:
            os.makedirs(folder)
        started = time.process_time()
        for chip in range(chips):
            for folder in folders:
                path = os.path.join(folder, f"chip{chip}.tif")
                with open(path + ".partial", "wb") as f:
                    f.write(DATA)
                os.replace(path + ".partial", path)
        return (time.process_time() - started) / (chips * FILES_PER_CHIP) * 1e3
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chips", type=int, default=2000)
    parser.add_argument("folders", nargs="*")
    args = parser.parse_args()
    folders = args.folders or [tempfile.gettempdir(), *(["/dev/shm"] if os.path.isdir("/dev/shm") else [])]
    for folder in folders:
        ms = cpu_per_file_ms(folder, args.chips)
        print(f"{folder}: {ms:.3f} ms CPU per file, {ms * FILES_PER_CHIP:.2f} ms per chip of {FILES_PER_CHIP} files")


if __name__ == "__main__":
    main()
