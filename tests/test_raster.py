"""sn5dask.io.raster: chip validation errors, exact georeferencing, atomic writes, GDAL env."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from sn5dask.core.outputspec import OutputSpec
from sn5dask.errors import ImageError
from sn5dask.io.raster import (
    ChipHeader,
    encode_geotiff,
    gdal_options,
    read_chip,
    read_header,
    write_geotiff,
)
from tests.conftest import S01, S02, write_tif

BANDS = (5, 3, 2)


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda p: write_tif(p, np.ones((8, 8, 8), np.float32)), "unsupported pixel type float32"),
        (lambda p: write_tif(p, np.ones((8, 8, 8), np.int16)), "unsupported pixel type int16"),
        (lambda p: write_tif(p, np.ones((3, 8, 8), np.uint16)), "has 3 band(s) but --bands asks for band 5"),
        (lambda p: write_tif(p, np.ones((8, 8, 8), np.uint16), crs=None), "has no CRS"),
        (lambda p: write_tif(p, np.ones((8, 8, 8), np.uint16), transform=Affine(1, 0.2, 0, 0.1, -1, 0)),
         "rotated or sheared"),
        (lambda p: p.write_bytes(b"this is not a TIFF at all"), "cannot be read as a raster"),
    ],
)
def test_bad_chips_name_file_and_problem(tmp_path: Path, make, problem: str) -> None:
    path = tmp_path / "chip.tif"
    make(path)
    with pytest.raises(ImageError) as info:
        read_chip(str(path), BANDS)
    assert str(path) in str(info.value) and problem in str(info.value)


def test_truncated_tiff_fails_on_read(tmp_path: Path) -> None:
    data = (S01 / "inputs" / "PS-MS" / "SN5_roads_train_AOI_8_Mumbai_PS-MS_chip5.tif").read_bytes()
    path = tmp_path / "truncated.tif"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="cannot be read as a raster"):
        read_chip(str(path), BANDS)


def test_read_selected_and_all_bands(tmp_path: Path) -> None:
    data = np.arange(8 * 6 * 5, dtype=np.uint16).reshape(8, 6, 5)
    path = write_tif(tmp_path / "c.tif", data, nodata=0)
    header, selected = read_chip(str(path), BANDS)
    assert np.array_equal(selected, data[[4, 2, 1]])
    _, everything = read_chip(str(path), BANDS, all_bands=True)
    assert np.array_equal(everything, data)
    assert (header.height, header.width, header.count, header.dtype) == (6, 5, 8, "uint16")
    assert header.nodata == (0.0,) * 8
    assert read_header(str(path)).grid.shape.yx == (6, 5)


def test_geotiff_keeps_georeferencing_exactly(tmp_path: Path) -> None:
    source = S01 / "inputs" / "PS-MS" / "SN5_roads_train_AOI_8_Mumbai_PS-MS_chip5.tif"
    header = read_header(str(source))
    rgb = np.random.default_rng(0).integers(0, 255, (3, 1300, 1300), dtype=np.uint8)
    out = tmp_path / "sub" / "rgb.tif"
    write_geotiff(str(out), rgb, header, OutputSpec.rgb((5, 3, 2), "deflate"))
    assert not list(out.parent.glob("*.partial"))
    with rasterio.open(out) as dst, rasterio.open(source) as src:
        assert dst.transform == src.transform and dst.crs == src.crs
        assert dst.nodatavals == (0.0, 0.0, 0.0) and dst.dtypes == ("uint8",) * 3
        assert dst.compression.name == "deflate" and dst.profile["tiled"]
        assert dst.block_shapes == [(656, 656)] * 3
        assert np.array_equal(dst.read(), rgb)


@pytest.mark.parametrize("is_mask", [False, True])
@pytest.mark.parametrize("compress", ["deflate", "zstd", "lzw", "none"])
def test_every_codec_is_lossless(compress: str, is_mask: bool) -> None:
    from sn5dask.io.raster import ChipHeader

    header = ChipHeader(600, 700, 1, "uint8", (1.0, 0.0, 0.0, 0.0, -1.0, 0.0), "EPSG:32611", (None,))
    mask = np.zeros((8, 600, 700), np.uint8)
    mask[3, 100:200] = 255
    with rasterio.MemoryFile(encode_geotiff(mask, header, OutputSpec(compress, is_mask=is_mask))) as memfile:
        with memfile.open() as src:
            assert np.array_equal(src.read(), mask) and src.nodata is None


def test_geotiff_bytes_are_the_same_with_the_crs_parsed_once() -> None:
    """`encode_geotiff` hands GDAL a CRS object parsed once per WKT: the file's bytes are
    those GDAL writes from the WKT itself, for the reference chips' CRS and UTM zones."""
    from sn5dask.io import raster

    wkts = {read_header(str(path)).crs_wkt for path in sorted(S01.rglob("*.tif"))[:4]}
    wkts.add(read_header(str(S02 / "inputs" / "PS-MS" / "SN3_roads_train_AOI_2_Vegas_PS-MS_img991.tif")).crs_wkt)
    rgb = np.zeros((3, 64, 64), np.uint8)
    rgb[:, 10:20] = 200
    wkts |= {rasterio.crs.CRS.from_epsg(code).to_wkt() for code in (32611, 32637, 32643)}  # UTM AOIs
    assert len(wkts) == 4  # the reference chips' (WGS 84) and three UTM zones
    for wkt in wkts:
        header = ChipHeader(64, 64, 3, "uint8", (0.3, 0.0, 500000.0, 0.0, -0.3, 4000000.0), wkt, (None,) * 3)
        with rasterio.Env(), rasterio.MemoryFile() as memfile:
            with memfile.open(**{**_gtiff_profile(header), "crs": wkt}) as dst:
                dst.write(rgb)
            from_wkt = memfile.read()
        with rasterio.Env(), rasterio.MemoryFile() as memfile:
            with memfile.open(**{**_gtiff_profile(header), "crs": raster._crs(wkt)}) as dst:
                dst.write(rgb)
            assert memfile.read() == from_wkt
        with rasterio.MemoryFile(encode_geotiff(rgb, header, OutputSpec("deflate"))) as memfile, memfile.open() as src:
            assert src.crs == rasterio.crs.CRS.from_wkt(wkt)


