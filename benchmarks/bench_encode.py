"""Codec, tile and read-path study on one full-size chip (prints its figures; not a test).

    python benchmarks/bench_encode.py [--repeat 15]

Makes one synthetic 1300 x 1300 x 8 uint16 chip (50 roads), runs sn5dask's own stretch and
mask burn on it, then times, interleaved in one process:
- reading bands 5,3,2 alone vs all 8 bands (then selecting 5,3,2);
- GeoTIFF encoding of the RGB and of the four masks with DEFLATE levels, ZSTD, LZW, none,
  RGB tile sizes, and the multichannel mask pixel- or band-interleaved, each with its
  encoded size;
- one chip's Zarr region write (`sn5dask.io.zarrstore.write_chip`).
These are the measurements behind the codec and tile settings in
`sn5dask/core/outputspec.py`, the multichannel layout in `sn5dask/core/profiles.py` and
the Zarr codec in `sn5dask/io/zarrstore.py` (benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import rasterio
from rasterio.io import MemoryFile

from sn5dask.core.labels import parse_road_labels
from sn5dask.core.masks import MASK_KINDS
from sn5dask.io.burn import burn_chip_masks
from sn5dask.core.stretch import (
    band_cut,
    band_histograms,
    percentiles_from_histogram,
    stretch_to_uint8,
)
from sn5dask.io import zarrstore as store
from sn5dask.io.raster import ChipHeader, read_chip
from sn5dask.synthetic import make_synthetic_aoi

BANDS = (5, 3, 2)


def encode(array: np.ndarray, header: ChipHeader, **creation: object) -> bytes:
    """A GeoTIFF of `array` on the chip's grid with the given creation options."""
    array = array if array.ndim == 3 else array[np.newaxis]
    profile: dict[str, object] = {
        "driver": "GTiff", "height": array.shape[1], "width": array.shape[2],
        "count": array.shape[0], "dtype": "uint8", "crs": header.crs_wkt,
        "transform": rasterio.Affine(*header.transform), "tiled": True,
        "blockxsize": 656, "blockysize": 656,
        "interleave": "pixel" if array.shape[0] <= 4 else "band",
    }  # fmt: skip
    profile.update(creation)
    with MemoryFile() as memfile:
        with memfile.open(**profile) as dst:
            dst.write(array)
        return memfile.read()


def timed_ms(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) * 1000


def spread(values: list[float]) -> str:
    return f"{min(values):6.1f} / {statistics.median(values):6.1f} / {max(values):6.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="sn5dask-bench-encode-"))
    aoi = make_synthetic_aoi(root, n_chips=1, size=1300, roads_per_chip=(50, 50), with_edge_cases=False)
    path = str(aoi.images[0])
    header, image = read_chip(path, BANDS, all_bands=True)
    selected = image[[b - 1 for b in BANDS]]
    cuts = [band_cut(*percentiles_from_histogram(h, (2, 98))) for h in band_histograms(selected)]
    rgb = stretch_to_uint8(selected, cuts)
    labels = parse_road_labels(aoi.labels[0].read_text(), "chip0.geojson")
    masks = burn_chip_masks(labels, header.grid, image=image)

    cases: dict[str, Callable[[], object]] = {
        "read bands 5,3,2": lambda: read_chip(path, BANDS),
        "read all 8, select 5,3,2": lambda: read_chip(path, BANDS, all_bands=True)[1][[4, 2, 1]],
    }
    sizes: dict[str, int] = {}
    rgb_codecs = {
        "DEFLATE 1 + predictor (sn5dask)": {"compress": "deflate", "zlevel": 1, "predictor": 2},
        "DEFLATE 6 + predictor": {"compress": "deflate", "zlevel": 6, "predictor": 2},
        "DEFLATE 6 (GDAL default)": {"compress": "deflate"},
        "ZSTD 1 + predictor": {"compress": "zstd", "zstd_level": 1, "predictor": 2},
        "DEFLATE 1 + pred., 512 px tiles": {"compress": "deflate", "zlevel": 1, "predictor": 2,
                                            "blockxsize": 512, "blockysize": 512},
        "DEFLATE 1 + pred., 1312 px tile": {"compress": "deflate", "zlevel": 1, "predictor": 2,
                                            "blockxsize": 1312, "blockysize": 1312},
        "DEFLATE 1 + pred., 64-row strips": {"compress": "deflate", "zlevel": 1, "predictor": 2,
                                             "tiled": False, "blockysize": 64},
    }  # fmt: skip
    for name, creation in rgb_codecs.items():
        label = f"RGB  {name}"
        cases[label] = lambda creation=creation, label=label: sizes.__setitem__(
            label, len(encode(rgb, header, photometric="RGB", nodata=0, **creation)))
    mask_codecs: dict[str, dict[str, object]] = {
        f"DEFLATE {level}" + (" (sn5dask)" if level == 5 else ""): {"compress": "deflate", "zlevel": level}
        for level in (1, 3, 5, 6, 7)
    }
    mask_codecs["ZSTD 1"] = {"compress": "zstd", "zstd_level": 1}
    mask_codecs["LZW"] = {"compress": "lzw"}
    mask_codecs["none"] = {}
    for name, creation in mask_codecs.items():
        label = f"4 masks  {name}"

        def all_masks(creation: dict[str, object] = creation, label: str = label) -> None:
            sizes[label] = sum(len(encode(masks[k], header, **creation)) for k in MASK_KINDS)

        cases[label] = all_masks
    for interleave in ("pixel", "band"):  # the multichannel mask's two layouts (core/profiles.py)
        label = f"multichannel  DEFLATE 5, {interleave}-interleaved"
        cases[label] = lambda interleave=interleave, label=label: sizes.__setitem__(
            label, len(encode(masks["multichannel"], header, compress="deflate", zlevel=5, interleave=interleave)))
    zarr_url = str(root / "bench.zarr")
    store.create_store(zarr_url, chip_ids=["c0"], headers={"c0": header}, bands=(5, 3, 2),
                       mask_kinds=MASK_KINDS, attrs={})
    cases["Zarr region write (RGB + 4 masks)"] = lambda: store.write_chip(zarr_url, 0, rgb, masks)

    for fn in cases.values():  # warm-up: GDAL drivers, page cache, zarr's event loop
        fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.repeat):
        for name, fn in cases.items():
            times[name].append(timed_ms(fn))

    print(f"one 1300 x 1300 x 8 uint16 chip, 50 roads; {args.repeat} interleaved runs (min / median / max)")
    for name, values in times.items():
        size = f"  {sizes[name] / 1e3:8.1f} kB" if name in sizes else ""
        print(f"{name:45s} {spread(values)}{size}")


if __name__ == "__main__":
    main()
