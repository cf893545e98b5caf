"""The least work that makes sn5dask's GeoTIFF outputs, as a plain 2-process script: the
floor under any tool that makes them with GDAL, whatever its framework.

Per chip, nothing but the library calls the outputs need:
- scan pass: read bands 5,3,2 (rasterio), one `np.bincount` per band;
- then the exact AOI 2nd/98th percentiles from the summed histograms;
- write pass: read all 8 bands (the masks are zeroed where every band is 0), stretch by a
  lookup table, buffer the roads by 2 m in UTM (shapely + pyproj), rasterise once (the
  speed bin of the fastest road, rasterio.features), derive the binary, continuous, binned
  and 8-channel masks from it by lookup, and write the RGB and the four masks with
  sn5dask's codec settings (`core/outputspec.py`), tiled, straight to their files.

No fsync, no manifest, no STAC items, no folds, no logs, no checks of the input: it does
less than sn5dask, so no tool producing these files with GDAL can be much faster. It makes
the same kinds of file with the same encodings, not bit-identical ones: its continuous
mask uses the bin's upper speed rather than the road's, a road without a speed burns as
bin 1, its percentiles ignore nodata tags, and it assumes what `make_aoi.py` writes
(lon/lat chips, so the roads are rasterised with the image's own transform without
reprojection, and 1300 px chips, so the tile side is fixed at sn5dask's 656 px).
`bench_whole_process.py --floor` times it as a whole process next to sn5dask and the
plain script of `../shared/bench/`:

    python benchmarks/floor_script.py ROOT --out /tmp/floor [--procs 2]
    python benchmarks/floor_script.py ROOT --out /tmp/floor --stages   # CPU per step
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import pyproj
import rasterio
import shapely
from rasterio.features import rasterize

RGB_BANDS = (5, 3, 2)
PERCENTILES = (2.0, 98.0)
BUFFER_M = 2.0
BIN_MPH = 10.0
N_BINS = 7
MAX_MPH = 65.0
TILE = 656  # sn5dask's tile for a 1300 px chip (core/outputspec.block_size)
RGB_CODEC = {"compress": "deflate", "predictor": 2, "zlevel": 1}
MASK_CODEC = {"compress": "deflate", "zlevel": 5}


def chips(root: Path) -> list[tuple[Path, Path]]:
    """(image, label) pairs of every AOI under ROOT."""
    pairs = []
    for image in sorted(root.glob("*/PS-MS/*.tif")):
        label_name = image.name.replace("PS-MS", "geojson_roads_speed").replace(".tif", ".geojson")
        pairs.append((image, image.parent.parent / "geojson_roads_speed" / label_name))
    return pairs


def histograms(pair: tuple[Path, Path]) -> np.ndarray:
    with rasterio.open(pair[0]) as src:
        bands = src.read(RGB_BANDS)
    return np.stack([np.bincount(band.ravel(), minlength=65536) for band in bands])


def percentile(hist: np.ndarray, q: float) -> float:
    """numpy.percentile's 'linear' method over the values > 0 that `hist` counts."""
    counts = hist.copy()
    counts[0] = 0
    cumulative = np.cumsum(counts)
    n = int(cumulative[-1])
    position = (n - 1) * q / 100.0
    below, fraction = int(np.floor(position)), position - np.floor(position)
    low = int(np.searchsorted(cumulative, below + 1))
    high = int(np.searchsorted(cumulative, min(below + 2, n)))
    return low + (high - low) * fraction


def lookup_tables(hist_sum: np.ndarray) -> np.ndarray:
    values = np.arange(65536, dtype=np.float64)
    tables = []
    for hist in hist_sum:
        lo, hi = (percentile(hist, q) for q in PERCENTILES)
        scaled = np.clip((values - lo) / max(hi - lo, 1e-9) * 255.0, 0, 255)
        table = np.rint(scaled).astype(np.uint8)
        table[0] = 0
        tables.append(table)
    return np.stack(tables)


@functools.lru_cache(maxsize=8)
def utm_transformers(zone: int, south: bool) -> tuple[pyproj.Transformer, pyproj.Transformer]:
    """lon/lat to the UTM zone and back (made once per zone: each costs milliseconds)."""
    utm = pyproj.CRS.from_dict({"proj": "utm", "zone": zone, "south": south})
    return (pyproj.Transformer.from_crs(4326, utm, always_xy=True),
            pyproj.Transformer.from_crs(utm, 4326, always_xy=True))


