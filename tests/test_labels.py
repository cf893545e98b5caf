"""sn5dask.core.labels: GeoJSON parsing, per-feature warnings, file-level errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pyproj import CRS

from sn5dask.core.labels import parse_road_labels
from sn5dask.errors import LabelError


def fc(features: list, crs: str | None = None) -> str:
    document: dict = {"type": "FeatureCollection", "features": features}
    if crs:
        document["crs"] = {"type": "name", "properties": {"name": crs}}
    return json.dumps(document)


def line(coords: list, **props: object) -> dict:
    return {"type": "Feature", "properties": props, "geometry": {"type": "LineString", "coordinates": coords}}


def test_lines_and_speeds() -> None:
    labels = parse_road_labels(
        fc([line([[0, 0], [1, 1]], inferred_speed_mph=25), line([[0, 1], [1, 0]])]), "f.geojson"
    )
    assert len(labels) == 2
    assert labels.speed_mph[0] == 25 and np.isnan(labels.speed_mph[1])
    assert labels.crs == CRS.from_user_input("OGC:CRS84")
    assert labels.warnings == ["f.geojson: feature 1: no usable speed (no speed field "
                               "(inferred_speed_mph, inferred_speed_mps or road_type))"]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{not json", "not valid GeoJSON"),
        ('{"type": "FeatureCollection"}', "no 'features' list"),
        ('{"features": {"a": 1}}', "no 'features' list"),
        ("[1, 2]", "no 'features' list"),
        ("[" * 100_000 + "]" * 100_000, "not valid GeoJSON"),
        ('{"features": [], "crs": {"type": "name", "properties": {"name": "EPSG:99999999"}}}',
         "unreadable 'crs'"),
    ],
)
def test_file_level_errors_name_the_file(text: str, problem: str) -> None:
    with pytest.raises(LabelError) as info:
        parse_road_labels(text, "s3://b/x.geojson")
    assert "s3://b/x.geojson" in str(info.value) and problem in str(info.value)


def test_empty_feature_collection_is_valid() -> None:
    labels = parse_road_labels(fc([]), "e.geojson")
    assert len(labels) == 0 and labels.warnings == []


def test_feature_problems_are_warnings() -> None:
    features = [
        {"type": "Feature", "properties": {}, "geometry": None},
        {"type": "Feature", "properties": {}, "geometry": {"type": "Point", "coordinates": [0, 0]}},
        {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon",
         "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]}},
        {"type": "Feature", "properties": {}, "geometry": {"type": "Point", "coordinates": [1, 1]}},
        line([[0, 0], [float("nan"), 1]], inferred_speed_mph=5),
        {"type": "Feature", "geometry": {"type": "LineString", "coordinates": "oops"}},
        "not a feature",
        line([[0, 0], [1, 1]], inferred_speed_mph="fast"),
    ]
    labels = parse_road_labels(fc(features), "w.geojson")
    assert len(labels) == 1  # only the last line (no usable speed, still a road)
    text = "\n".join(labels.warnings)
    assert "feature 0: null geometry" in text
    assert "ignored 2 Point, 1 Polygon feature(s)" in text
    assert "feature 4: geometry has NaN" in text
    assert "feature 5: unreadable geometry" in text
    assert "feature 6: not a GeoJSON Feature" in text
    assert "feature 7: no usable speed" in text
    assert all(w.startswith("w.geojson: ") for w in labels.warnings)


def test_multilinestring_and_repair() -> None:
    multi = {"type": "Feature", "properties": {"inferred_speed_mph": 30},
             "geometry": {"type": "MultiLineString", "coordinates": [[[0, 0], [1, 0]], [[2, 0], [3, 0]]]}}
    degenerate = line([[0, 0], [0, 0]], inferred_speed_mph=20)  # invalid: zero length
    self_crossing = line([[0, 0], [2, 2], [2, 0], [0, 2]], inferred_speed_mph=25)
    labels = parse_road_labels(fc([multi, degenerate, self_crossing]), "m.geojson")
    assert labels.lines[0].geom_type == "MultiLineString"
    # A zero-length line cannot become a line: warned and left out. A self-crossing
    # LineString is valid (merely not simple): kept as it is.
    assert len(labels) == 2 and labels.speed_mph.tolist() == [30, 25]
    assert labels.warnings == ["m.geojson: feature 1: invalid geometry that could not be repaired"]
    assert all(g.is_valid for g in labels.lines)


def test_crs_member_is_read() -> None:
    labels = parse_road_labels(fc([], crs="EPSG:32637"), "u.geojson")
    assert labels.crs.to_epsg() == 32637


def test_nothing_is_evaluated() -> None:
    hostile = fc([line([[0, 0], [1, 1]], inferred_speed_mph="__import__('os').system('false')")])
    labels = parse_road_labels(hostile, "h.geojson")
    assert np.isnan(labels.speed_mph[0])
