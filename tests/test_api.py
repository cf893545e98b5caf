"""The public Python API: open_aoi (lazy), aoi_percentiles/aoi_histograms, uint8 input."""

from __future__ import annotations

import shutil

import dask.array as da
import numpy as np
import rasterio

import sn5dask
from sn5dask.config import load_config
from sn5dask.core.stretch import band_cut, stretch_to_uint8
from tests.conftest import REFDATA

APLS_CHIP = REFDATA / "apls" / "data" / "images" / "RGB-PanSharpen_AOI_2_Vegas_img0.tif"


def test_open_aoi_is_lazy_one_chunk_per_chip(small_aoi, tmp_path) -> None:
    root = tmp_path / "root"
    shutil.copytree(small_aoi.root, root)
    aoi = sn5dask.open_aoi(str(root), "AOI_99_Synthetic")
    assert aoi.dims == ("chip", "band", "y", "x") and aoi.shape == (6, 8, 96, 96)
    assert isinstance(aoi.data, da.Array) and aoi.data.numblocks == (6, 1, 1, 1)
    assert list(aoi.chip_id.values) == [f"chip{i}" for i in range(6)]
    # Nothing was read: pixels overwritten after opening show up at compute time.
    target = sorted((root / "AOI_99_Synthetic" / "PS-MS").glob("*chip3.tif"))[0]
    with rasterio.open(target, "r+") as dst:
        dst.write(np.full((8, 96, 96), 7, np.uint16))
        transform = dst.transform
    assert int(aoi[3].max().compute()) == 7
    assert aoi.transform[3].item() == transform and aoi.crs[3].item().startswith('GEOGCS')
    with rasterio.open(small_aoi.images[0]) as src:
        assert np.array_equal(aoi[0].values, src.read())
    bands = sn5dask.open_aoi(str(root), "AOI_99_Synthetic", bands=[5, 3, 2])
    assert bands.sizes["band"] == 3 and list(bands.band.values) == [5, 3, 2]


def test_aoi_percentiles_and_histograms_agree(small_aoi) -> None:
    stats = sn5dask.aoi_percentiles(str(small_aoi.root))["AOI_99_Synthetic"]
    hist = sn5dask.aoi_histograms(str(small_aoi.root))["AOI_99_Synthetic"]
    assert hist.shape == (3, 65536) and hist.dtype == np.int64
    assert [int(h.sum()) for h in hist] == [stats["valid_pixels"][b] for b in ("5", "3", "2")]
    assert stats["unreadable_chips"] == {}


def test_uint8_rgba_chip_with_256_bin_histograms(client, tmp_path) -> None:
    """The APLS copy of a SpaceNet 3 chip is 8-bit RGBA: `--bands 1,2,3`."""
    root = tmp_path / "AOI_2_Vegas" / "PS-MS"
    root.mkdir(parents=True)
    shutil.copy(APLS_CHIP, root / APLS_CHIP.name)
    with rasterio.open(APLS_CHIP) as src:
        assert src.dtypes[0] == "uint8" and src.count == 4
        rgb_in = src.read([1, 2, 3])
    summary = sn5dask.run(load_config(None, root=str(tmp_path), out=str(tmp_path / "out"), bands="1,2,3",
                                      masks="none"), client=client)
    assert summary.exit_code == 0
    cuts = []
    for band in rgb_in:
        valid = band[band > 0]
        cuts.append(band_cut(*np.percentile(valid, [2, 98])))
    with rasterio.open(tmp_path / "out" / "AOI_2_Vegas" / "PS-RGB" / APLS_CHIP.name) as out:
        assert out.dtypes[0] == "uint8" and out.count == 3
        assert np.array_equal(out.read(), stretch_to_uint8(rgb_in, cuts, floor=1))


def test_open_aoi_chips_are_georeferenced_for_rioxarray(small_aoi, tmp_path) -> None:
    """Each chip selected from the lazy AOI is the chip: CRS, transform, bounds, and a
    `.rio.to_raster(recalc_transform=False)` that writes the source's pixels on the source's
    grid (rioxarray's default recomputes the transform from float coordinates, which
    changes its last bits, as for rioxarray.open_rasterio's own arrays)."""
    import rioxarray  # noqa: F401

    aoi = sn5dask.open_aoi(str(small_aoi.root), "AOI_99_Synthetic")
    for i in (0, 4):
        chip = sn5dask.chip_dataarray(aoi, f"chip{i}")
        with rasterio.open(small_aoi.images[i]) as src:
            assert chip.rio.crs == src.crs
            assert chip.rio.transform() == src.transform
            assert chip.rio.bounds() == tuple(src.bounds)
            assert chip.dims == ("band", "y", "x") and chip.shape == (8, src.height, src.width)
            source = src.read()
        target = tmp_path / f"chip{i}.tif"
        chip.rio.to_raster(target, recalc_transform=False)
        with rasterio.open(target) as written:
            assert np.array_equal(written.read(), source)
            assert written.transform == src.transform and written.crs == src.crs
