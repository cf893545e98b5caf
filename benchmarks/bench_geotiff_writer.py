"""GeoTIFF encodes of every output kind: tifffile with GDAL's tags (what sn5dask writes)
against GDAL writing each file itself (what it wrote before), in one process, alternating.

Prints CPU ms per encode and file sizes per output kind, for 64 px and full-size chips:

    python benchmarks/bench_geotiff_writer.py [--repeat 200] [--repeat-full 6]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import rasterio.crs

from sn5dask.encodings import MASK_ENCODINGS, rgb_descriptions
from sn5dask.raster import ChipHeader, encode_geotiff, encode_geotiff_with_gdal


def outputs(size: int) -> dict[str, tuple[np.ndarray, dict]]:
    """A chip's five outputs: a textured RGB, masks with two crossing roads."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size, 0:size]
    base = np.sin(x / 37.0) * 40 + np.cos(y / 53.0) * 40 + 120
    rgb = np.stack([np.clip(base + rng.normal(0, 12, base.shape) + 10 * i, 1, 255) for i in range(3)])
    road = np.zeros((size, size), np.uint8)
    road[size // 2 : size // 2 + max(1, size // 32), :] = 255
    road[:, size // 4 : size // 4 + max(1, size // 40)] = 255
    cases = {"rgb": (rgb.astype(np.uint8), {"nodata": 0, "photometric": "RGB",
                                            "descriptions": rgb_descriptions((5, 3, 2))})}
    for kind, encoding in MASK_ENCODINGS.items():
        n = len(encoding.bands)
        mask = np.zeros((n, size, size), np.uint8)
        mask[0] = road
        mask[-1] = road
        cases[kind] = (mask if n > 1 else mask[0], {"is_mask": True, "descriptions": encoding.bands})
    return cases


def measure(size: int, repeat: int) -> None:
    wkt = rasterio.crs.CRS.from_epsg(32611).to_wkt()
    header = ChipHeader(size, size, 8, "uint16", (0.3, 0.0, 500000.0, 0.0, -0.3, 4e6), wkt, (None,) * 8)
    writers = {"tifffile + GDAL tags": lambda a, o: encode_geotiff(a, header, **o),
               "GDAL": lambda a, o: encode_geotiff_with_gdal(a, header, **o)}
    print(f"{size} px chip, DEFLATE, CPU ms per encode (best of 2 alternating passes of {repeat}) and bytes:")
    totals = dict.fromkeys(writers, 0.0)
    for kind, (array, options) in outputs(size).items():
        best = dict.fromkeys(writers, float("inf"))
        sizes = {}
        for _ in range(2):
            for name, writer in writers.items():
                sizes[name] = len(writer(array, options))  # warm: templates, caches
                started = time.process_time()
                for _ in range(repeat):
                    writer(array, options)
                best[name] = min(best[name], (time.process_time() - started) / repeat * 1e3)
        for name in writers:
            totals[name] += best[name]
        print(f"  {kind:13s} " + "  ".join(f"{name}: {best[name]:7.2f} ms {sizes[name]:>9,} B" for name in writers))
    print("  all five     " + "  ".join(f"{name}: {totals[name]:7.2f} ms" for name in writers))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=200, help="encodes per pass, 64 px chips")
    parser.add_argument("--repeat-full", type=int, default=6, help="encodes per pass, 1300 px chips")
    args = parser.parse_args()
    measure(64, args.repeat)
    measure(1300, args.repeat_full)


if __name__ == "__main__":
    main()
