"""Pure road-mask rules: metric buffer, the shapes of one rasterisation per chip, masks by
lookup.

Inputs are `RoadLabels` (lines + speeds in the label CRS) and the chip's grid (an
odc-geo `GeoBox`); outputs are the shapes to burn (`road_shapes`) and, from the burned
class raster, uint8 numpy arrays on that grid (`masks_from_speed_classes`). The burning
itself is GDAL's rasteriser, in `sn5dask.io.burn` (`burn_chip_masks`). No files, no GDAL,
no dask.

Why one "speed class" raster: every mask kind is a function of the speed burned at a
pixel, so the chip is rasterised once into class indices (0 = background) and each kind
is a lookup table indexed by class. That is exact (the same pixels as burning each kind
separately with the same geometry order) and several times cheaper.

The rules that differ between profiles come from `profiles.Profile` (DESIGN.md §3): which
UTM zone (the chip centre's, or CRESI's label-centroid northern zone), the buffer's caps,
how overlaps resolve (each road on its own in ascending speed order so the faster wins
whatever the feature order, or CRESI's dissolve by mps where a group burns its first
row's mph), whether roads without a usable speed are burned (a class of their own below
every speed: `binary` and multichannel band 8 only), and the nodata zeroing rule.
Both profiles reproject the buffered roads into the raster's CRS (CRESI never does, Q5).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import shapely
from odc.geo.geobox import GeoBox
from shapely.geometry.base import BaseGeometry

from sn5dask.core.crs import (
    cresi_utm_crs,
    grid_centre_lonlat,
    grid_crs,
    metric_crs_containing,
    reproject_geometries,
)
from sn5dask.core.encodings import MASK_KINDS
from sn5dask.core.labels import RoadLabels
from sn5dask.core.profiles import Profile, get_profile
from sn5dask.core.speed import (
    BIN_VALUE_STEP,
    N_SPEED_CHANNELS,
    binned_value,
    continuous_value,
)

__all__ = ["MASK_KINDS", "RoadShapes", "SpeedClasses", "masks_from_speed_classes", "road_shapes", "zero_under_nodata"]


@dataclass(frozen=True)
class SpeedClasses:
    """A chip rasterised once: `classes[y, x]` indexes `speed_mph` (index 0: no road).

    `speed_mph[c]` is NaN for the class of roads without a usable speed.
    """

    classes: np.ndarray
    speed_mph: np.ndarray
    roads_on_chip: int = 0  # buffered roads that touch the chip's footprint


@dataclass(frozen=True)
class RoadShapes:
    """What a chip's one rasterisation burns: `shapes`, GeoJSON-like polygons in the grid's
    CRS with their class index, in burning order (the last burned wins); `speed_mph[c]`
    the speed of class c (index 0: no road; NaN: roads without a usable speed); `dtype`
    the class raster's type (`class_raster_dtype`)."""

    shapes: list[tuple[dict[str, object], int]]
    speed_mph: np.ndarray
    roads_on_chip: int
    dtype: np.dtype


