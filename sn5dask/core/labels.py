"""Pure parsing of a road-centreline GeoJSON into lines, speeds and warnings.

Parsing is `json.loads` plus `shapely.geometry.shape`: nothing in a label file is ever
evaluated. Problems with the file as a whole raise `LabelError` (the chip fails);
problems with one feature become warnings naming the file and the feature.
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import shapely
from pyproj import CRS
from pyproj.exceptions import CRSError

from sn5dask.core.speed import road_speed
from sn5dask.errors import LabelError

#: GeoJSON's default CRS (RFC 7946): lon/lat on WGS84.
GEOJSON_DEFAULT_CRS = CRS.from_user_input("OGC:CRS84")
#: Largest coordinate magnitude accepted in a projected label CRS: 100,000 km (or feet),
#: beyond any place on Earth. Larger values (1e300) make PROJ and GEOS misbehave.
MAX_PROJECTED_COORDINATE = 1e8
_LINE_TYPES = ("LineString", "MultiLineString")


@dataclass(frozen=True)
class RoadLabels:
    """The roads of one label file.

    `lines`: shapely (Multi)LineStrings in `crs`; `speed_mph` / `speed_mps`: float64, NaN
    where a road has no usable speed; `feature_index`: each road's feature number in the
    file; `warnings`: text naming the file and the feature.
    """

    source: str
    crs: CRS
    lines: np.ndarray
    speed_mph: np.ndarray
    speed_mps: np.ndarray
    warnings: list[str] = field(default_factory=list)
    feature_index: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.lines)

    def feature(self, road: int) -> int:
        """The feature number in the file of road `road`."""
        return int(self.feature_index[road]) if self.feature_index is not None else road

    def subset(self, keep: np.ndarray) -> RoadLabels:
        """The roads where `keep` (bool, one per road) is True."""
        index = self.feature_index if self.feature_index is not None else np.arange(len(self))
        return RoadLabels(
            self.source, self.crs, self.lines[keep], self.speed_mph[keep], self.speed_mps[keep],
            self.warnings, index[keep],
        )  # fmt: skip


def parse_road_labels(
    text: str | bytes,
    source: str,
    *,
    speed_field: str | None = None,
    default_speed_mph: float | None = None,
) -> RoadLabels:
    """Parse GeoJSON text (a FeatureCollection of road centrelines) into `RoadLabels`."""
    try:
        document = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise LabelError(source, f"not valid GeoJSON ({_short(exc)})") from None
    if not isinstance(document, dict) or not isinstance(document.get("features"), list):
        raise LabelError(source, "GeoJSON has no 'features' list (not a FeatureCollection)")
    crs = _document_crs(document, source)
    geographic = crs.is_geographic

    warnings: list[str] = []
    ignored_types: Counter[str] = Counter()
    lines: list[Any] = []
    mph: list[float] = []
    mps: list[float] = []
    feature_index: list[int] = []
    for index, feature in enumerate(document["features"]):
        line, problem = _feature_line(feature, geographic)
        if line is None:
            if problem in _NON_LINE_PROBLEMS:
                ignored_types[problem] += 1
            elif problem is not None:
                warnings.append(f"{source}: feature {index}: {problem}")
            continue
        properties = feature.get("properties") if isinstance(feature, dict) else None
        speed = road_speed(
            properties if isinstance(properties, dict) else None,
            speed_field=speed_field,
            default_speed_mph=default_speed_mph,
        )
        if speed.problem is not None:
            warnings.append(f"{source}: feature {index}: no usable speed ({speed.problem})")
        lines.append(line)
        feature_index.append(index)
        mph.append(np.nan if speed.mph is None else speed.mph)
        mps.append(np.nan if speed.mps is None else speed.mps)
    if ignored_types:
        counts = ", ".join(f"{n} {kind}" for kind, n in sorted(ignored_types.items()))
        warnings.append(f"{source}: ignored {counts} feature(s): not road lines")
    return RoadLabels(
        source=source,
        crs=crs,
        lines=np.array(lines, dtype=object),
        speed_mph=np.array(mph, dtype=np.float64),
        speed_mps=np.array(mps, dtype=np.float64),
        warnings=warnings,
        feature_index=np.array(feature_index, dtype=np.int64),
    )


_NON_LINE_PROBLEMS = frozenset(
    {"Point", "MultiPoint", "Polygon", "MultiPolygon", "GeometryCollection"}
)


def _feature_line(feature: Any, geographic: bool) -> tuple[Any | None, str | None]:
    """(line, None) for a usable road line; (None, problem) otherwise.

    A problem that is a geometry type name means "not a line" (counted, not listed).
    Coordinates impossible in the label's CRS are refused here, before any geometry
    operation (validity, buffering, reprojection): lon/lat outside -180..180 / -90..90 in
    a geographic CRS (often swapped axes), magnitudes over 1e8 in a projected one.
    """
    if not isinstance(feature, dict):
        return None, "not a GeoJSON Feature object"
    geometry = feature.get("geometry")
    if geometry is None:
        return None, "null geometry"
    try:
        shape = shapely.geometry.shape(geometry)
    except Exception as exc:  # shapely raises many types for malformed coordinates
        return None, f"unreadable geometry ({_short(exc)})"
    if shape.geom_type not in _LINE_TYPES:
        kind = shape.geom_type
        return None, kind if kind in _NON_LINE_PROBLEMS else f"unsupported geometry {kind}"
    if shape.is_empty:
        return None, "empty geometry"
    coordinates = shapely.get_coordinates(shape)
    if not np.isfinite(coordinates).all():
        return None, "geometry has NaN or infinite coordinates"
    impossible = _impossible_coordinates(coordinates, geographic)
    if impossible is not None:
        return None, impossible
    if not shape.is_valid:
        repaired = _lines_only(shapely.make_valid(shape))
        if repaired is None:
            return None, "invalid geometry that could not be repaired"
        return repaired, None
    return shape, None


def _impossible_coordinates(xy: np.ndarray, geographic: bool) -> str | None:
    """Why coordinates cannot be in the label's CRS, or None when they can."""
    x, y = xy[:, 0], xy[:, 1]
    if geographic:
        if (np.abs(x) > 180).any() or (np.abs(y) > 90).any():
            return (
                "coordinates outside longitude -180..180 / latitude -90..90 "
                f"(e.g. {_pair(xy, (np.abs(x) > 180) | (np.abs(y) > 90))}; are longitude "
                "and latitude swapped?)"
            )
        return None
    too_large = (np.abs(x) > MAX_PROJECTED_COORDINATE) | (np.abs(y) > MAX_PROJECTED_COORDINATE)
    if too_large.any():
        return f"coordinates beyond {MAX_PROJECTED_COORDINATE:g} in a projected CRS (e.g. {_pair(xy, too_large)})"
    return None


