"""sn5dask.core.speed: speed sources, SN3 inference, burn values (CRESI.md §(b))."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from sn5dask.core.speed import (
    binned_value,
    continuous_value,
    road_speed,
    sn3_speed_mph,
    speed_bin,
)
from tests.conftest import REFDATA


def test_mph_field_first_then_mps() -> None:
    assert road_speed({"inferred_speed_mph": 30, "inferred_speed_mps": 1}).mph == 30
    speed = road_speed({"inferred_speed_mps": 20.1168})
    assert speed.mph == pytest.approx(45.0) and speed.mps == 20.1168
    # mps is what CRESI groups by: the file's value is kept when present.
    assert road_speed({"inferred_speed_mph": 30, "inferred_speed_mps": 13.4}).mps == 13.4
    assert road_speed({"inferred_speed_mph": 30}).mps == 30 * 0.44704


@pytest.mark.parametrize(
    "value", [None, "fast", float("nan"), float("inf"), -5, 0, True, [3], {"a": 1}]
)
def test_unusable_speeds(value: object) -> None:
    speed = road_speed({"inferred_speed_mph": value})
    assert speed.mph is None and speed.problem


def test_numeric_strings_are_speeds() -> None:
    assert road_speed({"inferred_speed_mph": " 25.5 "}).mph == 25.5


def test_speed_field_and_default() -> None:
    props = {"speed_mph": 40, "inferred_speed_mph": 20}
    assert road_speed(props).mph == 20
    assert road_speed(props, speed_field="speed_mph").mph == 40
    assert road_speed({"x": 1}, speed_field="speed_mph").mph is None
    assert road_speed({}, default_speed_mph=15).mph == 15
    assert road_speed({"inferred_speed_mph": 0}, default_speed_mph=15).mph == 15
    assert road_speed({}).problem.startswith("no speed field")


@pytest.mark.parametrize(
    ("props", "mph"),
    [
        ({"road_type": "2", "lane_number": "2", "paved": "1"}, 45),
        ({"road_type": "2", "lane_number": "3", "paved": "1"}, 55),
        ({"road_type": "1", "lane_number": "12", "paved": "1"}, 65),
        ({"road_type": "3", "lane_numbe": "4", "lane_number": "1"}, 45),  # lane_numbe wins
        ({"road_type": "5", "paved": "2"}, 18.75),  # 1 lane, unpaved: 25 * 0.75
        ({"road_type": "6", "lane_number": "9"}, 20),
        ({"road_type": 7}, 20),
    ],
)
def test_sn3_table(props: dict, mph: float) -> None:
    assert sn3_speed_mph(props) == (mph, None)
    assert road_speed(props).mph == mph


@pytest.mark.parametrize(
    "props",
    [
        {"road_type": "2", "lane_number": "13"},
        {"road_type": "2", "lane_number": "0"},
        {"road_type": "2", "paved": "3"},
        {"road_type": "9"},
        {"road_type": "x"},
    ],
)
def test_sn3_out_of_table_is_no_speed(props: dict) -> None:
    mph, problem = sn3_speed_mph(props)
    assert mph is None and problem


def test_continuous_values_from_cresi_md() -> None:
    table = {5: 19, 10: 39, 10.5: 41, 20: 78, 22.5: 88, 25: 98, 30: 117, 35: 137, 45: 176,
             50: 196, 55: 215, 60: 235, 65: 255, 80: 255, 0: 0, -3: 0}  # fmt: skip
    got = continuous_value(np.array(list(table), dtype=np.float64))
    assert got.dtype == np.uint8
    assert got.tolist() == list(table.values())


def test_binned_edges() -> None:
    mph = np.array([0.5, 10, 10.5, 20, 20.01, 60, 60.5, 70, 70.5, 75, 200])
    assert binned_value(mph).tolist() == [36, 36, 72, 72, 108, 216, 252, 252, 255, 255, 255]
    assert speed_bin(mph).tolist() == [1, 1, 2, 2, 3, 6, 7, 7, 7, 7, 7]


def test_binned_matches_cresi_conversion_csv() -> None:
    path = REFDATA / "cresi" / "configs" / "speed_conversion_binned7.csv"
    with path.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 65
    for row in rows:
        speed = float(row["speed"])
        assert binned_value(speed) == int(row["burn_val"])
        assert speed_bin(speed) - 1 == int(row["channel"])
        assert math.ceil(speed / 10) - 1 == int(row["channel"])