def road_shapes(
    labels: RoadLabels,
    grid: GeoBox,
    *,
    profile: str | Profile = "sn5dask",
    buffer_m: float = 2.0,
    warnings: list[str] | None = None,
) -> RoadShapes:
    """Buffer the roads in metres: the shapes that rasterise them once into speed classes.

    A road whose coordinates are not finite once projected into the metric CRS is left
    out with a warning (appended to `warnings`) before any geometry operation, so no
    road can crash GEOS; the other roads are burned.
    """
    rules = get_profile(profile)
    if len(labels) == 0:
        return RoadShapes([], np.array([0.0]), 0, np.dtype(np.uint8))
    if rules.utm_rule == "label_centroid_north":
        utm = cresi_utm_crs(labels.lines, labels.crs)
    else:
        utm = metric_crs_containing(*grid_centre_lonlat(grid))
    projected = reproject_geometries(labels.lines, labels.crs, utm)
    finite = _finite_geometries(projected)
    if not finite.all():
        for road in np.flatnonzero(~finite):
            _warn(warnings, f"{labels.source}: feature {labels.feature(int(road))}: coordinates "
                            f"have no place in {utm.name}: not burned")  # fmt: skip
        labels, projected = labels.subset(finite), projected[finite]
    buffered = shapely.buffer(projected, buffer_m, quad_segs=rules.buffer_quad_segs)
    if rules.overlap == "dissolve_by_mps":
        in_utm, class_speeds = _dissolve_by_mps(labels, buffered)
    else:
        in_utm, class_speeds = _fastest_wins(labels, buffered)
    if not rules.burn_roads_without_speed:
        in_utm = [(p, c) for p, c in in_utm if np.isfinite(class_speeds[c - 1])]
    geometries = reproject_geometries(
        np.array([p for p, _ in in_utm], dtype=object), utm, grid_crs(grid)
    )
    finite = _finite_geometries(geometries)
    if not finite.all():
        _warn(warnings, f"{labels.source}: {int((~finite).sum())} buffered road(s) have no "
                        "place in the chip's CRS: not burned")  # fmt: skip
        geometries = geometries.copy()
        geometries[~finite] = None
    dtype = class_raster_dtype(len(class_speeds))
    shapes = [
        (polygon, class_index)
        for polygon, (_, class_index) in zip(geometries, in_utm, strict=True)
        if polygon is not None and not polygon.is_empty
    ]
    footprint = shapely.box(*grid.extent.boundingbox)
    roads_on_chip = int(np.count_nonzero(shapely.intersects([p for p, _ in shapes], footprint))) if shapes else 0
    return RoadShapes(
        [(_geojson_like(polygon), class_index) for polygon, class_index in shapes],
        np.concatenate([[0.0], class_speeds]),
        roads_on_chip,
        dtype,
    )


def _geojson_like(geometry: BaseGeometry) -> dict[str, object]:
    """The GeoJSON-like mapping rasterio reads a shape from, for a (multi)polygon built from
    its rings' coordinate arrays: the same coordinates as shapely's `__geo_interface__`,
    which builds a Python tuple per vertex and took much of `rasterize`'s time on small
    chips. Other geometry types use `__geo_interface__`."""
    if isinstance(geometry, shapely.Polygon):
        return {"type": "Polygon", "coordinates": _rings(geometry)}
    if isinstance(geometry, shapely.MultiPolygon):
        return {"type": "MultiPolygon", "coordinates": [_rings(part) for part in geometry.geoms]}
    return dict(geometry.__geo_interface__)


def _rings(polygon: shapely.Polygon) -> list[list[list[float]]]:
    if polygon.is_empty:
        return []
    rings = [polygon.exterior, *polygon.interiors]
    return [shapely.get_coordinates(ring).tolist() for ring in rings]


