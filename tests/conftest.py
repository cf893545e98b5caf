"""Shared fixtures: reference data paths (used in place), tiny synthetic AOIs, a cluster."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

REPO = Path(__file__).resolve().parents[1]
REFDATA = Path(os.environ.get("SN5DASK_REFDATA", REPO.parent / "shared" / "refdata"))
CRESI_CASES = REFDATA / "cresi" / "cases"
S01 = CRESI_CASES / "s01_8bit_sn5_ps-ms"
S02 = CRESI_CASES / "s02_masks_sn3_img991"
SOLARIS_ROAD = REFDATA / "solaris" / "road"


# No test may probe the EC2 instance-metadata address for AWS credentials (it is not on
# this machine's loopback): botocore's chain stops before it. Tests that use S3 give a moto
# server's credentials explicitly.
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"


def pytest_configure(config: pytest.Config) -> None:
    if not REFDATA.is_dir():
        raise pytest.UsageError(
            f"reference data not found at {REFDATA}: check out ../shared beside the repo "
            "or set SN5DASK_REFDATA"
        )


@pytest.fixture(scope="session")
def small_aoi(tmp_path_factory: pytest.TempPathFactory):
    """A 6-chip 96 px synthetic AOI (edge cases included), written once per session."""
    from sn5dask.synthetic import make_synthetic_aoi

    root = tmp_path_factory.mktemp("small_aoi")
    return make_synthetic_aoi(root, n_chips=6, size=96, seed=3, roads_per_chip=(4, 8))


@pytest.fixture(scope="session")
def client():
    """One LocalCluster for the pipeline tests: 2 single-threaded worker processes."""
    from distributed import Client, LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    ) as cluster, Client(cluster) as c:
        yield c


def write_tif(
    path: Path,
    data: np.ndarray,
    *,
    crs: str | None = "EPSG:4326",
    transform: Affine | None = Affine(2.7e-6, 0, -115.2, 0, -2.7e-6, 36.18),
    nodata: float | None = None,
) -> Path:
    """Write a (band, y, x) array as a GeoTIFF (helper for hand-made cases)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {
        "driver": "GTiff",
        "height": data.shape[1],
        "width": data.shape[2],
        "count": data.shape[0],
        "dtype": data.dtype.name,
        "nodata": nodata,
    }
    if crs is not None:
        profile["crs"] = crs
    if transform is not None:
        profile["transform"] = transform
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path
