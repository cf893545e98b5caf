"""Footprints, STAC geometries, extents and folds where plain lon/lat maths breaks: chips
straddling the antimeridian, and chips near the pole (buffered in UPS)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import sn5dask
from sn5dask.config import load_config
from sn5dask.synthetic import make_synthetic_aoi

AOI = "AOI_99_Synthetic"
CHIP_M = 64 * 0.3  # a 64 px synthetic chip is 19.2 m wide


def unwrapped(lon: float) -> float:
    return lon + 360.0 if lon < 0 else lon


def covers(outer: list[float], inner: list[float]) -> bool:
    """Whether bbox `outer` covers bbox `inner` (either may cross the antimeridian)."""
    ow, os_, oe, on = outer
    iw, is_, ie, in_ = inner
    oe, ie = (oe + 360.0 if oe < ow else oe), (ie + 360.0 if ie < iw else ie)
    if iw < ow:
        iw, ie = iw + 360.0, ie + 360.0
    return ow <= iw and ie <= oe and os_ <= is_ and in_ <= on


@pytest.fixture(scope="module")
def fiji(client, tmp_path_factory):
    """Six 64 px chips in one row at 17° S, in UTM zone 60 S, the third cut by 180°."""
    import math

    metres_per_degree = 111_320 * math.cos(math.radians(17.0))
    origin_lon = 180.0 - 2.5 * CHIP_M / metres_per_degree
    root = tmp_path_factory.mktemp("fiji")
    make_synthetic_aoi(root / "in", n_chips=6, size=64, seed=3, crs="utm", origin_lonlat=(origin_lon, -17.0),
                       columns=6, with_edge_cases=False, roads_per_chip=(2, 4))
    out = root / "out"
    summary = sn5dask.run(load_config(None, root=str(root / "in"), out=str(out), folds=3), client=client)
    assert summary.aois[0].counts["ok"] == 6
    return out


def test_items_across_the_antimeridian_are_cut_there_not_wrapped_round_the_earth(fiji) -> None:
    stats = json.loads((fiji / AOI / "stats.json").read_text())
    geometries = {}
    for chip_id, bbox in stats["chip_bboxes"].items():
        item = json.loads((fiji / AOI / "stac" / f"{chip_id}.json").read_text())
        assert item["bbox"] == bbox
        geometries[chip_id] = item["geometry"]
        for polygon in (item["geometry"]["coordinates"] if item["geometry"]["type"] == "MultiPolygon"
                        else [item["geometry"]["coordinates"]]):
            lons = [lon for lon, _ in polygon[0]]
            assert max(lons) - min(lons) < 0.001  # each part is a few metres wide, not 360°
    west, _, east, _ = stats["chip_bboxes"]["chip2"]
    assert west > east and geometries["chip2"]["type"] == "MultiPolygon"
    assert [part[0][1][0] for part in geometries["chip2"]["coordinates"]] == [180.0, east]
    assert all(geometries[c]["type"] == "Polygon" for c in ("chip0", "chip1", "chip3", "chip4", "chip5"))
    assert stats["chip_bboxes"]["chip0"][0] > 0 > stats["chip_bboxes"]["chip5"][2]

    collection = json.loads((fiji / AOI / "collection.json").read_text())
    [extent] = collection["extent"]["spatial"]["bbox"]
    assert extent[0] > extent[2]  # the extent crosses 180° too: a few metres, not the globe
    assert unwrapped(extent[2]) - extent[0] < 0.002
    assert all(covers(extent, bbox) for bbox in stats["chip_bboxes"].values())


def test_stac_items_across_the_antimeridian_validate_and_read_with_pystac(fiji) -> None:
    import pystac

    from tests.test_outputs_in_tools import validate_stac

    for path in sorted((fiji / AOI / "stac").glob("*.json")):
        validate_stac(json.loads(path.read_text()))
    validate_stac(json.loads((fiji / AOI / "collection.json").read_text()))
    catalog = pystac.Catalog.from_file(str(fiji / "catalog.json"))
    items = list(next(iter(catalog.get_children())).get_items())
    assert len(items) == 12


def test_folds_across_the_antimeridian_are_contiguous_blocks(fiji) -> None:
    manifest = json.loads((fiji / AOI / "manifest.json").read_text())
    stats = json.loads((fiji / AOI / "stats.json").read_text())
    order = sorted(manifest["chips"], key=lambda c: unwrapped(stats["chip_bboxes"][c][0]))
    folds = [manifest["chips"][c]["fold"] for c in order]
    assert folds == [0, 0, 1, 1, 2, 2] or folds == [2, 2, 1, 1, 0, 0], folds
    csv = (fiji / AOI / "folds.csv").read_text().splitlines()
    assert len(csv) == 1 + 6


def test_chips_near_the_pole_get_footprints_items_and_folds(client, tmp_path) -> None:
    """At 88° N (beyond the UTM zones: buffered in UPS) every footprint holds its chip's
    corners and the items validate."""
    import rasterio
    from rasterio.warp import transform as warp

    from tests.test_outputs_in_tools import validate_stac

    aoi = make_synthetic_aoi(tmp_path / "in", n_chips=4, size=64, seed=5, origin_lonlat=(10.0, 88.0),
                             with_edge_cases=False, roads_per_chip=(2, 4))
    out = tmp_path / "out"
    summary = sn5dask.run(load_config(None, root=str(aoi.root), out=str(out), folds=2), client=client)
    assert summary.aois[0].counts["ok"] == 4
    stats = json.loads((out / AOI / "stats.json").read_text())
    for image in aoi.images:
        chip_id = Path(image).stem.rsplit("_", 1)[-1]
        with rasterio.open(image) as src:
            west, south, east, north = src.bounds
            lons, lats = warp(src.crs, "EPSG:4326", [west, east, east, west], [south, south, north, north])
        bbox = stats["chip_bboxes"][chip_id]
        assert all(covers(bbox, [lon, lat, lon, lat]) for lon, lat in zip(lons, lats))
        validate_stac(json.loads((out / AOI / "stac" / f"{chip_id}.json").read_text()))
    manifest = json.loads((out / AOI / "manifest.json").read_text())
    assert sorted(e["fold"] for e in manifest["chips"].values()) == [0, 0, 1, 1]
    masks = list((out / AOI / "masks" / "binary").glob("*.tif"))
    assert len(masks) == 4