def class_raster_dtype(n_classes: int) -> np.dtype:
    """The narrowest unsigned type that holds class indexes 0..n_classes: the class raster
    must never wrap around, whatever the number of distinct speeds in a label."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if n_classes <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ValueError(f"{n_classes} speed classes do not fit a raster")


def _fastest_wins(
    labels: RoadLabels, buffered: np.ndarray
) -> tuple[list[tuple[BaseGeometry, int]], np.ndarray]:
    """Each road on its own, in ascending class order (burned last = on top)."""
    speeds = labels.speed_mph
    has_speed = np.isfinite(speeds) & (speeds > 0)
    distinct = np.unique(speeds[has_speed])
    # Class 1 = a road without a usable speed (lowest, so any real speed wins over it);
    # classes 2.. = distinct speeds ascending, so burning in class order lets the faster win.
    class_of_road = np.where(has_speed, np.searchsorted(distinct, speeds) + 2, 1)
    order = np.argsort(class_of_road, kind="stable")
    polygons = [(buffered[i], int(class_of_road[i])) for i in order]
    return polygons, np.concatenate([[np.nan], distinct])


def _dissolve_by_mps(
    labels: RoadLabels, buffered: np.ndarray
) -> tuple[list[tuple[BaseGeometry, int]], np.ndarray]:
    """CRESI: dissolve(by=mps) drops null mps and sorts groups ascending; a group burns the
    mph of its first row in file order. mph <= 0 burns 0 (= nothing), so it is dropped."""
    mps = labels.speed_mps
    keep = np.isfinite(mps)
    polygons: list[tuple[BaseGeometry, int]] = []
    class_speeds: list[float] = []
    for value in np.unique(mps[keep]):
        members = np.flatnonzero(keep & (mps == value))
        first_mph = labels.speed_mph[members[0]]
        if not (np.isfinite(first_mph) and first_mph > 0):
            continue
        class_speeds.append(float(first_mph))
        polygons.append((shapely.union_all(buffered[members]), len(class_speeds)))
    return polygons, np.array(class_speeds, dtype=np.float64)


def _finite_geometries(geometries: np.ndarray) -> np.ndarray:
    """True for each geometry whose coordinates are all finite (PROJ gives inf for a point
    outside its projection's domain; GEOS must never see one)."""
    if len(geometries) == 0:
        return np.zeros(0, dtype=bool)
    coordinates, owner = shapely.get_coordinates(geometries, return_index=True)
    bad = np.unique(owner[~np.isfinite(coordinates).all(axis=1)])
    finite = np.ones(len(geometries), dtype=bool)
    finite[bad] = False
    return finite


def _warn(warnings: list[str] | None, text: str) -> None:
    if warnings is not None:
        warnings.append(text)


def zero_under_nodata(
    classes: np.ndarray, image: np.ndarray, profile: str | Profile = "sn5dask"
) -> np.ndarray:
    """Set classes to 0 where the image has no data (the profile's rule).

    `all_bands_zero`: wherever every band of `image` (band, y, x) is 0.
    `band_sum_zero_if_share` (CRESI): where the bands sum to 0 (unsigned: all are 0), only
    if at least `nodata_min_share` of pixels do, and only for multi-band images.
    """
    rules = get_profile(profile)
    if image.ndim == 2:
        image = image[np.newaxis]
    empty = ~np.any(image, axis=0)
    if rules.nodata_zeroing == "band_sum_zero_if_share":
        if image.shape[0] < 2 or empty.mean() < rules.nodata_min_share:
            return classes
    if not empty.any():
        return classes
    out = classes.copy()
    out[empty] = 0
    return out


def masks_from_speed_classes(
    speed_classes: SpeedClasses, kinds: Iterable[str] = MASK_KINDS
) -> dict[str, np.ndarray]:
    """Every requested mask kind from one speed-class raster, by lookup tables.

    Returns uint8 arrays: (H, W) for binary/continuous/binned, (8, H, W) for multichannel.
    `binary` is 255 on every burned class (for the cresi profile only roads with a speed
    are burned, so it equals CRESI's `binned > 0`).
    """
    kinds = tuple(kinds)
    unknown = set(kinds) - set(MASK_KINDS)
    if unknown:
        raise ValueError(f"unknown mask kind(s) {sorted(unknown)}; choose from {MASK_KINDS}")
    speeds = speed_classes.speed_mph
    has_speed = np.isfinite(speeds) & (speeds > 0)
    safe_speeds = np.where(has_speed, speeds, 0.0)
    continuous_lut = np.where(has_speed, continuous_value(safe_speeds), 0).astype(np.uint8)
    binned_lut = np.where(has_speed, binned_value(safe_speeds), 0).astype(np.uint8)

    classes = speed_classes.classes
    out: dict[str, np.ndarray] = {}
    if {"binary", "multichannel"} & set(kinds):
        # 255 on every burned class: a comparison, several times cheaper than a lookup
        out["binary"] = np.multiply(np.not_equal(classes, 0).view(np.uint8), np.uint8(255))
    if "continuous" in kinds:
        out["continuous"] = np.take(continuous_lut, classes)
    if "binned" in kinds:
        out["binned"] = np.take(binned_lut, classes)
    if "multichannel" in kinds:
        channel = np.take(binned_lut // BIN_VALUE_STEP, classes)  # speed bin 1..7, 0 = none
        out["multichannel"] = multichannel_from_channel(channel, out["binary"])
    return {kind: out[kind] for kind in kinds}


def multichannel_from_channel(channel: np.ndarray, binary: np.ndarray) -> np.ndarray:
    """(8, H, W) uint8: band k (1..7) = 255 where `channel` (= binned // 36) == k;
    band 8 = `binary`."""
    out = np.empty((N_SPEED_CHANNELS + 1,) + channel.shape, dtype=np.uint8)
    for k in range(1, N_SPEED_CHANNELS + 1):
        # Write the comparison straight into the output as 0/1 (a bool view), then scale.
        np.equal(channel, k, out=out[k - 1].view(bool))
    np.multiply(out[:N_SPEED_CHANNELS], 255, out=out[:N_SPEED_CHANNELS])
    out[N_SPEED_CHANNELS] = binary
    return out
