"""Hypothesis fuzzing of the pure core: random GeoJSON-like structures and random small
rasters never crash it; they give valid uint8 outputs or the documented errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from affine import Affine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from odc.geo.geobox import GeoBox

from sn5dask.core.labels import parse_road_labels
from sn5dask.core.masks import MASK_KINDS
from sn5dask.io.burn import burn_chip_masks
from sn5dask.core.stretch import (
    band_cut,
    band_histograms,
    percentiles_from_histogram,
    stretch_to_uint8,
)
from sn5dask.errors import LabelError

pytestmark = pytest.mark.faults
GRID = GeoBox((40, 50), Affine(2.7e-6, 0, -115.2, 0, -2.7e-6, 36.18), "EPSG:4326")
x0, y0 = -115.2, 36.18

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                         st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)), max_leaves=20)
coordinate = st.tuples(st.floats(x0 - 1e-4, x0 + 2e-4), st.floats(y0 - 2e-4, y0 + 1e-4))
near_coordinates = st.lists(st.one_of(coordinate.map(list), json_values), max_size=5)
geometry = st.one_of(
    st.none(),
    json_values,
    st.fixed_dictionaries({"type": st.sampled_from(["LineString", "MultiLineString", "Point", "Polygon",
                                                    "GeometryCollection", "Bogus"]),
                           "coordinates": st.one_of(near_coordinates, st.lists(near_coordinates, max_size=3))}),
)
speed = st.one_of(json_scalars, st.sampled_from([5, 10, 10.5, 65, 70.5, 200, 0, -1]))
properties = st.one_of(json_values, st.fixed_dictionaries(
    {}, optional={"inferred_speed_mph": speed, "inferred_speed_mps": speed, "road_type": json_scalars,
                  "lane_number": json_scalars, "paved": json_scalars}))
feature = st.one_of(json_values, st.fixed_dictionaries({"type": st.just("Feature"), "geometry": geometry,
                                                        "properties": properties}))
document = st.one_of(
    json_values,
    st.fixed_dictionaries({"type": st.just("FeatureCollection"), "features": st.lists(feature, max_size=8)},
                          optional={"crs": json_values}),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=document, profile=st.sampled_from(["sn5dask", "cresi"]))
def test_random_label_structures_never_crash(doc, profile) -> None:
    text = json.dumps(doc, allow_nan=True)
    try:
        labels = parse_road_labels(text, "fuzz.geojson")
    except LabelError as exc:
        assert "fuzz.geojson" in str(exc)
        return
    assert len(labels.speed_mph) == len(labels.lines)
    assert all(w.startswith("fuzz.geojson") for w in labels.warnings)
    image = np.ones((3, 40, 50), np.uint16)
    masks = burn_chip_masks(labels, GRID, profile=profile, image=image)
    assert set(masks) == set(MASK_KINDS)
    for kind, mask in masks.items():
        assert mask.dtype == np.uint8
        assert mask.shape == ((8, 40, 50) if kind == "multichannel" else (40, 50))
    assert set(np.unique(masks["binary"])) <= {0, 255}


@settings(max_examples=300, deadline=None)
@given(
    data=st.one_of(
        hnp.arrays(np.uint16, hnp.array_shapes(min_dims=3, max_dims=3, min_side=1, max_side=12)),
        hnp.arrays(np.uint8, hnp.array_shapes(min_dims=3, max_dims=3, min_side=1, max_side=12)),
    ),
    low=st.floats(0, 100),
    high=st.floats(0, 100),
    nodata=st.one_of(st.none(), st.integers(0, 70000), st.floats(allow_nan=True)),
)
def test_random_rasters_stretch_to_uint8(data, low, high, nodata) -> None:
    low, high = min(low, high), max(low, high)
    hist = band_histograms(data, nodata)
    cuts = []
    for band, h in zip(data, hist):
        p = percentiles_from_histogram(h, [low, high], data.dtype)
        is_valid = band > 0
        if nodata is not None and not math.isnan(nodata):
            is_valid &= band != nodata
        valid = band[is_valid]
        if valid.size:
            assert p == list(np.percentile(valid, [low, high]))
        else:
            assert p == [None, None]
        cuts.append(band_cut(*p))
    out = stretch_to_uint8(data, cuts, nodata)
    assert out.dtype == np.uint8 and out.shape == data.shape
    assert not out[data == 0].any()
