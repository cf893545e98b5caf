"""How many bytes of each S3 chip cross the network in a run?

A moto S3 server on 127.0.0.1 behind a counting proxy (both from tests/procs.py) serves a
synthetic AOI; `sn5dask run` reads it with 2 workers, once with the worker-local chip
copies (`sn5dask.io.chipcache`, the default) and once without them
(`DASK_SN5DASK__CHIP_CACHE_BYTES=0`). Prints, per run, the bytes served for each chip's
image over the image's size (min / median / max) and the wall time.

    python benchmarks/bench_s3_bytes.py [--chips 12] [--size 1300]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sn5dask.synthetic import make_synthetic_aoi  # noqa: E402
from tests.procs import FaultyProxy, moto_server, sn5dask_cli, upload_tree  # noqa: E402


def measure_s3_bytes(chips: int, size: int) -> dict[str, tuple[list[float], float]]:
    """{run label: (bytes served / image size per chip, run seconds)}, with and without the
    worker-local chip copies."""
    work = Path(tempfile.mkdtemp(prefix="sn5dask-s3-bytes-"))
    aoi = make_synthetic_aoi(work / "in", n_chips=chips, size=size, seed=1)
    results: dict[str, tuple[list[float], float]] = {}
    with moto_server() as env:
        upload_tree(env, aoi.root, "bench")
        for label, extra in (("with chip copies", {}), ("without (cache 0)", {"DASK_SN5DASK__CHIP_CACHE_BYTES": "0"})):
            with FaultyProxy(env["AWS_ENDPOINT_URL"], lambda *a: False) as proxy:
                started = time.perf_counter()
                out = work / label.split()[0]
                process = sn5dask_cli("run", "s3://bench/in", "--out", out, "--workers", "2",
                                      "--formats", "geotiff", env={**env, "AWS_ENDPOINT_URL": proxy.url, **extra})
                output, _ = process.communicate(timeout=1800)
                seconds = time.perf_counter() - started
                if process.returncode != 0:
                    raise SystemExit(output)
                ratios = [proxy.bytes_served.get(f"/bench/in/{image.relative_to(aoi.root)}", 0) / image.stat().st_size
                          for image in aoi.images]
            results[label] = (ratios, seconds)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chips", type=int, default=12)
    parser.add_argument("--size", type=int, default=1300)
    args = parser.parse_args()
    for label, (ratios, seconds) in measure_s3_bytes(args.chips, args.size).items():
        print(f"{label:20s} bytes served / chip size: min {min(ratios):.3f} / median "
              f"{statistics.median(ratios):.3f} / max {max(ratios):.3f}   run {seconds:.1f} s "
              f"({args.chips} chips of {args.size} px)")


if __name__ == "__main__":
    main()
