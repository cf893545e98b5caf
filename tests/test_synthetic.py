"""sn5dask.synthetic: SpaceNet layout and naming, determinism, georeferencing, edge cases."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import rasterio

from sn5dask.io.catalog import discover
from sn5dask.synthetic import make_synthetic_aoi


def digest(paths) -> list[str]:
    return [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]


def test_layout_naming_and_edge_cases(tmp_path) -> None:
    aoi = make_synthetic_aoi(tmp_path, n_chips=6, size=64)
    assert [p.relative_to(tmp_path).as_posix() for p in aoi.images[:1]] == [
        "AOI_99_Synthetic/PS-MS/SN5_roads_train_AOI_99_Synthetic_PS-MS_chip0.tif"]
    assert aoi.labels[0].relative_to(tmp_path).as_posix() == (
        "AOI_99_Synthetic/geojson_roads_speed/SN5_roads_train_AOI_99_Synthetic_geojson_roads_speed_chip0.geojson")
    [catalog] = discover(str(tmp_path))
    assert [c.chip_id for c in catalog.chips] == [f"chip{i}" for i in range(6)]
    assert catalog.chips[5].label is None  # a test-set-like chip without labels
    assert json.loads(aoi.labels[4].read_text())["features"] == []  # empty FeatureCollection
    speeds = [f["properties"]["inferred_speed_mph"] for p in aoi.labels[:4]
              for f in json.loads(p.read_text())["features"]]
    assert min(speeds) >= 5 and max(speeds) <= 75
    for p in aoi.labels[:4]:
        for f in json.loads(p.read_text())["features"]:
            props = f["properties"]
            assert props["inferred_speed_mps"] == pytest.approx(props["inferred_speed_mph"] * 0.44704)
    with rasterio.open(aoi.images[1]) as src:
        data = src.read()
        assert (src.count, src.dtypes[0], src.crs.to_epsg()) == (8, "uint16", 4326)
        assert src.transform.a == pytest.approx(0.3 / 111320 / np.cos(np.radians(55.75)))
        assert not data[:, :6].any() and data[:, 6:].all()  # a zero (nodata) margin on chip 1
        assert src.compression is None and not src.profile.get("tiled")  # striped, like SpaceNet
    # Adjacent chips: chip 1's left edge is chip 0's right edge.
    with rasterio.open(aoi.images[0]) as a, rasterio.open(aoi.images[1]) as b:
        assert b.transform.c == pytest.approx(a.transform.c + 64 * a.transform.a)


def test_deterministic(tmp_path) -> None:
    first = make_synthetic_aoi(tmp_path / "a", n_chips=3, size=48, seed=4)
    second = make_synthetic_aoi(tmp_path / "b", n_chips=3, size=48, seed=4)
    other = make_synthetic_aoi(tmp_path / "c", n_chips=3, size=48, seed=5)
    assert digest(first.images) == digest(second.images)
    assert digest(first.labels) == digest(second.labels)
    assert digest(first.images) != digest(other.images)


def test_utm_variant_and_labels_stay_lon_lat(tmp_path) -> None:
    aoi = make_synthetic_aoi(tmp_path, n_chips=2, size=64, crs="utm", with_edge_cases=False)
    with rasterio.open(aoi.images[0]) as src:
        assert src.crs.to_epsg() == 32637 and src.transform.a == 0.3
    label = json.loads(aoi.labels[0].read_text())
    lon, lat = label["features"][0]["geometry"]["coordinates"][0]
    assert 37 < lon < 38.5 and 55 < lat < 56.5
    with pytest.raises(ValueError, match="synthetic crs"):
        make_synthetic_aoi(tmp_path / "x", crs="EPSG:3857")
