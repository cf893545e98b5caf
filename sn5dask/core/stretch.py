"""Pure 8-bit stretch: per-band histograms, exact percentiles, uint8 lookup tables.

Nothing here touches files or dask. Arrays are (band, y, x) with an unsigned integer
dtype (uint8 or uint16); histograms are int64 with 256 or 65536 bins, one row per band.

Exactness: `percentiles_from_histogram` returns exactly what
`numpy.percentile(valid_values, q)` (method "linear") returns, because a percentile of
integer data only depends on the count of values and two order statistics, and those
follow from the histogram's cumulative sum. The final interpolation repeats numpy's own
arithmetic (same dtypes, same operation order) so the float result agrees to the last bit.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Stretch rule of DESIGN.md §3: GDAL's `-scale` treats hi == lo as hi = lo + 0.1.
GDAL_EQUAL_RANGE_BUMP = 0.1
#: CRESI floors the low cut at 1 (a value of 0 is nodata in SpaceNet imagery).
LOW_CUT_FLOOR = 1.0
#: Histogram bins of each supported dtype (one bin per value).
UINT8_BINS = 256
UINT16_BINS = 65536


def histogram_bins(dtype: np.dtype | type) -> int:
    """Number of histogram bins for an unsigned integer dtype (256 or 65536)."""
    dtype = np.dtype(dtype)
    if dtype == np.uint8:
        return UINT8_BINS
    if dtype == np.uint16:
        return UINT16_BINS
    raise ValueError(f"unsupported dtype {dtype}: only uint8 and uint16 have exact histograms")


def band_histograms(
    bands: np.ndarray, nodata: Sequence[float | None] | float | None = None
) -> np.ndarray:
    """Count each value of each band, leaving out invalid pixels.

    `bands` is (band, y, x) uint8/uint16. A pixel is valid in a band when its value is
    > 0 and differs from that band's declared `nodata` (one value, or one per band; None:
    no nodata). Invalid values are simply removed from their bins, so the histogram's sum
    is the band's valid-pixel count. Returns int64 (band, bins).
    """
    n_bins = histogram_bins(bands.dtype)
    nodata_per_band = _per_band(nodata, bands.shape[0])
    hist = np.empty((bands.shape[0], n_bins), dtype=np.int64)
    for i, band in enumerate(bands):
        hist[i] = np.bincount(band.ravel(), minlength=n_bins)
        hist[i, 0] = 0
        value = nodata_per_band[i]
        if value is not None and float(value).is_integer() and 0 <= value < n_bins:
            hist[i, int(value)] = 0
    return hist


def zero_fractions(bands: np.ndarray) -> list[float]:
    """Share of pixels equal to 0 in each band (CRESI's `zero_frac` = 1 - n_pos / n)."""
    n = bands.shape[1] * bands.shape[2]
    return [1.0 - np.count_nonzero(band) / n for band in bands]


def percentiles_from_histogram(
    hist: np.ndarray, percentiles: Sequence[float], dtype: np.dtype | type = np.uint16
) -> list[float | None]:
    """Exact `numpy.percentile(values, q)` for each q, from one band's histogram.

    Returns None for every q when the histogram is empty (numpy raises there).
    `dtype` is the data's dtype: numpy interpolates with differences taken in it.
    """
    cumulative = np.cumsum(hist)
    n = int(cumulative[-1])
    if n == 0:
        return [None for _ in percentiles]
    value_type = np.dtype(dtype).type
    return [_numpy_linear_percentile(cumulative, n, q, value_type) for q in percentiles]


def _numpy_linear_percentile(
    cumulative: np.ndarray, n: int, q: float, value_type: type
) -> float:
    # numpy: quantile = q / 100; virtual index = (n - 1) * quantile; neighbours are
    # floor(virtual) and floor(virtual) + 1, both the last element when virtual >= n - 1
    # (gamma is then computed against index -1, but both neighbours are equal).
    quantile = np.true_divide(q, 100)
    if not 0 <= quantile <= 1:
        raise ValueError(f"percentile {q} is outside [0, 100]")
    virtual = (n - 1) * quantile
    previous = np.floor(virtual)
    if virtual >= n - 1:
        lower_rank = upper_rank = n - 1
        gamma = float(virtual - (-1))
    else:
        lower_rank = int(previous)
        upper_rank = lower_rank + 1
        gamma = float(virtual - previous)
    # The k-th smallest value (0-based) is the first bin whose cumulative count exceeds k.
    lower, upper = np.searchsorted(cumulative, [lower_rank, upper_rank], side="right")
    a = value_type(lower)
    b = value_type(upper)
    diff_b_a = b - a
    if gamma >= 0.5:
        return float(np.subtract(b, diff_b_a * (1 - gamma), dtype=np.float64))
    return float(np.add(a, diff_b_a * gamma, dtype=np.float64))


@dataclass(frozen=True)
class BandCut:
    """The stretch range of one band: `lo` maps to 0, `hi` to 255 (before rounding).

    `lo`/`hi` are None when the band had no valid pixel (the band becomes all 0).
    """

    lo: float | None
    hi: float | None

    @property
    def is_flat(self) -> bool:
        return self.lo is not None and self.hi is not None and self.hi <= self.lo


def band_cut(p_low: float | None, p_high: float | None) -> BandCut:
    """Stretch range from two percentiles: lo = max(1, p_low), hi = p_high (CRESI)."""
    if p_low is None or p_high is None:
        return BandCut(None, None)
    return BandCut(max(LOW_CUT_FLOOR, p_low), p_high)


def stretch_lut(
    cut: BandCut,
    dtype: np.dtype | type = np.uint16,
    nodata: float | None = None,
    floor: int = 0,
) -> np.ndarray:
    """uint8 lookup table for one band: out = lut[value].

    Value rule (DESIGN.md §3, GDAL's `-scale` as CRESI uses it), in float64:
    `clamp(floor((v - lo) * 255 / (hi - lo) + 0.5), 0, 255)`; when hi <= lo, hi = lo + 0.1;
    then valid values are raised to at least `floor` (1 in the default profile, so that 0
    means nodata and nothing else; 0 for CRESI's pixels). 0 and the band's nodata map to 0;
    a band without a cut is all 0.
    """
    n_bins = histogram_bins(dtype)
    if cut.lo is None or cut.hi is None:
        return np.zeros(n_bins, dtype=np.uint8)
    lo = cut.lo
    hi = cut.hi if cut.hi > lo else lo + GDAL_EQUAL_RANGE_BUMP
    values = np.arange(n_bins, dtype=np.float64)
    scaled = np.floor((values - lo) * 255 / (hi - lo) + 0.5)
    lut = np.clip(scaled, floor, 255).astype(np.uint8)
    lut[0] = 0
    if nodata is not None and float(nodata).is_integer() and 0 <= nodata < n_bins:
        lut[int(nodata)] = 0
    return lut


def stretch_to_uint8(
    bands: np.ndarray,
    cuts: Sequence[BandCut],
    nodata: Sequence[float | None] | float | None = None,
    floor: int = 0,
) -> np.ndarray:
    """Stretch (band, y, x) uint8/uint16 data to uint8 with one cut per band.

    Uses one lookup table per band (exactly the formula of `stretch_lut`, evaluated
    once per possible value instead of once per pixel). `floor=1` is the default
    profile's rule (a valid pixel is never 0); `floor=0` gives CRESI's pixels.
    """
    if len(cuts) != bands.shape[0]:
        raise ValueError(f"{len(cuts)} cuts for {bands.shape[0]} bands")
    nodata_per_band = _per_band(nodata, bands.shape[0])
    out = np.empty(bands.shape, dtype=np.uint8)
    for i, (band, cut) in enumerate(zip(bands, cuts, strict=True)):
        lut = _shared_lut(cut, bands.dtype.str, nodata_per_band[i], floor)
        np.take(lut, band, out=out[i])
    return out


@functools.lru_cache(maxsize=32)
def _shared_lut(cut: BandCut, dtype: str, nodata: float | None, floor: int) -> np.ndarray:
    """`stretch_lut`, read-only and kept per process: an AOI-wide stretch has the same cut
    for every chip, and a uint16 table (65,536 values) cost more than stretching a small
    chip."""
    lut = stretch_lut(cut, np.dtype(dtype), nodata, floor)
    lut.flags.writeable = False
    return lut


def _per_band(value: Sequence[float | None] | float | None, n: int) -> list[float | None]:
    if value is None or isinstance(value, int | float):
        return [value] * n
    values = list(value)
    if len(values) != n:
        raise ValueError(f"{len(values)} nodata values for {n} bands")
    return values