def road_bins(label: Path, transform, shape) -> np.ndarray:
    """Per pixel, the speed bin (1..7) of the fastest road buffered over it; 0 elsewhere."""
    features = json.loads(label.read_text())["features"]
    if not features:
        return np.zeros(shape, np.uint8)
    lines = shapely.from_geojson([json.dumps(f["geometry"]) for f in features])
    mph = np.array([f["properties"].get("inferred_speed_mph", 0.0) for f in features])
    lon, lat = shapely.get_coordinates(lines).mean(axis=0)
    to_utm, back = utm_transformers(int((lon + 180) // 6) + 1, bool(lat < 0))
    buffered = shapely.buffer(shapely.transform(lines, lambda xy: np.column_stack(to_utm.transform(*xy.T))), BUFFER_M)
    polygons = shapely.transform(buffered, lambda xy: np.column_stack(back.transform(*xy.T)))
    bins = np.clip(np.ceil(mph / BIN_MPH), 1, N_BINS).astype(np.uint8)
    order = np.argsort(bins, kind="stable")  # later shapes win: the fastest last
    # rasterio reads plain coordinate lists faster than shapely's per-vertex tuples
    shapes = [({"type": "Polygon", "coordinates": [shapely.get_coordinates(ring).tolist()
                                                   for ring in (part.exterior, *part.interiors)]},
               int(bins[i]))
              for i in order for part in shapely.get_parts(polygons[i]) if not part.is_empty]
    return rasterize(shapes, out_shape=shape, transform=transform, fill=0, dtype="uint8")


def write(path: Path, array: np.ndarray, source_profile: dict, codec: dict) -> None:
    array = array if array.ndim == 3 else array[None]
    profile = {"driver": "GTiff", "width": array.shape[2], "height": array.shape[1],
               "count": array.shape[0], "dtype": "uint8", "crs": source_profile["crs"],
               "transform": source_profile["transform"], "tiled": True,
               "blockxsize": TILE, "blockysize": TILE,
               "interleave": "band" if array.shape[0] > 3 else "pixel", **codec}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array)


def chip_outputs(args: tuple[tuple[Path, Path], np.ndarray, Path]) -> dict[str, float]:
    """Write one chip's RGB and four masks; returns the CPU seconds of each step."""
    (image, label), tables, out = args
    cpu: dict[str, float] = {}
    clock = time.process_time()

    def step(name: str) -> None:
        nonlocal clock
        now = time.process_time()
        cpu[name] = now - clock
        clock = now

    with rasterio.open(image) as src:
        bands = src.read()
        profile = src.profile
    step("read 8 bands")
    rgb = np.stack([table[bands[b - 1]] for table, b in zip(tables, RGB_BANDS, strict=True)])
    step("stretch")
    stem = image.stem
    write(out / "PS-RGB" / f"{stem}.tif", rgb, profile, RGB_CODEC)
    step("RGB encode + write")
    bins = road_bins(label, profile["transform"], bands.shape[1:])
    bins[~bands.any(axis=0)] = 0
    del bands
    binary = np.where(np.arange(N_BINS + 1) > 0, 255, 0).astype(np.uint8)[bins]
    continuous = np.rint(np.minimum(np.arange(N_BINS + 1) * BIN_MPH, MAX_MPH) * 255 / MAX_MPH).astype(np.uint8)[bins]
    channels = np.zeros((N_BINS + 1, N_BINS + 1), np.uint8)
    channels[np.arange(1, N_BINS + 1), np.arange(N_BINS)] = 255
    channels[1:, N_BINS] = 255
    multichannel = np.moveaxis(channels[bins], -1, 0)
    binned = np.minimum(np.arange(N_BINS + 1) * 36, 255).astype(np.uint8)[bins]  # 36 k, as DESIGN.md
    step("labels, rasterise, 4 masks")
    for kind, mask in (("binary", binary), ("continuous", continuous), ("binned", binned),
                       ("multichannel", multichannel)):
        write(out / "masks" / kind / f"{stem}.tif", mask, profile, MASK_CODEC)
    step("4 mask encodes + writes")
    return cpu


def print_stages(pairs: list[tuple[Path, Path]], out: Path) -> None:
    """Each step's median CPU per chip, in this process (no pool)."""
    scans, hists = [], []
    for pair in pairs:
        started = time.process_time()
        hists.append(histograms(pair))
        scans.append(time.process_time() - started)
    tables = lookup_tables(sum(hists))
    steps = [chip_outputs((pair, tables, out)) for pair in pairs]
    print(f"scan: read bands 5,3,2 + 3 bincounts: {1000 * statistics.median(scans):.1f} ms")
    for name in steps[0]:
        print(f"{name}: {1000 * statistics.median(s[name] for s in steps):.1f} ms")
    total = statistics.median(scans) + statistics.median(sum(s.values()) for s in steps)
    print(f"whole chip (sum of medians): {1000 * total:.1f} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--stages", action="store_true", help="CPU of each step, in one process")
    args = parser.parse_args(argv)
    pairs = chips(args.root)
    if not pairs:
        print(f"{args.root}: no <AOI>/PS-MS/*.tif", file=sys.stderr)
        return 2
    shutil.rmtree(args.out, ignore_errors=True)
    for sub in ("PS-RGB", "masks/binary", "masks/continuous", "masks/binned", "masks/multichannel"):
        os.makedirs(args.out / sub)
    if args.stages:
        print_stages(pairs, args.out)
        return 0
    with Pool(args.procs) as pool:
        hist_sum = sum(pool.imap_unordered(histograms, pairs))
        tables = lookup_tables(hist_sum)
        list(pool.imap_unordered(chip_outputs, [(pair, tables, args.out) for pair in pairs]))
    print(f"{len(pairs)} chips -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
