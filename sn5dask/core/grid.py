"""The chip grid value object: what a chip's header says (shape, transform, CRS, pixel
type, nodata), passed everywhere instead of open datasets. Pure: no file is opened here
(`sn5dask.io.raster.read_header` makes one from a file)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from odc.geo.geobox import GeoBox


@dataclass(frozen=True)
class ChipHeader:
    """What a chip's header says: its grid and pixel type. Small; sent to the client."""

    height: int
    width: int
    count: int
    dtype: str
    transform: tuple[float, float, float, float, float, float]
    crs_wkt: str
    nodata: tuple[float | None, ...]

    @property
    def grid(self) -> GeoBox:
        from affine import Affine
        from odc.geo.geobox import GeoBox  # only chip tasks need it, not the scan pass

        return GeoBox((self.height, self.width), Affine(*self.transform), self.crs_wkt)


def band_indexes(bands: Sequence[int]) -> list[int]:
    """0-based indexes of 1-based band numbers."""
    return [b - 1 for b in bands]
