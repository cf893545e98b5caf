"""Does having AWS credentials in the environment slow down reading *local* chips?

With AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY set, rasterio's default environment builds an
AWS session (boto3) at every open, local files included. sn5dask gives local opens no AWS
session (`raster.gdal_env(path)`) and sets AWS up once per process for s3:// paths only.
This prints ms per header read of a local chip, with and without credentials, for
rasterio's default environment and for sn5dask's.

    python benchmarks/bench_local_opens.py [--opens 300]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import rasterio

from sn5dask.io.raster import gdal_options, read_header
from sn5dask.synthetic import make_synthetic_aoi


def per_open_ms(read, path: str, opens: int) -> float:
    samples = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(opens // 5):
            read(path)
        samples.append((time.perf_counter() - started) / (opens // 5) * 1000)
    return statistics.median(samples)


def rasterio_default(path: str) -> None:
    with rasterio.Env(**gdal_options()), rasterio.open(path) as src:
        src.profile  # noqa: B018


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--opens", type=int, default=300)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="sn5dask-opens-"))
    chip = str(make_synthetic_aoi(folder, n_chips=1, size=64, with_edge_cases=False).images[0])
    for credentials in (False, True):
        if credentials:
            os.environ["AWS_ACCESS_KEY_ID"] = "AKIAEXAMPLEEXAMPLE00"
            os.environ["AWS_SECRET_ACCESS_KEY"] = "example-secret-not-used"
        else:
            os.environ.pop("AWS_ACCESS_KEY_ID", None)
            os.environ.pop("AWS_SECRET_ACCESS_KEY", None)
        label = "with AWS credentials" if credentials else "without credentials"
        default = per_open_ms(rasterio_default, chip, args.opens)
        ours = per_open_ms(read_header, chip, args.opens)
        print(f"{label:22s} rasterio's default env {default:6.2f} ms/open   sn5dask {ours:6.2f} ms/open")


if __name__ == "__main__":
    main()
