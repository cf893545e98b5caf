"""raster.encode_geotiff: GDAL (through rasterio) writes every output GeoTIFF; what a reader
gets back is exactly the array, the chip's grid, the codec, tiles, interleave, nodata and
band descriptions each output kind promises (README: Outputs)."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

from sn5dask.core.encodings import MASK_ENCODINGS
from sn5dask.core.outputspec import OutputSpec, block_size
from sn5dask.io.raster import ChipHeader, encode_geotiff, read_header
from tests.conftest import S01

REFERENCE_WKT = read_header(str(sorted(S01.rglob("*.tif"))[0])).crs_wkt  # WGS 84, as SpaceNet ships
UTM_WKT = rasterio.crs.CRS.from_epsg(32611).to_wkt()
#: rasterio's names of the codecs of `--compress`.
CODEC_NAMES = {"deflate": "deflate", "zstd": "zstd", "lzw": "lzw", "none": None}


def outputs(size: int, seed: int = 0, width: int | None = None,
            compress: str = "deflate") -> dict[str, tuple[np.ndarray, OutputSpec]]:
    """Every output kind of a chip of `size` x `width` (default square) px: (array, its
    OutputSpec), as chiptask writes them."""
    rng = np.random.default_rng(seed)
    width = width or size
    cases = {"rgb": ((rng.random((3, size, width)) * 254 + 1).astype(np.uint8), OutputSpec.rgb((5, 3, 2), compress))}
    for kind, encoding in MASK_ENCODINGS.items():
        shape = (len(encoding.bands), size, width) if len(encoding.bands) > 1 else (size, width)
        mask = np.zeros(shape, np.uint8)
        mask[..., size // 3 : size // 2, :] = rng.integers(0, 256, size=(*shape[:-2], size // 2 - size // 3, width),
                                                          dtype=np.uint8)
        cases[kind] = (mask, OutputSpec.mask(kind, compress))
    return cases


def header_for(wkt: str, size: int, transform: tuple[float, ...], width: int | None = None) -> ChipHeader:
    return ChipHeader(size, width or size, 8, "uint16", transform, wkt, (None,) * 8)


@pytest.mark.parametrize("compress", ["deflate", "zstd", "lzw", "none"])
@pytest.mark.parametrize(
    ("wkt", "transform"),
    [(REFERENCE_WKT, (2.7e-06, 0.0, -115.3063, 0.0, -2.7e-06, 36.1318)),
     (UTM_WKT, (0.3, 0.0, 500000.15, 0.0, -0.3, 4000000.45))],
    ids=["wgs84", "utm11n"],
)
def test_every_output_reads_back_as_written(compress: str, wkt: str, transform: tuple) -> None:
    shapes = [(64, 64), (50, 70)] + ([(1300, 1300)] if compress == "deflate" else [])  # full size: default codec
    for size, width in shapes:
        header = header_for(wkt, size, transform, width)
        for kind, (array, spec) in outputs(size, width=width, compress=compress).items():
            data = encode_geotiff(array, header, spec)
            with rasterio.MemoryFile(data) as memfile, memfile.open() as src:
                assert np.array_equal(src.read(), array if array.ndim == 3 else array[np.newaxis]), kind
                assert src.crs == rasterio.crs.CRS.from_wkt(wkt)
                assert tuple(src.transform)[:6] == transform
                assert src.dtypes == ("uint8",) * src.count
                codec = src.compression.name.lower() if src.compression else None
                assert codec == CODEC_NAMES[compress], kind
                assert src.block_shapes[0] == (block_size(size), block_size(width))
                assert src.nodata == spec.nodata
                assert src.descriptions == spec.descriptions
                interleave = src.interleaving.name.lower() if src.interleaving else None
                if src.count > 1:  # one band has no interleave to speak of
                    assert interleave == ("pixel" if src.count <= 4 else "band"), kind
                if kind == "rgb":
                    assert src.colorinterp[:3] == (rasterio.enums.ColorInterp.red,
                                                   rasterio.enums.ColorInterp.green,
                                                   rasterio.enums.ColorInterp.blue)


def test_each_chip_keeps_its_own_transform_and_crs() -> None:
    """Chips of two CRSs and many transforms, interleaved, each read back with exactly its
    own grid (the CRS is parsed once per process: no chip gets another's)."""
    rgb, spec = outputs(32)["rgb"]
    grids = [(wkt, (0.3 + i * 1e-3, 0.0, 500000.0 + 7.3 * i, 0.0, -0.3 - i * 1e-3, 4e6 - 3.1 * i))
             for i in range(6) for wkt in (UTM_WKT, REFERENCE_WKT)]
    for wkt, transform in grids:
        with rasterio.MemoryFile(encode_geotiff(rgb, header_for(wkt, 32, transform), spec)) as memfile:
            with memfile.open() as src:
                assert src.crs == rasterio.crs.CRS.from_wkt(wkt)
                assert tuple(src.transform)[:6] == transform


@pytest.mark.parametrize("transform", [(0.3, 0.1, 500000.0, 0.05, -0.3, 4e6), (0.3, 0.0, 500000.0, 0.0, 0.3, 4e6)],
                         ids=["rotated", "south-up"])
def test_a_grid_that_is_not_north_up_is_kept_exactly(transform: tuple) -> None:
    rgb, spec = outputs(32)["rgb"]
    with rasterio.MemoryFile(encode_geotiff(rgb, header_for(UTM_WKT, 32, transform), spec)) as memfile:
        with memfile.open() as src:
            assert tuple(src.transform)[:6] == transform and np.array_equal(src.read(), rgb)


@pytest.mark.parametrize("count", [1, 2, 4, 5])
def test_any_band_count_reads_back(count: int) -> None:
    """`--bands` may list 1-5 bands: the RGB output has that many."""
    array = (np.arange(count * 40 * 40, dtype=np.uint32) % 254 + 1).astype(np.uint8).reshape(count, 40, 40)
    header = header_for(UTM_WKT, 40, (0.3, 0.0, 500000.0, 0.0, -0.3, 4e6))
    with rasterio.MemoryFile(encode_geotiff(array, header, OutputSpec.rgb(range(1, count + 1), "deflate"))) as memfile, memfile.open() as src:
        assert src.count == count and np.array_equal(src.read(), array) and src.nodata == 0
