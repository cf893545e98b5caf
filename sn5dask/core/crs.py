"""CRS helpers of the core: the metric CRS a chip's roads are buffered in (the WGS84 UTM
zone containing the chip, UPS beyond the UTM zones, or CRESI's own zone rule), the centre
of a grid in lon/lat, and reprojection of shapely geometries with cached transformers.
Pure (pyproj and shapely)."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import shapely
from odc.geo.geobox import GeoBox
from pyproj import CRS, Transformer

from sn5dask.core.grid import ChipHeader


def reproject_geometries(geometries: np.ndarray, src: CRS, dst: CRS) -> np.ndarray:
    """Reproject shapely geometries with an always-xy transformer (as geopandas does)."""
    if src is dst or src == dst:
        return geometries
    transformer = _transformer_between(src, dst)

    def transform_xy(xy: np.ndarray) -> np.ndarray:
        x, y = transformer.transform(xy[:, 0], xy[:, 1])
        return np.column_stack([x, y])

    return shapely.transform(geometries, transform_xy)


@lru_cache(maxsize=64)
def _transformer(src_wkt: str, dst_wkt: str) -> Transformer:
    return Transformer.from_crs(CRS.from_wkt(src_wkt), CRS.from_wkt(dst_wkt), always_xy=True)


@lru_cache(maxsize=64)
def _to_lonlat(src_wkt: str) -> Transformer:
    return Transformer.from_crs(CRS.from_wkt(src_wkt), CRS.from_epsg(4326), always_xy=True)


#: (id(src), id(dst)) -> (src, dst, transformer); the entry holds both CRS objects, so
#: their ids are not reused while it lives.
_TRANSFORMERS_BY_OBJECT: dict[tuple[int, int], tuple[CRS, CRS, Transformer]] = {}


def _transformer_between(src: CRS, dst: CRS) -> Transformer:
    """`_transformer` for two CRS objects, looked up by identity first: a chip's CRSs are
    the same few objects every time (cached by odc-geo, `_crs_from_epsg`, the label
    reader), and writing out their WKT, the cache key, at every call cost more than the lookup."""
    key = (id(src), id(dst))
    hit = _TRANSFORMERS_BY_OBJECT.get(key)
    if hit is not None and hit[0] is src and hit[1] is dst:
        return hit[2]
    transformer = _transformer(src.to_wkt(), dst.to_wkt())
    if len(_TRANSFORMERS_BY_OBJECT) >= 256:
        _TRANSFORMERS_BY_OBJECT.clear()
    _TRANSFORMERS_BY_OBJECT[key] = (src, dst, transformer)
    return transformer


def lonlat_bbox(header: ChipHeader) -> tuple[float, float, float, float]:
    """A chip's footprint as (west, south, east, north) in WGS84, edges densified so that a
    footprint in a projected CRS lies fully inside. Computed where the chip is scanned (a
    worker), once per chip; the transformer is cached per CRS."""
    a, _, c, _, e, f = header.transform
    xs = [c, c + a * header.width]
    ys = [f, f + e * header.height]
    transformer = _to_lonlat(header.crs_wkt)
    west, south, east, north = transformer.transform_bounds(
        min(xs), min(ys), max(xs), max(ys), densify_pts=21
    )
    return (float(west), float(south), float(east), float(north))


def grid_centre_lonlat(grid: GeoBox) -> tuple[float, float]:
    """(lon, lat) of the centre of a grid's footprint."""
    height, width = grid.shape.yx
    x, y = grid.affine @ (width / 2.0, height / 2.0)
    source = grid_crs(grid)
    lonlat = _crs_from_epsg(4326)
    if source is lonlat or source == lonlat:
        return float(x), float(y)
    lon, lat = _transformer_between(source, lonlat).transform(x, y)
    return float(lon), float(lat)


#: EPSG codes of the WGS84 UTM zones: 326zz north, 327zz south (zz = 1..60).
UTM_NORTH_BASE, UTM_SOUTH_BASE = 32600, 32700


