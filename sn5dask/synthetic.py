"""Deterministic synthetic SpaceNet-5-like AOIs for the demo, tests and benchmarks.

Layout and naming follow DESIGN.md §1 exactly:

    ROOT/AOI_99_Synthetic/PS-MS/SN5_roads_train_AOI_99_Synthetic_PS-MS_chip0.tif
    ROOT/AOI_99_Synthetic/geojson_roads_speed/SN5_roads_train_AOI_99_Synthetic_geojson_roads_speed_chip0.geojson

Chips are 8-band uint16, pixel-interleaved and (by default) uncompressed and striped like
real SpaceNet PS-MS files, georeferenced in EPSG:4326 at ~0.3 m (or in the local WGS84
UTM zone with `crs="utm"`), laid out edge to edge in a grid. Some chips have zero
(nodata) margins; roads are GeoJSON LineStrings in CRS84 carrying `inferred_speed_mph`
and `inferred_speed_mps`, with speeds spanning 5-75 mph and the bin edges (10, 10.5, 65).
The second-to-last chip has an empty FeatureCollection and the last chip no label file.
Everything depends only on the arguments: the same call writes the same pixels.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from pyproj import CRS, Transformer

from sn5dask.core.speed import MPS_PER_MPH

SYNTHETIC_AOI = "AOI_99_Synthetic"
#: Centre of the synthetic city (lon, lat): Moscow, so the UTM variant is EPSG:32637.
ORIGIN_LONLAT = (37.60, 55.75)
PIXEL_SIZE_M = 0.3
METRES_PER_DEGREE_LAT = 111_320.0
SPEEDS_MPH = (5.0, 10.0, 10.5, 15.0, 20.0, 25.0, 30.0, 35.0, 40.0, 45.0, 55.0, 65.0, 75.0)
# Rough per-band gains of WorldView-3 PS-MS radiance (8 bands: coastal, blue, green,
# yellow, red, red edge, NIR1, NIR2), and how vegetation shifts each band (dark in red
# and blue, brighter in green, bright in the near infrared): plausible colours in 5,3,2.
_BAND_GAINS = (0.62, 0.71, 0.83, 0.79, 0.88, 1.2, 1.35, 1.27)
_VEGETATION_WEIGHTS = (-0.3, -0.35, 0.45, 0.1, -0.6, 0.5, 0.9, 0.9)


@dataclass(frozen=True)
class SyntheticAoi:
    """What `make_synthetic_aoi` wrote (paths are local)."""

    root: Path
    aoi: str
    images: list[Path]
    labels: list[Path]


def make_synthetic_aoi(
    root: str | Path,
    *,
    aoi: str = SYNTHETIC_AOI,
    n_chips: int = 6,
    size: int = 1300,
    seed: int = 0,
    crs: str = "EPSG:4326",
    roads_per_chip: tuple[int, int] | None = None,
    compress: str | None = None,
    with_edge_cases: bool = True,
    origin_lonlat: tuple[float, float] = ORIGIN_LONLAT,
    columns: int | None = None,
) -> SyntheticAoi:
    """Write a synthetic AOI under `root` and return its paths.

    `crs`: "EPSG:4326" (lon/lat grid) or "utm" (the WGS84 UTM zone of the origin).
    `origin_lonlat`: the top-left corner of the first chip (default: Moscow); chips are laid
    out in rows of `columns` (default: a square grid).
    `roads_per_chip`: (min, max) roads per chip; default 25-60 on a 1300 px chip, scaled
    with the chip's side for smaller chips (at least 2-4).
    `with_edge_cases`: zero margins on some chips (chip 1: 10 % top rows; chip 4: 35 %
    left columns, which CRESI's skip rule would drop), an empty FeatureCollection on the
    second-to-last chip and no label file for the last chip (needs `n_chips >= 3`).
    """
    if n_chips < 1 or size < 16:
        raise ValueError("need n_chips >= 1 and size >= 16")
    root = Path(root)
    image_dir = root / aoi / "PS-MS"
    label_dir = root / aoi / "geojson_roads_speed"
    image_dir.mkdir(parents=True, exist_ok=True)
    label_dir.mkdir(parents=True, exist_ok=True)
    images: list[Path] = []
    labels: list[Path] = []
    for chip in synthetic_chips(
        aoi=aoi, n_chips=n_chips, size=size, seed=seed, crs=crs,
        roads_per_chip=roads_per_chip, with_edge_cases=with_edge_cases,
        origin_lonlat=origin_lonlat, columns=columns,
    ):  # fmt: skip
        image_path = image_dir / chip.image_name
        _write_image(image_path, chip.image, chip.transform, chip.crs, compress)
        images.append(image_path)
        if chip.label is not None:
            label_path = label_dir / chip.label_name
            label_path.write_text(json.dumps(chip.label, indent=1))
            labels.append(label_path)
    return SyntheticAoi(root=root, aoi=aoi, images=images, labels=labels)


MARKER_NAME = ".sn5dask-synthetic.json"


def ensure_synthetic_aoi(root: str | Path, **options: Any) -> tuple[SyntheticAoi, bool]:
    """The synthetic AOI `make_synthetic_aoi(root, **options)` writes, reused when it is
    already there and intact; returns it and whether it was reused.

    Intact: the marker file written with it records the same options, and every file it
    lists is there with its recorded size. Anything else is written anew.
    """
    root = Path(root)
    marker = root / MARKER_NAME
    try:
        recorded = json.loads(marker.read_text())
        if recorded["options"] == json.loads(json.dumps(options)) and all(
            (root / name).stat().st_size == size for name, size in recorded["files"].items()
        ):
            return SyntheticAoi(
                root=root,
                aoi=recorded["aoi"],
                images=[root / name for name in recorded["images"]],
                labels=[root / name for name in recorded["labels"]],
            ), True
    except (OSError, ValueError, KeyError, TypeError):
        pass
    marker.unlink(missing_ok=True)
    aoi = make_synthetic_aoi(root, **options)
    written = [*aoi.images, *aoi.labels]
    marker.write_text(json.dumps({
        "options": options,
        "aoi": aoi.aoi,
        "images": [str(p.relative_to(root)) for p in aoi.images],
        "labels": [str(p.relative_to(root)) for p in aoi.labels],
        "files": {str(p.relative_to(root)): p.stat().st_size for p in written},
    }, indent=1))  # fmt: skip
    return aoi, False


@dataclass(frozen=True)
class SyntheticChip:
    """One synthetic chip in memory: 8-band uint16 pixels, grid, and label document (None
    for the test-set-like chip without a label file)."""

    index: int
    image_name: str
    label_name: str
    image: np.ndarray
    transform: Affine
    crs: CRS
    label: dict | None


def synthetic_chips(
    *,
    aoi: str = SYNTHETIC_AOI,
    n_chips: int = 6,
    size: int = 1300,
    seed: int = 0,
    crs: str = "EPSG:4326",
    roads_per_chip: tuple[int, int] | None = None,
    with_edge_cases: bool = True,
    origin_lonlat: tuple[float, float] = ORIGIN_LONLAT,
    columns: int | None = None,
) -> list[SyntheticChip]:
    """The chips `make_synthetic_aoi` writes, in memory (same arguments, same pixels)."""
    raster_crs, origin_xy, pixel_xy = _aoi_grid(crs, origin_lonlat)
    to_lonlat = Transformer.from_crs(raster_crs, CRS.from_epsg(4326), always_xy=True)
    columns = columns or max(1, math.ceil(math.sqrt(n_chips)))
    if roads_per_chip is None:
        scale = size / 1300
        roads_per_chip = (max(2, round(25 * scale)), max(4, round(60 * scale)))
    chips = []
    for index in range(n_chips):
        rng = np.random.default_rng([seed, index])
        row, column = divmod(index, columns)
        transform = Affine(
            pixel_xy[0], 0.0, origin_xy[0] + column * size * pixel_xy[0],
            0.0, -pixel_xy[1], origin_xy[1] - row * size * pixel_xy[1],
        )  # fmt: skip
        roads_px = _random_roads_px(rng, size, roads_per_chip)
        image = _synthetic_image(rng, size, roads_px)
        if with_edge_cases:
            _apply_zero_margin(image, index)
        label: dict | None = None
        if not (with_edge_cases and n_chips >= 3 and index == n_chips - 1):
            empty = with_edge_cases and n_chips >= 3 and index == n_chips - 2
            features = [] if empty else _road_features(rng, roads_px, transform, to_lonlat)
            label = _feature_collection(features)
        chips.append(
            SyntheticChip(
                index=index,
                image_name=f"SN5_roads_train_{aoi}_PS-MS_chip{index}.tif",
                label_name=f"SN5_roads_train_{aoi}_geojson_roads_speed_chip{index}.geojson",
                image=image,
                transform=transform,
                crs=raster_crs,
                label=label,
            )
        )
    return chips


def _aoi_grid(
    crs: str, origin_lonlat: tuple[float, float] = ORIGIN_LONLAT
) -> tuple[CRS, tuple[float, float], tuple[float, float]]:
    lon, lat = origin_lonlat
    if crs.lower() == "utm":
        zone = int((lon + 180) // 6) + 1
        utm = CRS.from_epsg((32600 if lat >= 0 else 32700) + zone)
        x, y = Transformer.from_crs(4326, utm, always_xy=True).transform(lon, lat)
        return utm, (round(x, 1), round(y, 1)), (PIXEL_SIZE_M, PIXEL_SIZE_M)
    if CRS.from_user_input(crs) != CRS.from_epsg(4326):
        raise ValueError(f"synthetic crs must be 'EPSG:4326' or 'utm', not {crs!r}")
    dy = PIXEL_SIZE_M / METRES_PER_DEGREE_LAT
    dx = dy / math.cos(math.radians(lat))
    return CRS.from_epsg(4326), (lon, lat), (dx, dy)


def _random_roads_px(
    rng: np.random.Generator, size: int, roads_per_chip: tuple[int, int]
) -> list[np.ndarray]:
    """Road centrelines in pixel coordinates: a street grid plus a few curved roads."""
    n_roads = int(rng.integers(roads_per_chip[0], roads_per_chip[1] + 1))
    roads = []
    for i in range(n_roads):
        kind = i % 3
        if kind == 2:  # a gently curving road across the chip
            t = np.linspace(0, 1, 8)
            x = t * size * 1.1 - 0.05 * size
            y = rng.uniform(0, size) + rng.uniform(-0.2, 0.2) * size * np.sin(t * math.pi)
            points = np.column_stack([x, y])
        else:  # a straight street segment, horizontal or vertical
            a = rng.uniform(-0.05, 1.05) * size
            start, stop = np.sort(rng.uniform(-0.05, 1.05, 2) * size)
            stop = max(stop, start + 0.1 * size)
            points = np.array([[start, a], [stop, a]]) if kind == 0 else np.array(
                [[a, start], [a, stop]]
            )
        roads.append(points)
    return roads


def _synthetic_image(
    rng: np.random.Generator, size: int, roads_px: list[np.ndarray]
) -> np.ndarray:
    """8 x size x size uint16: smooth "built-up" and "vegetation" fields mixed per band,
    plus noise; roads darker (so they show in the RGB)."""
    built = _smooth_field(rng, size, 250, 900)
    vegetation = _smooth_field(rng, size, 0, 600)
    road_mask = _road_pixels(roads_px, size)
    image = np.empty((8, size, size), dtype=np.uint16)
    for band, (gain, vegetation_weight) in enumerate(zip(_BAND_GAINS, _VEGETATION_WEIGHTS)):
        noise = rng.normal(0, 40, (size, size))
        values = built * gain + vegetation * vegetation_weight + noise
        values[road_mask] = 220 * gain + noise[road_mask] * 0.5
        image[band] = np.clip(values, 1, 2047).astype(np.uint16)
    return image


def _smooth_field(rng: np.random.Generator, size: int, low: float, high: float) -> np.ndarray:
    """A smooth random field: a coarse random grid, linearly interpolated (separably)."""
    n = max(2, size // 150 + 2)
    coarse = rng.uniform(low, high, (n, n))
    nodes = np.linspace(0, size - 1, n)
    pixels = np.arange(size)
    rows = np.stack([np.interp(pixels, nodes, coarse[:, j]) for j in range(n)], axis=1)
    return np.stack([np.interp(pixels, nodes, rows[i]) for i in range(size)])


def _road_pixels(roads_px: list[np.ndarray], size: int) -> np.ndarray:
    from rasterio.features import rasterize
    from shapely.geometry import LineString

    shapes = [(LineString(points).buffer(6), 1) for points in roads_px]
    return rasterize(shapes, out_shape=(size, size), dtype=np.uint8).astype(bool)


def _apply_zero_margin(image: np.ndarray, index: int) -> None:
    size = image.shape[1]
    if index % 6 == 1:
        image[:, : size // 10, :] = 0
    elif index % 6 == 4:
        image[:, :, : int(size * 0.35)] = 0


def _write_image(
    path: Path, image: np.ndarray, transform: Affine, crs: CRS, compress: str | None
) -> None:
    profile = {
        "driver": "GTiff",
        "height": image.shape[1],
        "width": image.shape[2],
        "count": image.shape[0],
        "dtype": "uint16",
        "crs": crs.to_wkt(),
        "transform": transform,
        "interleave": "pixel",
    }
    if compress:
        profile["compress"] = compress
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(image)


def _road_features(
    rng: np.random.Generator,
    roads_px: list[np.ndarray],
    transform: Affine,
    to_lonlat: Transformer,
) -> list[dict]:
    features = []
    for road_id, points in enumerate(roads_px):
        x, y = transform @ (points[:, 0], points[:, 1])  # type: ignore[operator]  # affine maps arrays
        lon, lat = to_lonlat.transform(x, y)
        mph = float(SPEEDS_MPH[int(rng.integers(0, len(SPEEDS_MPH)))])
        features.append(
            {
                "type": "Feature",
                "properties": {
                    "road_id": road_id,
                    "highway": "residential",
                    "inferred_speed_mph": mph,
                    "inferred_speed_mps": mph * MPS_PER_MPH,
                },
                "geometry": {
                    "type": "LineString",
                    "coordinates": [[float(a), float(b)] for a, b in zip(lon, lat, strict=True)],
                },
            }
        )
    return features


def _feature_collection(features: list[dict]) -> dict:
    return {
        "type": "FeatureCollection",
        "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:OGC:1.3:CRS84"}},
        "features": features,
    }
