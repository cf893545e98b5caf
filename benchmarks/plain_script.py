"""The references sn5dask is measured against, run in the same benchmark process:

- `read_floor`: rasterio reads all 8 bands of every chip in 2 processes, nothing else.
- `plain_job`: the job done the straightforward way with multiprocessing (no dask):
  histogram pass (bands 5,3,2, `np.bincount` per band), exact percentiles, a second read,
  LUT stretch, one rasterise per mask kind, DEFLATE (level 6, GDAL's default) GeoTIFFs.
  As a script, whole process from the shell as a practitioner runs it:
  `python benchmarks/plain_script.py AOI_FOLDER OUT` (AOI_FOLDER holds `PS-MS/` and
  `geojson_roads_speed/`).

Both use plain rasterio/geopandas/shapely the way a practitioner would write them.
"""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
from rasterio.features import rasterize

from sn5dask.core.stretch import percentiles_from_histogram

BANDS = [5, 3, 2]


def _read_all(path: str) -> int:
    with rasterio.open(path) as src:
        return int(src.read().shape[0])


def read_floor(paths: list[str], processes: int = 2) -> None:
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        pool.map(_read_all, paths, chunksize=1)


def _histogram(path: str) -> np.ndarray:
    with rasterio.open(path) as src:
        data = src.read(BANDS)
    hist = np.stack([np.bincount(band.ravel(), minlength=65536) for band in data])
    hist[:, 0] = 0
    return hist


def _write_chip(job: tuple[str, str | None, list[tuple[float, float]], str]) -> None:
    path, label, cuts, out_dir = job
    with rasterio.open(path) as src:
        data = src.read()
        profile = src.profile
    name = Path(path).name.replace("PS-MS", "PS-RGB")
    rgb = np.empty((3,) + data.shape[1:], np.uint8)
    values = np.arange(65536, dtype=np.float64)
    for i, (band, (lo, hi)) in enumerate(zip(BANDS, cuts, strict=True)):
        lo = max(1.0, lo)
        lut = np.clip(np.floor((values - lo) * 255 / (hi - lo) + 0.5), 0, 255).astype(np.uint8)
        lut[0] = 0
        rgb[i] = lut[data[band - 1]]
    out_profile = {
        "driver": "GTiff", "height": data.shape[1], "width": data.shape[2], "dtype": "uint8",
        "crs": profile["crs"], "transform": profile["transform"], "compress": "deflate",
        "tiled": True, "blockxsize": 512, "blockysize": 512,
    }  # fmt: skip
    with rasterio.open(f"{out_dir}/rgb_{name}", "w", count=3, nodata=0, **out_profile) as dst:
        dst.write(rgb)
    if label is None:
        return
    roads = gpd.read_file(label)
    if len(roads) == 0:
        shapes_by_speed: list[tuple[object, float]] = []
    else:
        utm = roads.estimate_utm_crs()
        buffered = roads.to_crs(utm).buffer(2).to_crs(profile["crs"])
        speeds = roads["inferred_speed_mph"].to_numpy(dtype=float)
        order = np.argsort(speeds)
        shapes_by_speed = [(buffered.iloc[i], speeds[i]) for i in order]
    shape = data.shape[1:]
    transform = profile["transform"]

    def burn(values_of) -> np.ndarray:
        if not shapes_by_speed:
            return np.zeros(shape, np.uint8)
        return rasterize([(g, values_of(s)) for g, s in shapes_by_speed], out_shape=shape,
                         transform=transform, dtype="uint8")

    binary = burn(lambda s: 255)
    continuous = burn(lambda s: min(255, int(255.0 * s / 65.0)))
    binned = burn(lambda s: min(255, 36 * int(np.ceil(s / 10))))
    multichannel = np.zeros((8,) + shape, np.uint8)
    channel = burn(lambda s: min(7, int(np.ceil(s / 10))))
    for k in range(1, 8):
        multichannel[k - 1] = np.where(channel == k, 255, 0)
    multichannel[7] = binary
    for kind, mask in (("binary", binary), ("continuous", continuous), ("binned", binned),
                       ("multichannel", multichannel)):  # fmt: skip
        mask = mask if mask.ndim == 3 else mask[np.newaxis]
        with rasterio.open(f"{out_dir}/{kind}_{name}", "w", count=mask.shape[0], **out_profile) as dst:
            dst.write(mask)


def plain_job(chips: list[tuple[str, str | None]], out_dir: str, processes: int = 2) -> None:
    os.makedirs(out_dir, exist_ok=True)
    paths = [p for p, _ in chips]
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        total = sum(pool.map(_histogram, paths, chunksize=1))
        cuts = [tuple(percentiles_from_histogram(total[i], [2, 98])) for i in range(3)]
        pool.map(_write_chip, [(p, label, cuts, out_dir) for p, label in chips], chunksize=1)


def aoi_chips(aoi_folder: Path) -> list[tuple[str, str | None]]:
    """(image, label or None) of every chip of a SpaceNet-style AOI folder."""
    pairs = []
    for image in sorted((aoi_folder / "PS-MS").glob("*.tif")):
        label = aoi_folder / "geojson_roads_speed" / image.name.replace(
            "PS-MS", "geojson_roads_speed").replace(".tif", ".geojson")
        pairs.append((str(image), str(label) if label.exists() else None))
    return pairs


if __name__ == "__main__":
    import sys

    plain_job(aoi_chips(Path(sys.argv[1])), sys.argv[2])
