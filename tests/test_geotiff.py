"""sn5dask.geotiff: the GeoTIFFs tifffile assembles with GDAL's georeferencing tags read
exactly as the files GDAL writes itself, in GDAL/rasterio and in tifffile without
imagecodecs (how CRESI's loader reads masks)."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import rasterio
import tifffile

from sn5dask import raster
from sn5dask.encodings import MASK_ENCODINGS, rgb_descriptions
from sn5dask.raster import ChipHeader, encode_geotiff, read_header
from tests.conftest import S01

#: TIFF tags that hold where the tiles are (they differ with the file's layout).
LAYOUT_TAGS = {273, 279, 324, 325}
#: Tags GDAL writes with their TIFF default value, which tifffile leaves out:
#: PlanarConfiguration, Predictor and SampleFormat 1 (contiguous, none, unsigned).
DEFAULT_VALUED = {284: 1, 317: 1, 339: 1}
#: Tags tifffile always writes and GDAL does not: X/YResolution 1/1 with no unit (GDAL lists
#: them as TIFFTAG_* metadata and uses them for nothing).
RESOLUTION_TAGS = {282: (1, 1), 283: (1, 1), 296: 1}
#: Tags whose value type is SHORT in GDAL's files and LONG in tifffile's (same value).
SIZE_TAGS = {256, 257, 322, 323}


def outputs(size: int, seed: int = 0, width: int | None = None) -> dict[str, tuple[np.ndarray, dict]]:
    """Every output kind of a chip of `size` x `width` (default square) px: (array,
    encode_geotiff keywords), as chiptask writes them."""
    rng = np.random.default_rng(seed)
    width = width or size
    cases = {"rgb": ((rng.random((3, size, width)) * 254 + 1).astype(np.uint8),
                     {"nodata": 0, "photometric": "RGB", "descriptions": rgb_descriptions((5, 3, 2))})}
    for kind, encoding in MASK_ENCODINGS.items():
        shape = (len(encoding.bands), size, width) if len(encoding.bands) > 1 else (size, width)
        mask = np.zeros(shape, np.uint8)
        mask[..., size // 3 : size // 2, :] = rng.integers(0, 256, size=(*shape[:-2], size // 2 - size // 3, width),
                                                          dtype=np.uint8)
        cases[kind] = (mask, {"is_mask": True, "descriptions": encoding.bands})
    return cases


def gdal_bytes(array: np.ndarray, header: ChipHeader, compress: str, options: dict) -> bytes:
    """The file GDAL writes for the same output (through rasterio, as sn5dask did before)."""
    return raster.encode_geotiff_with_gdal(array, header, compress=compress, **options)


def tiff_tags(data: bytes) -> dict[int, tuple[int, int, object]]:
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        assert len(tif.pages) == 1
        return {tag.code: (int(tag.dtype), tag.count, tag.value) for tag in tif.pages[0].tags.values()}


def as_read_by_rasterio(data: bytes) -> dict[str, object]:
    with rasterio.MemoryFile(data) as memfile, memfile.open() as src:
        return {
            "profile": src.profile, "crs": src.crs, "transform": src.transform,
            "nodata": src.nodatavals, "descriptions": src.descriptions, "colorinterp": src.colorinterp,
            "tags": src.tags(), "structure": src.tags(ns="IMAGE_STRUCTURE"), "blocks": src.block_shapes,
            "band_tags": [src.tags(i) for i in src.indexes], "pixels": src.read(),
        }


def assert_same_tiff_tags(ours: bytes, gdals: bytes) -> None:
    mine, theirs = tiff_tags(ours), tiff_tags(gdals)
    for code, value in DEFAULT_VALUED.items():
        if code not in mine and code in theirs:
            assert set(np.atleast_1d(theirs.pop(code)[2]).tolist()) == {value}, code
    for code, value in RESOLUTION_TAGS.items():
        assert code not in theirs and mine.pop(code)[2] == value, code
    assert set(mine) == set(theirs)
    for code in set(mine) - LAYOUT_TAGS:
        if code in SIZE_TAGS:
            assert mine[code][1:] == theirs[code][1:], code
        else:
            assert mine[code] == theirs[code], code


def header_for(wkt: str, size: int, transform: tuple[float, ...], width: int | None = None) -> ChipHeader:
    return ChipHeader(size, width or size, 8, "uint16", transform, wkt, (None,) * 8)


REFERENCE_WKT = read_header(str(sorted(S01.rglob("*.tif"))[0])).crs_wkt  # WGS 84, as SpaceNet ships
UTM_WKT = rasterio.crs.CRS.from_epsg(32611).to_wkt()


@pytest.mark.parametrize("compress", ["deflate", "zstd", "lzw", "none"])
@pytest.mark.parametrize(
    ("wkt", "transform"),
    [(REFERENCE_WKT, (2.7e-06, 0.0, -115.3063, 0.0, -2.7e-06, 36.1318)),
     (UTM_WKT, (0.3, 0.0, 500000.15, 0.0, -0.3, 4000000.45))],
    ids=["wgs84", "utm11n"],
)
def test_every_output_reads_as_the_file_gdal_writes(compress: str, wkt: str, transform: tuple) -> None:
    shapes = [(64, 64), (50, 70)] + ([(1300, 1300)] if compress == "deflate" else [])  # full size: default codec
    for size, width in shapes:
        header = header_for(wkt, size, transform, width)
        for kind, (array, options) in outputs(size, width=width).items():
            ours = encode_geotiff(array, header, compress=compress, **options)
            gdals = gdal_bytes(array, header, compress, options)
            assert_same_tiff_tags(ours, gdals)
            mine, theirs = as_read_by_rasterio(ours), as_read_by_rasterio(gdals)
            for key in RESOLUTION_TAGS_METADATA:
                assert mine["tags"].pop(key) is not None  # type: ignore[attr-defined]
            for key, value in mine.items():
                if key == "pixels":
                    assert np.array_equal(value, theirs[key]), (kind, size)  # type: ignore[arg-type]
                else:
                    assert value == theirs[key], (kind, size, key)
            assert np.array_equal(mine["pixels"], array if array.ndim == 3 else array[np.newaxis])
            if compress != "none":  # the same codecs: within 1 % of GDAL's size
                assert abs(len(ours) - len(gdals)) <= max(1024, len(gdals) // 100), (kind, size)


#: How GDAL shows the resolution tags tifffile writes (default metadata domain).
RESOLUTION_TAGS_METADATA = ("TIFFTAG_XRESOLUTION", "TIFFTAG_YRESOLUTION", "TIFFTAG_RESOLUTIONUNIT")


def test_each_chip_keeps_its_own_transform_and_crs() -> None:
    """Templates are per output kind: chips of two CRSs and many transforms, interleaved,
    each read back with exactly its own grid."""
    rgb, options = outputs(32)["rgb"]
    grids = [(wkt, (0.3 + i * 1e-3, 0.0, 500000.0 + 7.3 * i, 0.0, -0.3 - i * 1e-3, 4e6 - 3.1 * i))
             for i in range(6) for wkt in (UTM_WKT, REFERENCE_WKT)]
    for wkt, transform in grids:
        with rasterio.MemoryFile(encode_geotiff(rgb, header_for(wkt, 32, transform), **options)) as memfile:
            with memfile.open() as src:
                assert src.crs == rasterio.crs.CRS.from_wkt(wkt)
                assert tuple(src.transform)[:6] == transform


@pytest.mark.parametrize(
    "transform",
    [(0.3, 0.0, 500000.0, 0.0, 0.3, 4e6),  # south-up
     (-0.3, 0.0, 500000.0, 0.0, -0.3, 4e6)],  # x to the west
)
def test_a_grid_that_is_not_north_up_is_written_by_gdal(transform: tuple) -> None:
    rgb, options = outputs(32)["rgb"]
    header = header_for(UTM_WKT, 32, transform)
    ours = encode_geotiff(rgb, header, **options)
    assert ours == gdal_bytes(rgb, header, "deflate", options)
    with rasterio.MemoryFile(ours) as memfile, memfile.open() as src:
        assert tuple(src.transform)[:6] == transform


def test_a_template_whose_georeferencing_is_not_scale_and_tiepoint_is_refused() -> None:
    """`learn_template` checks GDAL's file against `model_tags`: a file georeferenced
    otherwise (here: another transform than the one given) gives no template."""
    from sn5dask import geotiff

    rgb, options = outputs(16)["rgb"]
    header = header_for(UTM_WKT, 16, (0.3, 0.0, 500000.0, 0.0, -0.3, 4e6))
    sample = gdal_bytes(rgb, header, "deflate", options)
    profile = raster._geotiff_profile(rgb, "deflate", False)  # the settings the sample was written with
    assert geotiff.learn_template(sample, header.transform, profile) is not None
    assert geotiff.learn_template(sample, (0.5, 0.0, 500000.0, 0.0, -0.5, 4e6), profile) is None


def test_outputs_read_in_tifffile_without_imagecodecs(tmp_path: Path) -> None:
    """CRESI's loader reads masks and images with scikit-image, i.e. tifffile, usually
    without imagecodecs: DEFLATE (with the RGB's horizontal predictor) decodes there too."""
    expected = {}
    for kind, (array, options) in outputs(1300, seed=3).items():
        header = header_for(UTM_WKT, 1300, (0.3, 0.0, 500000.0, 0.0, -0.3, 4e6))
        (tmp_path / f"{kind}.tif").write_bytes(encode_geotiff(array, header, **options))
        np.save(tmp_path / f"{kind}.npy", array)
        expected[kind] = array.shape
    script = textwrap.dedent(f"""
        import sys
        sys.modules["imagecodecs"] = None  # as where it is not installed
        import numpy as np, tifffile
        for kind in {sorted(expected)!r}:
            image = tifffile.imread("{tmp_path}/" + kind + ".tif")
            array = np.load("{tmp_path}/" + kind + ".npy")
            if kind == "rgb":
                array = np.moveaxis(array, 0, -1)  # tifffile: (y, x, sample) when pixel-interleaved
            assert image.dtype == np.uint8 and np.array_equal(image, array), kind
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


@pytest.mark.parametrize("count", [1, 2, 4, 5])
def test_any_band_count_reads_as_the_file_gdal_writes(count: int) -> None:
    """`--bands` may pick 1, 2, 4 or more bands: pixel-interleaved up to 4 (extra samples
    unspecified, as GDAL writes them), band-interleaved beyond."""
    image = (np.random.default_rng(count).random((count, 64, 64)) * 254 + 1).astype(np.uint8)
    options = {"nodata": 0, "descriptions": [f"PS-MS band {b}" for b in range(1, count + 1)]}
    header = header_for(UTM_WKT, 64, (0.3, 0.0, 500000.0, 0.0, -0.3, 4e6))
    ours = encode_geotiff(image, header, **options)
    gdals = gdal_bytes(image, header, "deflate", options)
    assert_same_tiff_tags(ours, gdals)
    mine, theirs = as_read_by_rasterio(ours), as_read_by_rasterio(gdals)
    for key in RESOLUTION_TAGS_METADATA:
        mine["tags"].pop(key)  # type: ignore[attr-defined]
    assert np.array_equal(mine.pop("pixels"), theirs.pop("pixels"))  # type: ignore[arg-type]
    assert mine == theirs
