"""What the values of each output mean (DESIGN.md §5.1): the one place that says it.

The GeoTIFF band descriptions, the Zarr variables' attributes, the STAC label classes and
README's table all come from here, so a trainer reading any of them reads the same
contract. Pure data.
"""

from __future__ import annotations

from dataclasses import dataclass

from sn5dask.core.speed import (
    BIN_VALUE_STEP,
    BIN_WIDTH_MPH,
    CONTINUOUS_MAX_MPH,
    N_SPEED_CHANNELS,
)

#: The mask kinds sn5dask burns (`--masks`), in the order outputs list them.
MASK_KINDS = ("binary", "continuous", "binned", "multichannel")
#: The GeoTIFF codecs of `--compress` (all lossless).
COMPRESSIONS = ("deflate", "zstd", "lzw", "none")

ROAD = "road"


def speed_bin_description(k: int) -> str:
    """`speed 11-20 mph` for bin k (1-based; right-closed 10 mph bins, the last open)."""
    low = int(BIN_WIDTH_MPH * (k - 1)) + 1
    if k == N_SPEED_CHANNELS:
        return f"speed {low}+ mph"
    return f"speed {low}-{int(BIN_WIDTH_MPH * k)} mph"


SPEED_BINS = tuple(speed_bin_description(k) for k in range(1, N_SPEED_CHANNELS + 1))


@dataclass(frozen=True)
class MaskEncoding:
    """One mask kind: its band descriptions, what its values mean, and its classes as
    (value, name) pairs (for STAC `label:classes` and class-index loaders)."""

    bands: tuple[str, ...]
    values: str
    classes: tuple[tuple[int, str], ...]


MASK_ENCODINGS: dict[str, MaskEncoding] = {
    "binary": MaskEncoding(
        bands=(ROAD,),
        values="255 on road, 0 elsewhere",
        classes=((0, "background"), (255, ROAD)),
    ),
    "continuous": MaskEncoding(
        bands=(f"speed: floor(255 * mph / {CONTINUOUS_MAX_MPH:g}), 255 at {CONTINUOUS_MAX_MPH:g}+ mph",),
        values=(
            f"floor(255 * mph / {CONTINUOUS_MAX_MPH:g}) (at most 255) on roads with a speed, "
            "0 elsewhere"
        ),
        classes=((0, "background"),),
    ),
    "binned": MaskEncoding(
        bands=(f"speed bin: {BIN_VALUE_STEP} * k for bins k = 1..{N_SPEED_CHANNELS} of {BIN_WIDTH_MPH:g} mph",),
        values=(
            f"{BIN_VALUE_STEP} * k for speed bin k = 1..{N_SPEED_CHANNELS} (right-closed "
            f"{BIN_WIDTH_MPH:g} mph bins; above 70 mph 255, bin 7), 0 elsewhere"
        ),
        # Bin 7 has two values: 252 (61-70 mph) and 255 (above 70 mph, clamped as GDAL does).
        classes=((0, "background"),)
        + tuple((BIN_VALUE_STEP * k, SPEED_BINS[k - 1]) for k in range(1, N_SPEED_CHANNELS))
        + ((BIN_VALUE_STEP * N_SPEED_CHANNELS, "speed 61-70 mph"), (255, "speed 71+ mph")),
    ),
    "multichannel": MaskEncoding(
        bands=SPEED_BINS + (ROAD,),
        values=(
            f"255 where the road's speed is in the band's bin (bands 1-{N_SPEED_CHANNELS}), "
            f"255 on every road (band {N_SPEED_CHANNELS + 1}, = binary), 0 elsewhere"
        ),
        classes=((0, "background"), (255, "in the band's class")),
    ),
}

#: The 8-bit image's nodata value: its GeoTIFF tag, its Zarr variable's `nodata`
#: attribute and its STAC raster band's `nodata` all say this one value.
RGB_NODATA = 0

RGB_VALUES = (
    "8-bit stretch of each band between its low and high percentile; 0 is nodata "
    "(in the default profile only nodata; in the cresi profile also pixels at or below the "
    "low cut, as CRESI writes them)"
)


def rgb_descriptions(bands: tuple[int, ...]) -> tuple[str, ...]:
    """Band descriptions of the 8-bit image: which PS-MS band each one is."""
    return tuple(f"PS-MS band {b}" for b in bands)