def _gtiff_profile(header: ChipHeader) -> dict:
    return {"driver": "GTiff", "height": header.height, "width": header.width, "count": 3,
            "dtype": "uint8", "transform": Affine(*header.transform), "tiled": True,
            "blockxsize": 64, "blockysize": 64, "compress": "deflate"}


def test_block_size_fits_the_chip() -> None:
    from sn5dask.core.outputspec import block_size

    assert [block_size(s) for s in (1300, 1024, 1025, 650, 96, 50, 3000)] == [656, 1024, 528, 656, 96, 64, 1008]


def test_a_failed_write_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sn5dask.io import files as storage

    target = tmp_path / "out.tif"

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(storage.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space left"):
        storage.write_bytes_atomic(str(target), b"x" * 1000)
    assert list(tmp_path.iterdir()) == []


def test_gdal_options_derived_from_aws_endpoint_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_S3_ENDPOINT", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:5123")
    options = gdal_options()
    assert options["AWS_S3_ENDPOINT"] == "127.0.0.1:5123"
    assert options["AWS_HTTPS"] == "NO" and options["AWS_VIRTUAL_HOSTING"] == "FALSE"
    monkeypatch.setenv("AWS_ENDPOINT_URL", "https://minio.example:9000/")
    assert gdal_options()["AWS_HTTPS"] == "YES"


