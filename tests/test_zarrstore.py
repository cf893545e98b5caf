"""sn5dask.io.zarrstore: each chip task writes its own chunks through zarr's public API, with
either chunk key separator; they read back through zarr and xarray, padded chips too."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

from sn5dask.config import MASK_KINDS
from sn5dask.io import zarrstore
from sn5dask.io.raster import ChipHeader

UTM_WKT = 'PROJCS["WGS 84 / UTM zone 11N",GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563]],PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433]],PROJECTION["Transverse_Mercator"],PARAMETER["latitude_of_origin",0],PARAMETER["central_meridian",-117],PARAMETER["scale_factor",0.9996],PARAMETER["false_easting",500000],PARAMETER["false_northing",0],UNIT["metre",1],AUTHORITY["EPSG","32611"]]'


def header(height: int, width: int, x0: float) -> ChipHeader:
    return ChipHeader(height=height, width=width, count=8, dtype="uint16",
                      transform=(0.3, 0.0, x0, 0.0, -0.3, 4000000.0), crs_wkt=UTM_WKT,
                      nodata=(None,) * 8)  # fmt: skip


def make_store(url: Path) -> None:
    headers = {"a": header(40, 48, 600000.0), "b": header(33, 48, 600020.0), "c": header(40, 48, 600040.0)}
    zarrstore.create_store(str(url), chip_ids=list(headers), headers=headers, bands=(5, 3, 2),
                           mask_kinds=MASK_KINDS, attrs={})  # fmt: skip


def chip_arrays(height: int, seed: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    rgb = rng.integers(1, 256, (3, height, 48), dtype=np.uint8)
    masks = {kind: rng.integers(0, 3, (height, 48), dtype=np.uint8) for kind in ("binary", "continuous", "binned")}
    masks["multichannel"] = rng.integers(0, 2, (8, height, 48), dtype=np.uint8)
    return rgb, masks


def chunk_files(url: Path) -> dict[str, bytes]:
    """The data arrays' chunk files (coordinates left out)."""
    data = ("rgb/", "mask_")
    return {str(p.relative_to(url)): p.read_bytes() for p in sorted(url.rglob("*"))
            if str(p.relative_to(url)).startswith(data) and p.name != "zarr.json" and p.is_file()}


@pytest.mark.parametrize("separator", [".", "/"])  # "/": stores made before 2026-12
def test_chips_written_one_by_one_read_back_in_xarray(tmp_path, monkeypatch, separator) -> None:
    monkeypatch.setattr(zarrstore, "DATA_CHUNK_KEYS", {"name": "default", "separator": separator})
    ours = tmp_path / "ours.zarr"
    make_store(ours)
    written = {0: chip_arrays(40, 1), 1: chip_arrays(33, 2)}  # chip 1 is padded to 40 rows
    for index, (rgb, masks) in written.items():
        zarrstore.write_chip(str(ours), index, rgb, masks, run_token="run-1")
    zarrstore.write_chip(str(ours), 2, None, {}, run_token="run-1")  # unlabelled, unreadable: zeros
    assert len(chunk_files(ours)) == 15  # every chunk exists, all-zero ones too
    assert {"rgb/c.1.0.0.0", "mask_binary/c.1.0.0"} <= set(chunk_files(ours)) if separator == "." else \
        {"rgb/c/1/0/0/0", "mask_binary/c/1/0/0"} <= set(chunk_files(ours))
    group = zarr.open_group(str(ours), mode="r")
    for name in ["rgb", *(f"mask_{kind}" for kind in MASK_KINDS)]:
        array = group[name]
        assert all((ours / zarrstore.chunk_relpath(name, array, i)).is_file() for i in range(3))

    ds = xr.open_zarr(ours, chunks=None)
    rgb, masks = written[1]
    assert np.array_equal(ds["rgb"][1, :, :33].values, rgb) and not ds["rgb"][1, :, 33:].values.any()
    assert np.array_equal(ds["mask_multichannel"][1, :, :33].values, masks["multichannel"])
    assert np.array_equal(ds["mask_binned"][0].values, written[0][1]["binned"])
    assert not ds["rgb"][2].values.any() and ds["rgb"].dtype == np.uint8
    assert zarrstore.written_chips(str(ours)) == frozenset({0, 1, 2})


def test_written_chips_needs_every_data_array_and_ignores_partial_chunks(tmp_path) -> None:
    url = tmp_path / "s.zarr"
    make_store(url)
    rgb, masks = chip_arrays(40, 4)
    zarrstore.write_chip(str(url), 0, rgb, masks)
    zarrstore.write_chip(str(url), 2, rgb, masks)
    assert not [p for p in (url / "rgb").iterdir() if p.is_dir()]  # chunks sit in the array's folder
    (url / "mask_binned" / "c.2.0.0").rename(url / "mask_binned" / "c.2.0.0.partial")  # a killed write
    for name, array in zarrstore.data_arrays(str(url)).items():  # chip 1: only killed writes
        (url / f"{zarrstore.chunk_relpath(name, array, 1)}.partial").write_bytes(b"half")
    assert zarrstore.written_chips(str(url)) == frozenset({0})


def test_a_store_replaced_between_runs_is_opened_again(tmp_path) -> None:
    """Workers keep a store open per run token: a later run that re-created the store with
    another shape writes with the new metadata."""
    url = tmp_path / "s.zarr"
    make_store(url)
    rgb, masks = chip_arrays(40, 3)
    zarrstore.write_chip(str(url), 0, rgb, masks, run_token="first")
    headers = {"a": header(64, 64, 600000.0)}
    zarrstore.create_store(str(url), chip_ids=["a"], headers=headers, bands=(5, 3, 2, 1),
                           mask_kinds=("binary",), attrs={})  # fmt: skip
    rgb4 = np.full((4, 64, 64), 7, dtype=np.uint8)
    zarrstore.write_chip(str(url), 0, rgb4, {"binary": np.ones((64, 64), np.uint8)}, run_token="second")
    ds = xr.open_zarr(url, chunks=None)
    assert ds["rgb"].shape == (1, 4, 64, 64) and (ds["rgb"].values == 7).all()
    assert set(ds.data_vars) >= {"rgb", "mask_binary"} and "mask_binned" not in ds
