"""sn5dask.core.masks and sn5dask.io.burn: solaris R1 and CRESI s02 bit-exact, each CRESI rule, edge cases."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st
from odc.geo.geobox import GeoBox
from pyproj import CRS, Transformer
from pyproj.aoi import AreaOfInterest
from pyproj.database import query_utm_crs_info
from rasterio.features import rasterize

import sn5dask
from sn5dask.core.labels import parse_road_labels
from sn5dask.core.crs import cresi_utm_crs, utm_crs_containing
from sn5dask.core.masks import masks_from_speed_classes, zero_under_nodata
from sn5dask.io.burn import burn_chip_masks, burn_speed_classes
from tests.conftest import S02, SOLARIS_ROAD

S02_IMAGE = S02 / "inputs" / "PS-MS" / "SN3_roads_train_AOI_2_Vegas_PS-MS_img991.tif"
S02_LABEL = S02 / "inputs" / "geojson_roads" / "AOI_2_Vegas_img991.geojson"
S02_EXPECTED = {
    "continuous": S02 / "expected" / "train_mask_continuous" / S02_IMAGE.name,
    "binned": S02 / "expected" / "train_mask_binned" / S02_IMAGE.name,
    "multichannel": S02 / "expected" / "train_mask_binned_mc" / S02_IMAGE.name,
}
# A small lon/lat grid in Las Vegas (~0.24 x 0.3 m pixels), 200 x 200 px.
VEGAS = GeoBox((200, 200), Affine(2.7e-6, 0, -115.2, 0, -2.7e-6, 36.18), "EPSG:4326")


def read(path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def collection(features: list[dict], crs: str = "urn:ogc:def:crs:OGC:1.3:CRS84") -> str:
    return json.dumps({"type": "FeatureCollection", "features": features,
                       "crs": {"type": "name", "properties": {"name": crs}}})


def road(coords: list, mph: float | None = None, **props: object) -> dict:
    if mph is not None:
        props["inferred_speed_mph"] = mph
    return {"type": "Feature", "properties": props,
            "geometry": {"type": "LineString", "coordinates": coords}}


def px(grid: GeoBox, col: float, row: float) -> list[float]:
    x, y = grid.affine @ (col, row)
    return [x, y]


def burn(features: list[dict], grid: GeoBox = VEGAS, **kwargs) -> dict[str, np.ndarray]:
    labels = parse_road_labels(collection(features), "t.geojson")
    return burn_chip_masks(labels, grid, **kwargs)


# --- reference cases -----------------------------------------------------------------

def test_solaris_r1_binary_exact_through_public_api() -> None:
    masks = sn5dask.burn_masks(
        SOLARIS_ROAD / "sample_roads_for_masking.geojson",
        SOLARIS_ROAD / "road_mask_input.tif",  # a 1-band uint16 PAN chip
        kinds=("binary",),
    )
    expected = read(SOLARIS_ROAD / "sample_road_raster_mask.tif")[0]
    assert masks["binary"].dtype == np.uint8 and masks["binary"].shape == (1300, 1300)
    assert np.array_equal(masks["binary"], expected)
    assert int((masks["binary"] == 255).sum()) == 56416


def test_cresi_s02_exact_from_raw_sn3_label() -> None:
    image = read(S02_IMAGE)
    masks = sn5dask.burn_masks(S02_LABEL, S02_IMAGE, profile="cresi", image=image)
    for kind, path in S02_EXPECTED.items():
        expected = read(path)
        got = masks[kind] if masks[kind].ndim == 3 else masks[kind][np.newaxis]
        assert got.dtype == np.uint8
        assert np.array_equal(got, expected), kind
    assert masks["multichannel"].reshape(8, -1).astype(bool).sum(1).tolist() == [
        0, 9235, 84875, 0, 45592, 0, 0, 139702]  # fmt: skip
    assert np.array_equal(masks["binary"], masks["multichannel"][7])


def test_s02_speed_inference_matches_cresi_output() -> None:
    raw = parse_road_labels(S02_LABEL.read_text(), "raw")
    expected = json.loads(
        (S02 / "expected" / "geojson_roads_speed_raw" / "AOI_2_Vegas_img991_speed.geojson").read_text()
    )
    assert raw.speed_mph.tolist() == [f["properties"]["inferred_speed_mph"] for f in expected["features"]]
    assert np.array_equal(raw.speed_mps, [f["properties"]["inferred_speed_mps"] for f in expected["features"]])


def test_default_profile_on_s02_differs_only_by_caps() -> None:
    default = sn5dask.burn_masks(S02_LABEL, S02_IMAGE)
    cresi = sn5dask.burn_masks(S02_LABEL, S02_IMAGE, profile="cresi")
    differing = int((default["binary"] != cresi["binary"]).sum())
    assert 0 < differing < 0.01 * int((cresi["binary"] > 0).sum())


# --- the rules -----------------------------------------------------------------------

def test_default_profile_is_independent_of_feature_order() -> None:
    rng = random.Random(4)
    features = []
    for i in range(30):
        a, b = rng.uniform(0, 200), rng.uniform(0, 200)
        coords = [px(VEGAS, a, -5), px(VEGAS, b, 205)] if i % 2 else [px(VEGAS, -5, a), px(VEGAS, 205, b)]
        features.append(road(coords, rng.choice([None, 5, 15, 25, 35, 45, 55, 65, 75])))
    reference = burn(features)
    for _ in range(3):
        rng.shuffle(features)
        shuffled = burn(features)
        for kind in reference:
            assert np.array_equal(reference[kind], shuffled[kind]), kind


@pytest.mark.parametrize("profile", ["sn5dask", "cresi"])
@pytest.mark.parametrize("fast_first", [True, False])
def test_overlapping_roads_1m_apart_faster_wins(profile: str, fast_first: bool) -> None:
    # Two parallel roads 1 m apart (~3.4 px at 0.3 m): their 2 m buffers overlap.
    row = 100
    dy = 1.0 / 0.2999  # 1 m in rows
    slow = road([px(VEGAS, 10, row), px(VEGAS, 190, row)], 25)
    fast = road([px(VEGAS, 10, row + dy), px(VEGAS, 190, row + dy)], 45)
    masks = burn([fast, slow] if fast_first else [slow, fast], profile=profile)
    between = masks["continuous"][row + 1 : row + 3, 50:150]
    assert (between == 176).all()  # floor(255 * 45 / 65)
    assert (masks["binned"][row + 1 : row + 3, 50:150] == 180).all()
    assert set(np.unique(masks["continuous"])) == {0, 98, 176}


def test_bin_edges_and_fast_roads() -> None:
    rows = {10: 20, 10.5: 60, 70: 100, 75: 140}
    features = [road([px(VEGAS, 20, r), px(VEGAS, 180, r)], mph) for mph, r in rows.items()]
    for profile in ("sn5dask", "cresi"):
        masks = burn(features, profile=profile)
        centre = {mph: (masks["binned"][r, 100], masks["continuous"][r, 100]) for mph, r in rows.items()}
        assert centre == {10: (36, 39), 10.5: (72, 41), 70: (252, 255), 75: (255, 255)}
        mc = masks["multichannel"]
        assert [int(np.flatnonzero(mc[:7, r, 100])[0]) + 1 for r in rows.values()] == [1, 2, 7, 7]


def test_zero_and_missing_speeds_per_profile() -> None:
    features = [
        road([px(VEGAS, 20, 40), px(VEGAS, 180, 40)], 0),
        road([px(VEGAS, 20, 80), px(VEGAS, 180, 80)], None),
        road([px(VEGAS, 20, 120), px(VEGAS, 180, 120)], None, inferred_speed_mph=None),
        road([px(VEGAS, 20, 160), px(VEGAS, 180, 160)], 30),
    ]
    default = burn(features)
    for r in (40, 80, 120):  # a road is a road: binary and band 8 only
        assert default["binary"][r, 100] == 255 and default["multichannel"][7, r, 100] == 255
        assert default["continuous"][r, 100] == 0 and default["binned"][r, 100] == 0
        assert not default["multichannel"][:7, r, 100].any()
    cresi = burn(features, profile="cresi")
    for r in (40, 80, 120):  # CRESI drops them everywhere
        assert cresi["binary"][r, 100] == 0 and not cresi["multichannel"][:, r, 100].any()
    for masks in (default, cresi):
        assert masks["continuous"][160, 100] == 117 and masks["binned"][160, 100] == 108


def test_default_speed_fills_missing() -> None:
    masks = burn([road([px(VEGAS, 20, 80), px(VEGAS, 180, 80)], None)])
    assert masks["continuous"][80, 100] == 0
    labels = parse_road_labels(collection([road([px(VEGAS, 20, 80), px(VEGAS, 180, 80)])]), "d",
                               default_speed_mph=20)
    masks = burn_chip_masks(labels, VEGAS)
    assert masks["continuous"][80, 100] == 78


def test_empty_collection_gives_zero_masks() -> None:
    masks = burn([])
    assert set(masks) == {"binary", "continuous", "binned", "multichannel"}
    for kind, mask in masks.items():
        assert mask.dtype == np.uint8 and not mask.any()
        assert mask.shape == ((8, 200, 200) if kind == "multichannel" else (200, 200))


def test_multilinestring_burns_every_part_and_outside_roads_burn_nothing() -> None:
    multi = {"type": "Feature", "properties": {"inferred_speed_mph": 30}, "geometry": {
        "type": "MultiLineString",
        "coordinates": [[px(VEGAS, 20, 50), px(VEGAS, 180, 50)], [px(VEGAS, 20, 150), px(VEGAS, 180, 150)]]}}
    outside = road([px(VEGAS, -500, -500), px(VEGAS, -300, -500)], 45)
    masks = burn([multi, outside])
    assert masks["binary"][50, 100] == 255 and masks["binary"][150, 100] == 255
    assert set(np.unique(masks["continuous"])) == {0, 117}
    assert not burn([outside])["binary"].any()


def test_labels_in_another_crs_than_the_raster() -> None:
    # A UTM chip (EPSG:32611, 0.3 m) with CRS84 labels: CRESI writes an empty mask (Q5).
    utm_grid = GeoBox((200, 200), Affine(0.3, 0, 660000, 0, -0.3, 4006000), "EPSG:32611")
    to_lonlat = Transformer.from_crs(32611, 4326, always_xy=True)
    coords_utm = [px(utm_grid, 10, 100), px(utm_grid, 190, 100)]
    coords_lonlat = [list(to_lonlat.transform(*c)) for c in coords_utm]
    from_lonlat = burn([road(coords_lonlat, 30)], utm_grid)
    in_utm = burn_chip_masks(
        parse_road_labels(collection([road(coords_utm, 30)], "EPSG:32611"), "u"), utm_grid
    )
    for masks in (from_lonlat, in_utm):
        # 2 m each side of the line at 0.3 m pixels: 13 or 14 rows.
        assert 13 <= int((masks["binary"][:, 100] > 0).sum()) <= 14
    assert int((from_lonlat["binary"] != in_utm["binary"]).sum()) <= 4
    cresi = burn([road(coords_lonlat, 30)], utm_grid, profile="cresi")
    assert 13 <= int((cresi["binary"][:, 100] > 0).sum()) <= 14


def test_chip_crossing_a_utm_zone_boundary() -> None:
    # Chip centred just east of -114 deg (zone 11 | 12): buffered in zone 12 (the centre's).
    grid = GeoBox((400, 400), Affine(3.3e-6, 0, -114.0006, 0, -2.7e-6, 36.0), "EPSG:4326")
    assert utm_crs_containing(*(grid.affine @ (200, 200))).to_epsg() == 32612
    masks = burn([road([px(grid, 0, 200), px(grid, 400, 200)], 30)], grid)
    widths = (masks["binary"][:, [20, 380]] > 0).sum(axis=0)
    assert ((widths >= 14) & (widths <= 16)).all()  # 4 m / 0.27 m = 14.8 rows, both sides


def test_utm_zone_lookup_matches_pyproj() -> None:
    rng = np.random.default_rng(5)
    points = list(zip(rng.uniform(-179.9, 179.9, 25), rng.uniform(-79, 83, 25)))
    points += [(-114.0, 36.0), (6.0, 60.0), (-115.23, 36.14), (39.28, -6.8), (0.0, 0.0)]
    for lon, lat in points:
        expected = query_utm_crs_info(datum_name="WGS 84",
                                      area_of_interest=AreaOfInterest(lon, lat, lon, lat))
        expected = [c for c in expected if c.code[:3] in ("326", "327")]
        assert utm_crs_containing(lon, lat).to_epsg() == int(expected[0].code)


def test_utm_zone_lookup_equals_the_first_zone_of_projs_whole_list_on_every_edge() -> None:
    """`utm_crs_containing` reads only the areas of the zones next to the point; the
    answer is the first zone of PROJ's whole list of WGS84 UTM CRSs that contains the
    point (lowest code), on zone edges, at the equator, at 80°S and 84°N (EPSG's zone 29N
    reaches 12.01°W and 84.01°N), and none beyond them."""
    zones = [
        (int(info.code), info.area_of_use)
        for info in query_utm_crs_info(datum_name="WGS 84")
        if info.code[:3] in ("326", "327") and info.area_of_use is not None
    ]

    def first_zone(lon: float, lat: float) -> int | None:
        for code, area in zones:
            if area.west <= lon <= area.east and area.south <= lat <= area.north:
                return code
        return None

    edges = [6 * k + d for k in range(-30, 31) for d in (-0.02, -0.01, -0.005, 0, 0.005, 0.01, 3)]
    lons = sorted({lon for lon in edges + list(np.linspace(-180, 180, 181)) if -180 <= lon <= 180})
    lats = [-90, -80.5, -80.01, -80, -79.99, -45, -0.01, 0, 0.01, 45, 83.99, 84, 84.005, 84.01, 84.02, 90]
    for lon in lons:
        for lat in lats:
            try:
                found: int | None = utm_crs_containing(lon, lat).to_epsg()
            except ValueError:
                found = None
            assert found == first_zone(lon, lat), (lon, lat)


def test_cresi_utm_is_centroid_zone_and_always_north() -> None:
    dar = np.array([shapely.LineString([(39.28, -6.8), (39.29, -6.8)])])
    crs = cresi_utm_crs(dar, CRS.from_user_input("OGC:CRS84"))
    assert "+zone=37 " in crs.srs and "+south" not in crs.srs


def test_nodata_zeroing_rules() -> None:
    classes = np.ones((10, 10), np.uint8)
    image = np.ones((3, 10, 10), np.uint16)
    image[:, 0, :3] = 0  # 3 % of pixels nodata in every band
    image[0, 5, 5] = 0  # one band only: not nodata
    default = zero_under_nodata(classes, image, "sn5dask")
    assert int((default == 0).sum()) == 3 and default[5, 5] == 1
    assert np.array_equal(zero_under_nodata(classes, image, "cresi"), classes)  # < 5 %
    image[:, 1, :] = 0  # now 13 %
    assert int((zero_under_nodata(classes, image, "cresi") == 0).sum()) == 13
    single_band = image[:1]
    assert np.array_equal(zero_under_nodata(classes, single_band, "cresi"), classes)
    assert int((zero_under_nodata(classes, single_band, "sn5dask") == 0).sum()) == 14


# --- properties ----------------------------------------------------------------------

GRID = GeoBox((64, 64), Affine(0.5, 0, 500000, 0, -0.5, 4000000), "EPSG:32611")


@st.composite
def road_sets(draw):
    n = draw(st.integers(0, 6))
    features = []
    for _ in range(n):
        pts = draw(st.lists(st.tuples(st.floats(-10, 74), st.floats(-10, 74)), min_size=2, max_size=4))
        speed = draw(st.one_of(st.none(), st.sampled_from([0, 5, 10, 10.5, 33.3, 65, 71, 90])))
        features.append(road([px(GRID, c, r) for c, r in pts], speed))
    return features


@settings(max_examples=60, deadline=None)
@given(features=road_sets(), profile=st.sampled_from(["sn5dask", "cresi"]))
def test_multichannel_bands_disjoint_within_band8_and_inside_footprint(features, profile) -> None:
    labels = parse_road_labels(collection(features, "EPSG:32611"), "p")
    masks = burn_chip_masks(labels, GRID, profile=profile)
    mc = masks["multichannel"] > 0
    assert (mc[:7].sum(axis=0) <= 1).all()
    assert not (mc[:7].any(axis=0) & ~mc[7]).any()
    assert np.array_equal(masks["binary"] > 0, mc[7])
    # DESIGN.md §4 written out naively: band k = 255 where binned // 36 == k; band 8 = binary.
    for k in range(1, 8):
        assert np.array_equal(masks["multichannel"][k - 1], np.where(masks["binned"] // 36 == k, 255, 0))
    assert np.array_equal(masks["multichannel"][7], masks["binary"])
    speeds = labels.speed_mph
    if len(speeds) and np.all(np.isfinite(speeds) & (speeds > 0)):
        assert np.array_equal(mc[:7].any(axis=0), mc[7])
    # Every road pixel lies in some road's 2 m footprint (generously: all-touched).
    if len(labels):
        footprint = rasterize([(g.buffer(2.0), 1) for g in labels.lines], out_shape=(64, 64),
                              transform=GRID.affine, all_touched=True, dtype=np.uint8)
        assert not (mc[7] & (footprint == 0)).any()


def test_mask_kinds_are_lookups_of_one_raster() -> None:
    labels = parse_road_labels(collection([road([px(VEGAS, 0, 100), px(VEGAS, 200, 100)], 33)]), "k")
    classes = burn_speed_classes(labels, VEGAS)
    only_binned = masks_from_speed_classes(classes, ["binned"])
    assert list(only_binned) == ["binned"] and only_binned["binned"].max() == 144
    with pytest.raises(ValueError, match="unknown mask kind"):
        masks_from_speed_classes(classes, ["speedy"])


def test_shapes_for_rasterize_equal_shapelys_geo_interface() -> None:
    """`_geojson_like` hands rasterize the coordinates shapely's `__geo_interface__` gives
    (exterior and holes, multipolygon parts), so the burned pixels are the same."""
    from sn5dask.core.masks import _geojson_like

    ring = shapely.LineString([(2, 2), (30, 3), (28, 29), (4, 27), (2, 2)])
    with_hole = shapely.Polygon(ring.coords, [[(10, 10), (20, 10), (20, 20), (10, 20)]])
    loop_buffer = shapely.LineString([(5, 5), (40, 5), (40, 40), (5, 40), (5, 6)]).buffer(2.0)
    parts = shapely.MultiPolygon([with_hole, shapely.box(40, 40, 60, 55)])
    for geometry in (with_hole, loop_buffer, parts, shapely.box(1, 1, 3, 3)):
        ours, theirs = _geojson_like(geometry), geometry.__geo_interface__
        assert ours["type"] == theirs["type"]
        assert json.loads(json.dumps(ours["coordinates"])) == json.loads(json.dumps(theirs["coordinates"]))
        burned = [rasterize([(shape, 1)], out_shape=(64, 64), fill=0, dtype=np.uint8)
                  for shape in (ours, geometry)]  # fmt: skip
        assert burned[0].any() and np.array_equal(burned[0], burned[1])