def _pair(xy: np.ndarray, where: np.ndarray) -> str:
    x, y = xy[np.flatnonzero(where)[0]]
    return f"{x:.6g}, {y:.6g}"


def _lines_only(shape: Any) -> Any | None:
    """The line parts of a repaired geometry (make_valid may add points), or None."""
    if shape.geom_type in _LINE_TYPES and not shape.is_empty:
        return shape
    parts = [p for p in shapely.get_parts(shape) if p.geom_type in _LINE_TYPES]
    if not parts:
        return None
    merged = shapely.multilinestrings(
        [line for p in parts for line in shapely.get_parts(p)]
    )
    return merged if not merged.is_empty else None


def _document_crs(document: dict[str, Any], source: str) -> CRS:
    """The legacy GeoJSON `crs` member (SpaceNet labels carry one), else CRS84."""
    member = document.get("crs")
    if member is None:
        return GEOJSON_DEFAULT_CRS
    try:
        name = member["properties"]["name"]
        return _named_crs(str(name))
    except (KeyError, TypeError, CRSError) as exc:
        raise LabelError(source, f"unreadable 'crs' member {member!r} ({_short(exc)})") from None


@functools.lru_cache(maxsize=64)
def _named_crs(name: str) -> CRS:
    """One CRS object per name and process: an AOI's labels all name the same one, and
    the masks keep their transformers per CRS object (`crs.reproject_geometries`)."""
    return CRS.from_user_input(name)


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:200] + "..."
