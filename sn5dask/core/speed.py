"""Pure speed rules: the speed (mph) of a road from its GeoJSON properties, and burn values.

Speed sources, in order (DESIGN.md §4): a `--speed-field` when given; else
`inferred_speed_mph`; else `inferred_speed_mps` / 0.44704; else SpaceNet 3 inference from
`road_type` / `lane_number` (or `lane_numbe`) / `paved` with CRESI's table; else none.
A speed that is missing, null, NaN, infinite, non-numeric or <= 0 is "no usable speed".
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Metres per second in one mile per hour (CRESI: mps = 0.44704 * mph).
MPS_PER_MPH = 0.44704
#: Speed at which the continuous mask saturates (255).
CONTINUOUS_MAX_MPH = 65.0
#: Width of one speed bin and the value step between bins (CRESI: int(255 / 7) = 36).
BIN_WIDTH_MPH = 10.0
BIN_VALUE_STEP = 36
#: Number of speed channels in the multichannel mask (the 8th channel is the binary mask).
N_SPEED_CHANNELS = 7

# CRESI's SpaceNet 3 table (road_speed.py speed_func): road_type -> (1-2 lanes, 3+ lanes).
_SN3_SPEED_MPH_BY_ROAD_TYPE: dict[int, tuple[float, float]] = {
    1: (55.0, 65.0),  # motorway
    2: (45.0, 55.0),  # primary
    3: (35.0, 45.0),  # secondary
    4: (30.0, 35.0),  # tertiary
    5: (25.0, 30.0),  # residential
    6: (20.0, 20.0),  # unclassified
    7: (20.0, 20.0),  # cart track
}
_SN3_MAX_LANES = 12
_UNPAVED_FACTOR = 0.75


@dataclass(frozen=True)
class RoadSpeed:
    """Speed of one road: `mph` is None when no usable speed; `problem` says why."""

    mph: float | None
    mps: float | None
    problem: str | None = None


def road_speed(
    properties: Mapping[str, Any] | None,
    *,
    speed_field: str | None = None,
    default_speed_mph: float | None = None,
) -> RoadSpeed:
    """Speed of one road from its properties (see the module docstring for the order).

    `mps` is the file's `inferred_speed_mps` when present and numeric (CRESI groups roads
    by it), else mph * 0.44704. `default_speed_mph` replaces a missing/unusable speed.
    """
    props = dict(properties or {})
    mph, problem = _speed_mph_from_properties(props, speed_field)
    mps_in_file = _as_number(props.get("inferred_speed_mps"))
    if mph is None and default_speed_mph is not None:
        mph, problem = float(default_speed_mph), None
        mps_in_file = None
    if mph is None:
        return RoadSpeed(None, None, problem)
    mps = mps_in_file if mps_in_file is not None and speed_field is None else mph * MPS_PER_MPH
    return RoadSpeed(mph, mps, None)


def _speed_mph_from_properties(
    props: dict[str, Any], speed_field: str | None
) -> tuple[float | None, str | None]:
    if speed_field is not None:
        return _usable(props.get(speed_field), speed_field, missing=speed_field not in props)
    if "inferred_speed_mph" in props:
        return _usable(props["inferred_speed_mph"], "inferred_speed_mph")
    if "inferred_speed_mps" in props:
        mps = _as_number(props["inferred_speed_mps"])
        if mps is None or mps <= 0:
            return None, f"unusable inferred_speed_mps {props['inferred_speed_mps']!r}"
        return mps / MPS_PER_MPH, None
    if "road_type" in props:
        return sn3_speed_mph(props)
    return None, "no speed field (inferred_speed_mph, inferred_speed_mps or road_type)"


def _usable(value: Any, field: str, missing: bool = False) -> tuple[float | None, str | None]:
    if missing:
        return None, f"no {field} property"
    number = _as_number(value)
    if number is None:
        return None, f"non-numeric or missing {field} {value!r}"
    if number <= 0:
        return None, f"non-positive {field} {value!r}"
    return number, None


def _as_number(value: Any) -> float | None:
    """A finite float from a number or a numeric string; None otherwise (bools too)."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def sn3_speed_mph(props: Mapping[str, Any]) -> tuple[float | None, str | None]:
    """SpaceNet 3 speed inference with CRESI's table.

    `lane_numbe` wins over `lane_number` (CRESI renames it over the other); a missing lane
    count is 1 and a missing `paved` is paved. Unknown road types, lane counts outside
    1..12 or `paved` outside {1, 2} give no usable speed (CRESI raises KeyError there).
    """
    road_type = _as_int(props.get("road_type"))
    lanes_raw = props.get("lane_numbe", props.get("lane_number", 1))
    lanes = _as_int(lanes_raw)
    paved = _as_int(props.get("paved", 1))
    if road_type not in _SN3_SPEED_MPH_BY_ROAD_TYPE:
        return None, f"unknown SN3 road_type {props.get('road_type')!r}"
    if lanes is None or not 1 <= lanes <= _SN3_MAX_LANES:
        return None, f"SN3 lane count {lanes_raw!r} outside 1..{_SN3_MAX_LANES}"
    if paved not in (1, 2):
        return None, f"SN3 paved {props.get('paved')!r} is not 1 (paved) or 2 (unpaved)"
    few_lanes_mph, many_lanes_mph = _SN3_SPEED_MPH_BY_ROAD_TYPE[road_type]
    mph = few_lanes_mph if lanes <= 2 else many_lanes_mph
    if paved == 2:
        mph *= _UNPAVED_FACTOR
    return mph, None


def _as_int(value: Any) -> int | None:
    """`int(value)` as CRESI casts ('2' -> 2, 2.7 -> 2); None where that would raise."""
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        number = _as_number(value)
        return int(number) if number is not None else None


def continuous_value(speed_mph: np.ndarray | float) -> np.ndarray:
    """Continuous burn value: `min(255, floor(255.0 * mph / 65.0))` in float64, as uint8.

    Written in CRESI's order of operations (255 * mph first, then / 65) so speeds at the
    edges truncate identically. Speeds <= 0 give 0.
    """
    mph = np.asarray(speed_mph, dtype=np.float64)
    value = np.floor(np.clip(255.0 * mph / CONTINUOUS_MAX_MPH, 0.0, 255.0))
    return value.astype(np.uint8)


def speed_bin(speed_mph: np.ndarray | float) -> np.ndarray:
    """Speed bin 1..7 (right-closed 10 mph bins, > 70 mph in bin 7), 0 for speeds <= 0."""
    mph = np.asarray(speed_mph, dtype=np.float64)
    binned = binned_value(mph)
    return (binned // BIN_VALUE_STEP).astype(np.uint8)


def binned_value(speed_mph: np.ndarray | float) -> np.ndarray:
    """Binned burn value: `min(255, 36 * ceil(mph / 10))` as uint8 (0 for mph <= 0).

    Above 70 mph the raw value (288, ...) clamps to 255 as GDAL >= 3.4 does, which lands
    in channel 7 (255 // 36 == 7).
    """
    mph = np.asarray(speed_mph, dtype=np.float64)
    value = BIN_VALUE_STEP * np.ceil(mph / BIN_WIDTH_MPH)
    return np.clip(value, 0, 255).astype(np.uint8)