def utm_crs_containing(lon: float, lat: float) -> CRS:
    """The WGS84 UTM CRS (EPSG 326xx/327xx) whose area of use, as PROJ's database gives
    it, contains (lon, lat).

    On a zone edge the lowest EPSG code wins (PROJ's own order, so as in geopandas'
    estimate_utm_crs). Only the zones next to the point's own 6° band, in both
    hemispheres, can contain it (EPSG's areas of use overlap a neighbour by at most
    0.01°), so only their areas are read: a few lookups per zone and process instead of
    PROJ's whole list of UTM CRSs at every worker's start.
    """
    for code in _utm_candidates(lon, lat):
        west, south, east, north = _utm_area_of_use(code)
        if west <= lon <= east and south <= lat <= north:
            return _crs_from_epsg(code)
    raise ValueError(f"no WGS84 UTM zone contains lon {lon}, lat {lat}")


def _utm_candidates(lon: float, lat: float) -> list[int]:
    """EPSG codes of the UTM zones that may contain (lon, lat), ascending."""
    if not (math.isfinite(lon) and math.isfinite(lat)) or abs(lon) > 180 or abs(lat) > 90:
        return []
    band = math.floor((lon + 180.0) / 6.0) + 1
    zones = sorted({min(60, max(1, zone)) for zone in (band - 1, band, band + 1)})
    return [base + zone for base in (UTM_NORTH_BASE, UTM_SOUTH_BASE) for zone in zones]


@lru_cache(maxsize=120)
def _utm_area_of_use(code: int) -> tuple[float, float, float, float]:
    """(west, south, east, north) of a UTM CRS in PROJ's database (empty when it has none)."""
    area = _crs_from_epsg(code).area_of_use
    if area is None:
        return (math.inf, math.inf, -math.inf, -math.inf)
    return (area.west, area.south, area.east, area.north)


#: WGS 84 / UPS North (N,E) and South: the metric CRSs beyond the UTM zones (84°N, 80°S).
UPS_NORTH_EPSG = 32661
UPS_SOUTH_EPSG = 32761


def metric_crs_containing(lon: float, lat: float) -> CRS:
    """The metric CRS for the buffer: the WGS84 UTM zone containing (lon, lat), or, beyond
    the UTM zones (north of 84°N, south of 80°S), Universal Polar Stereographic."""
    try:
        return utm_crs_containing(lon, lat)
    except ValueError:
        if not (np.isfinite(lon) and np.isfinite(lat)):
            raise
        return _crs_from_epsg(UPS_NORTH_EPSG if lat > 0 else UPS_SOUTH_EPSG)


@lru_cache(maxsize=256)
def _crs_from_epsg(code: int) -> CRS:
    return CRS.from_epsg(code)


def cresi_utm_crs(lines: np.ndarray, label_crs: CRS) -> CRS:
    """CRESI's UTM CRS: zone from the longitude of the centroid of all lines, northern.

    (osmnx_funcs.project_gdf: zone = floor((lon + 180) / 6) + 1, `+proj=utm +zone=N`.)
    A projected label CRS is first converted to lon/lat (CRESI would crash there).
    """
    centroid = shapely.union_all(lines).centroid
    lon = centroid.x
    if not label_crs.is_geographic:
        lon, _ = _transformer(label_crs.to_wkt(), CRS.from_epsg(4326).to_wkt()).transform(
            centroid.x, centroid.y
        )
    zone = int(math.floor((lon + 180.0) / 6.0) + 1)
    return _cresi_utm(zone)


@lru_cache(maxsize=64)
def _cresi_utm(zone: int) -> CRS:
    return CRS.from_proj4(f"+proj=utm +zone={zone} +ellps=WGS84 +datum=WGS84 +units=m +no_defs")


def grid_crs(grid: GeoBox) -> CRS:
    """The grid's CRS as a pyproj CRS (a chip without one never gets this far)."""
    if grid.crs is None:
        raise ValueError("the chip grid has no CRS: masks cannot be placed")
    return grid.crs.proj