def test_writes_committed_together_appear_whole_at_the_end_of_the_block(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every file is fsynced before any is renamed, and each folder that received one is
    fsynced after the renames (so they survive a power loss)."""
    from sn5dask.io import files

    flushed: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        flushed.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(files.os, "fsync", recording_fsync)
    (tmp_path / "old.tif").write_bytes(b"old")
    with files.committed_together():
        files.write_bytes_atomic(str(tmp_path / "a" / "one.tif"), b"1" * 100)
        files.write_bytes_atomic(str(tmp_path / "old.tif"), b"new")
        files.write_bytes_atomic(str(tmp_path / "old.tif"), b"newer")  # the last write wins
        with files.committed_together():  # nested: commits with the outer block
            files.write_bytes_atomic(str(tmp_path / "two.tif"), b"2")
        # nothing under a final name yet, the old file untouched
        assert not (tmp_path / "a" / "one.tif").exists() and not (tmp_path / "two.tif").exists()
        assert (tmp_path / "old.tif").read_bytes() == b"old"
        assert flushed == []
    assert (tmp_path / "a" / "one.tif").read_bytes() == b"1" * 100
    assert (tmp_path / "old.tif").read_bytes() == b"newer"
    assert (tmp_path / "two.tif").read_bytes() == b"2"
    partials = [str(tmp_path / "a" / "one.tif.partial"), str(tmp_path / "old.tif.partial"),
                str(tmp_path / "two.tif.partial")]
    assert flushed == partials + [str(tmp_path / "a"), str(tmp_path)]
    assert not list(tmp_path.rglob("*.partial"))


def test_a_single_atomic_write_flushes_the_file_and_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sn5dask.io import files

    flushed: list[str] = []
    real_fsync = os.fsync
    monkeypatch.setattr(files.os, "fsync", lambda fd: flushed.append(os.readlink(f"/proc/self/fd/{fd}"))
                        or real_fsync(fd))
    files.write_bytes_atomic(str(tmp_path / "stats.json"), b"{}")
    assert flushed == [str(tmp_path / "stats.json.partial"), str(tmp_path)]
    assert (tmp_path / "stats.json").read_bytes() == b"{}"


def test_committed_together_renames_what_was_written_when_the_block_fails(tmp_path: Path) -> None:
    from sn5dask.io import files

    with pytest.raises(RuntimeError, match="chip failed"), files.committed_together():
        files.write_bytes_atomic(str(tmp_path / "rgb.tif"), b"rgb")
        raise RuntimeError("chip failed")
    assert (tmp_path / "rgb.tif").read_bytes() == b"rgb"  # complete, so kept (as without a block)


def test_a_failed_flush_leaves_no_final_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sn5dask.io import files

    def failing_fsync(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(files.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="Input/output error"), files.committed_together():
        files.write_bytes_atomic(str(tmp_path / "a.tif"), b"a")
        files.write_bytes_atomic(str(tmp_path / "b.tif"), b"b")
    assert list(tmp_path.iterdir()) == []  # no final name, and the .partial files removed


def test_a_truncated_chip_fails_with_gdals_own_reason(tmp_path) -> None:
    """The header reads, the pixels do not: the reason is what GDAL said, not rasterio's
    "Read failed. See previous exception for details."."""
    from sn5dask.io.chipio import RasterioReader
    from sn5dask.synthetic import make_synthetic_aoi

    image = make_synthetic_aoi(tmp_path, n_chips=1, size=256, seed=1, with_edge_cases=False).images[0]
    data = image.read_bytes()
    image.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError) as caught:
        RasterioReader().read_bands(str(image), (5, 3, 2))
    message = str(caught.value)
    assert message.startswith(f"{image}: cannot be read as a raster (Read failed: ")
    assert "TIFFReadEncodedStrip() failed" in message and "See previous exception" not in message


def test_a_chip_refused_by_s3_says_which_credentials_were_searched(monkeypatch) -> None:
    from rasterio.errors import RasterioIOError

    from sn5dask.io import files
    from sn5dask.io.raster import unreadable_reason

    refused = RasterioIOError("HTTP response code: 403")
    monkeypatch.setattr(files, "aws_credentials_method", lambda: None)
    reason = unreadable_reason("s3://private/in/chip0.tif", refused)
    assert reason.startswith("access denied when read anonymously (HTTP response code: 403)")
    assert "No AWS credentials were found in the AWS_ACCESS_KEY_ID" in reason and "aws configure" in reason
    monkeypatch.setattr(files, "aws_credentials_method", lambda: "env")
    assert unreadable_reason("s3://private/in/chip0.tif", refused).startswith(
        "access denied with the AWS credentials found (env)")
    assert unreadable_reason("/data/chip0.tif", refused) == "cannot be read as a raster (HTTP response code: 403)"
