"""sn5dask.core.stretch: exact histogram percentiles, the uint8 rule, CRESI case s01."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sn5dask.core.stretch import (
    BandCut,
    band_cut,
    band_histograms,
    percentiles_from_histogram,
    stretch_lut,
    stretch_to_uint8,
    zero_fractions,
)
from tests.conftest import S01

S01_NAME = "SN5_roads_train_AOI_8_Mumbai_PS-MS_chip5.tif"


def reference_stretch(band: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """The CRESI.md formula evaluated per pixel (no lookup table)."""
    if hi <= lo:
        hi = lo + 0.1
    out = np.clip(np.floor((band.astype(np.float64) - lo) * 255 / (hi - lo) + 0.5), 0, 255)
    out[band == 0] = 0
    return out.astype(np.uint8)


@settings(max_examples=300, deadline=None)
@given(
    values=hnp.arrays(
        np.uint16,
        st.integers(1, 300),
        elements=st.one_of(st.integers(0, 65535), st.sampled_from([0, 1, 7, 7, 7, 65535])),
    ),
    q=st.one_of(st.sampled_from([0, 100, 2, 98, 50, 2.0, 98.0]), st.floats(0, 100)),
)
def test_histogram_percentile_equals_numpy_uint16(values: np.ndarray, q: float) -> None:
    hist = band_histograms(values[np.newaxis, np.newaxis, :])[0]
    valid = values[values > 0]
    got = percentiles_from_histogram(hist, [q], np.uint16)[0]
    if valid.size == 0:
        assert got is None
    else:
        expected = np.percentile(valid, q)
        assert got == expected and np.float64(got).tobytes() == np.float64(expected).tobytes()


@settings(max_examples=150, deadline=None)
@given(
    values=hnp.arrays(np.uint8, st.integers(1, 200)),
    q=st.floats(0, 100),
)
def test_histogram_percentile_equals_numpy_uint8(values: np.ndarray, q: float) -> None:
    hist = band_histograms(values[np.newaxis, np.newaxis, :])[0]
    assert hist.shape == (256,)
    valid = values[values > 0]
    got = percentiles_from_histogram(hist, [q], np.uint8)[0]
    assert got == (np.percentile(valid, q) if valid.size else None)


def test_large_counts_stay_exact() -> None:
    # Many ties and a count near a real AOI's (1e8 pixels): the virtual index has a
    # fractional part that numpy rounds the same way.
    rng = np.random.default_rng(1)
    values = rng.integers(1, 2048, 2_000_003, dtype=np.uint16)
    hist = band_histograms(values[np.newaxis, np.newaxis, :])[0]
    for q in (0, 0.001, 2, 33.3, 98, 99.999, 100):
        assert percentiles_from_histogram(hist, [q])[0] == np.percentile(values, q)


def test_summed_histograms_equal_concatenated_percentiles() -> None:
    rng = np.random.default_rng(2)
    chips = [rng.integers(0, 1500, (3, 40, 50), dtype=np.uint16) for _ in range(5)]
    total = sum(band_histograms(c) for c in chips)
    for band in range(3):
        values = np.concatenate([c[band].ravel() for c in chips])
        values = values[values > 0]
        assert percentiles_from_histogram(total[band], [2, 98]) == list(
            np.percentile(values, [2, 98])
        )


def test_nodata_value_is_excluded_and_empty_band_is_none() -> None:
    band = np.array([[[0, 5, 5, 9, 9, 9]]], dtype=np.uint16)
    assert band_histograms(band, nodata=9)[0].sum() == 2
    assert band_histograms(band, nodata=[None])[0].sum() == 5
    empty = band_histograms(np.zeros((1, 2, 2), np.uint16))[0]
    assert percentiles_from_histogram(empty, [2, 98]) == [None, None]


def test_band_cut_floors_low_at_one() -> None:
    assert band_cut(0.4, 10.0) == BandCut(1.0, 10.0)
    assert band_cut(None, None) == BandCut(None, None)


def test_lut_matches_formula_for_every_value() -> None:
    values = np.arange(65536, dtype=np.uint16).reshape(1, 256, 256)
    for lo, hi in [(126.0, 1011.0), (1.0, 1.0), (163.5, 908.25), (5.0, 4.0)]:
        out = stretch_to_uint8(values, [BandCut(lo, hi)])
        assert out.dtype == np.uint8
        assert np.array_equal(out[0], reference_stretch(values[0], lo, hi))


def test_flat_band_gdal_rule() -> None:
    lut = stretch_lut(BandCut(100.0, 100.0))
    assert lut[99] == 0 and lut[100] == 0 and lut[101] == 255 and lut[0] == 0


def test_band_without_valid_pixels_is_zero() -> None:
    out = stretch_to_uint8(np.full((1, 3, 3), 7, np.uint16), [BandCut(None, None)])
    assert not out.any()


def test_nodata_pixels_map_to_zero() -> None:
    band = np.array([[[0, 50, 60, 65535]]], dtype=np.uint16)
    out = stretch_to_uint8(band, [BandCut(1.0, 100.0)], nodata=[65535])
    # (50 - 1) * 255 / 99 = 126.2 -> 126; (60 - 1) * 255 / 99 = 151.97 -> 152
    assert out.tolist() == [[[0, 126, 152, 0]]]


def test_zero_fractions() -> None:
    bands = np.zeros((2, 10, 10), np.uint16)
    bands[0, :3] = 5
    bands[1] = 1
    assert zero_fractions(bands) == [0.7, 0.0]


def test_cresi_case_s01_bit_exact() -> None:
    with rasterio.open(S01 / "inputs" / "PS-MS" / S01_NAME) as src:
        bands = src.read([5, 3, 2])
    with rasterio.open(S01 / "expected" / "PS-RGB" / S01_NAME) as src:
        expected = src.read()
    hist = band_histograms(bands)
    cuts = [band_cut(*percentiles_from_histogram(h, [2, 98])) for h in hist]
    # The percentiles CRESI passed to gdal_translate (cresi_stdout.txt).
    assert [(c.lo, c.hi) for c in cuts] == [(126.0, 1011.0), (170.0, 988.0), (163.0, 908.0)]
    out = stretch_to_uint8(bands, cuts)
    assert out.dtype == np.uint8
    assert np.array_equal(out, expected)
    assert [int(np.count_nonzero(b)) for b in out] == [1527689, 1526938, 1526704]


def test_unsupported_dtype_is_refused() -> None:
    with pytest.raises(ValueError, match="float32"):
        band_histograms(np.zeros((1, 2, 2), np.float32))
