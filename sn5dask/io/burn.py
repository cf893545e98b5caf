"""A chip's road masks, burned by GDAL's rasteriser (`rasterio.features.rasterize`).

The rules (metric buffer, burning order, classes, nodata zeroing, the masks by lookup)
are pure and live in `sn5dask.core.masks`; this module is the one step between them that
runs GDAL: the chip is rasterised once into speed classes, then every mask kind is a
lookup of that raster. In memory only: no files.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from odc.geo.geobox import GeoBox
from rasterio.features import rasterize

from sn5dask.core.labels import RoadLabels
from sn5dask.core.masks import (
    MASK_KINDS,
    SpeedClasses,
    masks_from_speed_classes,
    road_shapes,
    zero_under_nodata,
)
from sn5dask.core.profiles import Profile

__all__ = ["burn_chip_masks", "burn_speed_classes"]


def burn_speed_classes(
    labels: RoadLabels,
    grid: GeoBox,
    *,
    profile: str | Profile = "sn5dask",
    buffer_m: float = 2.0,
    warnings: list[str] | None = None,
) -> SpeedClasses:
    """The chip's speed-class raster: `core.masks.road_shapes`, rasterised once (a pixel
    is burned when its centre falls inside a shape; the last shape burned wins)."""
    shapes = road_shapes(labels, grid, profile=profile, buffer_m=buffer_m, warnings=warnings)
    height, width = grid.shape.yx
    if shapes.shapes:
        classes = rasterize(
            shapes.shapes,
            out_shape=(height, width),
            transform=grid.affine,
            fill=0,
            all_touched=False,
            dtype=shapes.dtype,
        )
    else:
        classes = np.zeros((height, width), shapes.dtype)
    return SpeedClasses(classes, shapes.speed_mph, shapes.roads_on_chip)


def burn_chip_masks(
    labels: RoadLabels,
    grid: GeoBox,
    *,
    kinds: Sequence[str] = MASK_KINDS,
    profile: str | Profile = "sn5dask",
    buffer_m: float = 2.0,
    image: np.ndarray | None = None,
    warnings: list[str] | None = None,
) -> dict[str, np.ndarray]:
    """Per-chip masks: burn once, zero under image nodata, derive every kind.

    When roads exist but none touches the chip, a warning is appended to `warnings`: the
    usual cause is a label file that belongs elsewhere or declares the wrong CRS.
    """
    speed_classes = burn_speed_classes(
        labels, grid, profile=profile, buffer_m=buffer_m, warnings=warnings
    )
    if warnings is not None and len(labels) and speed_classes.roads_on_chip == 0:
        warnings.append(
            f"{labels.source}: none of its {len(labels)} road(s) falls on the chip "
            "(is the label for another chip, or its CRS wrong?): masks are empty"
        )
    if image is not None:
        speed_classes = SpeedClasses(
            zero_under_nodata(speed_classes.classes, image, profile),
            speed_classes.speed_mph,
            speed_classes.roads_on_chip,
        )
    return masks_from_speed_classes(speed_classes, kinds)
