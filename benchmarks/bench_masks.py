"""Masks vs read, one full-size chip (prints its figures; not a test).

    python benchmarks/bench_masks.py [--roads 50] [--repeat 30]

Times, interleaved in one process so both see the same machine load:
- read: rasterio opens the 1300 x 1300 x 8 uint16 chip and reads all 8 bands;
- masks: all four mask arrays (binary, continuous, binned, 8-channel) of that chip from its
  GeoJSON text: parse, UTM buffer, one rasterisation, nodata zeroing, lookups. No writes.
Also times the straightforward way (one rasterisation per mask kind) for comparison.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import shapely
from rasterio.features import rasterize

from sn5dask.core.labels import parse_road_labels
from sn5dask.core.crs import reproject_geometries, utm_crs_containing
from sn5dask.io.burn import burn_chip_masks
from sn5dask.io.raster import read_header
from sn5dask.synthetic import make_synthetic_aoi


def per_mask_rasterise(labels, grid) -> dict[str, np.ndarray]:
    """The straightforward way: buffer, then rasterise each mask kind on its own."""
    lon, lat = grid.extent.centroid.to_crs("EPSG:4326").coords[0]
    utm = utm_crs_containing(lon, lat)
    projected = reproject_geometries(labels.lines, labels.crs, utm)
    buffered = reproject_geometries(shapely.buffer(projected, 2.0), utm, grid.crs.proj)
    order = np.argsort(np.nan_to_num(labels.speed_mph))
    shape = grid.shape.yx
    out = {}
    for kind, value in (
        ("binary", lambda s: 255),
        ("continuous", lambda s: min(255, int(255.0 * s / 65.0))),
        ("binned", lambda s: min(255, 36 * int(np.ceil(s / 10)))),
        ("channel", lambda s: min(7, int(np.ceil(s / 10)))),
    ):
        out[kind] = rasterize([(buffered[i], value(labels.speed_mph[i])) for i in order],
                              out_shape=shape, transform=grid.affine, dtype="uint8")
    multichannel = np.zeros((8,) + shape, np.uint8)
    for k in range(1, 8):
        multichannel[k - 1] = np.where(out["channel"] == k, 255, 0)
    multichannel[7] = out["binary"]
    out["multichannel"] = multichannel
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--roads", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="sn5dask-bench-masks-"))
    aoi = make_synthetic_aoi(root, n_chips=1, size=1300, roads_per_chip=(args.roads, args.roads),
                             with_edge_cases=False)
    image_path = str(aoi.images[0])
    text = aoi.labels[0].read_text()
    grid = read_header(image_path).grid
    with rasterio.open(image_path) as src:
        image = src.read()

    def read() -> None:
        with rasterio.open(image_path) as src:
            src.read()

    def masks() -> None:
        labels = parse_road_labels(text, "chip0.geojson")
        burn_chip_masks(labels, grid, image=image)

    def plain() -> None:
        per_mask_rasterise(parse_road_labels(text, "chip0.geojson"), grid)

    for fn in (read, masks, plain):  # warm-up: PROJ database, GDAL drivers, page cache
        fn()
    times: dict[str, list[float]] = {"read": [], "masks": [], "plain": []}
    for _ in range(args.repeat):
        for name, fn in (("read", read), ("masks", masks), ("plain", plain)):
            started = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - started) * 1000)

    def spread(values: list[float]) -> str:
        return f"min {min(values):.1f} / median {statistics.median(values):.1f} / max {max(values):.1f} ms"

    print(f"one 1300 x 1300 x 8 uint16 chip, {args.roads} roads, {args.repeat} interleaved runs")
    print(f"read all 8 bands (rasterio)            {spread(times['read'])}")
    print(f"all four masks (sn5dask, one burn)     {spread(times['masks'])}")
    print(f"all four masks (one rasterise per kind) {spread(times['plain'])}")
    ratios = [m / r for m, r in zip(times["masks"], times["read"], strict=True)]
    print(f"masks / read, per run: min {min(ratios):.2f} / median {statistics.median(ratios):.2f} / "
          f"max {max(ratios):.2f}")


if __name__ == "__main__":
    main()
