"""sn5dask.chipcache's decoded pixels: kept for one run, taken once, bounded, dropped."""

from __future__ import annotations

import os

import dask
import numpy as np
import pytest

from sn5dask import chipcache
from sn5dask.raster import ChipHeader

HEADER = ChipHeader(height=64, width=64, count=8, dtype="uint16", transform=(0.3, 0.0, 6e5, 0.0, -0.3, 4e6),
                    crs_wkt="EPSG:32611", nodata=(None,) * 8)  # fmt: skip
CHIP_BYTES = 8 * 64 * 64 * 2  # 64 KiB


def forget_all() -> None:
    for url in list(chipcache._pixels):
        chipcache._pop_pixels(url)


@pytest.fixture(autouse=True)
def empty_cache():
    forget_all()
    yield
    forget_all()


def pixels(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4000, (8, 64, 64), dtype=np.uint16)


def test_pixels_are_taken_once_by_their_own_run() -> None:
    kept = pixels(1)
    assert chipcache.keep_pixels("a.tif", "run-1", HEADER, kept)
    assert chipcache.take_pixels("a.tif", "run-2") is None  # another run reads the file
    header, taken = chipcache.take_pixels("a.tif", "run-1")
    assert header == HEADER and taken is kept
    assert chipcache.take_pixels("a.tif", "run-1") is None  # taken: freed


def test_the_budget_bounds_what_is_kept_and_other_runs_leftovers_go_first() -> None:
    with dask.config.set({chipcache.PIXELS_CONFIG_KEY: 3 * CHIP_BYTES}):
        assert chipcache.keep_pixels("old.tif", "killed-run", HEADER, pixels(0))
        assert all(chipcache.keep_pixels(f"{i}.tif", "run", HEADER, pixels(i)) for i in range(3))
        assert chipcache.take_pixels("old.tif", "killed-run") is None  # made room for this run
        assert not chipcache.keep_pixels("3.tif", "run", HEADER, pixels(3))  # full: read twice
        assert chipcache.take_pixels("3.tif", "run") is None
        assert chipcache._pixels_bytes == sum(e[2].nbytes for e in chipcache._pixels.values()) == 3 * CHIP_BYTES


def test_chips_larger_than_small_are_never_kept() -> None:
    assert chipcache.keeps_pixels(CHIP_BYTES) and not chipcache.keeps_pixels(None)
    assert not chipcache.keeps_pixels(27 * 2**20)  # a SpaceNet chip
    big = np.zeros((8, 300, 300), np.uint16)  # small file (compressed), large decoded
    assert not chipcache.keep_pixels("big.tif", "run", HEADER, big)
    with dask.config.set({chipcache.PIXELS_CONFIG_KEY: 0}):
        assert not chipcache.keeps_pixels(CHIP_BYTES)


def test_a_run_drops_only_what_it_kept() -> None:
    chipcache.keep_pixels("a.tif", "run-1", HEADER, pixels(1))
    chipcache.keep_pixels("b.tif", "run-1", HEADER, pixels(2))
    chipcache.keep_pixels("c.tif", "run-2", HEADER, pixels(3))
    assert chipcache.drop_pixels("run-1") == 2
    assert list(chipcache._pixels) == ["c.tif"] and chipcache._pixels_bytes == CHIP_BYTES


def test_only_a_scan_that_a_write_pass_follows_keeps_copies(monkeypatch) -> None:
    """`sn5dask stats` and `open_aoi` scan without a write pass: they keep no pixels and
    make no S3 copies (nothing would ever take them)."""
    from dataclasses import replace

    from sn5dask.aoistats import scan_chip
    from sn5dask.testing import fake_aoi

    fetched: list[chipcache.CopyKey] = []
    monkeypatch.setattr(chipcache, "fetch", lambda key: fetched.append(key))
    fake = fake_aoi(n_chips=2, size=32, with_edge_cases=False)
    s3_chip = replace(fake.catalog.chips[0], image="s3://bucket/chip0.tif")
    fake.reader.add_image(s3_chip.image, *fake.reader.images[fake.catalog.chips[0].image])
    for chip in (fake.catalog.chips[1], s3_chip):
        scan = scan_chip(chip, (5, 3, 2), True, True, fake.reader)  # no run follows
        assert chip.chip_id in scan.headers and not chipcache._pixels
    assert not fetched
    scan_chip(s3_chip, (5, 3, 2), True, True, fake.reader, for_run="run")
    assert fetched == [chipcache.CopyKey("run", s3_chip.image, s3_chip.image_stamp)]
    header, pixels = chipcache.take_pixels(s3_chip.image, "run")
    assert header == fake.reader.images[s3_chip.image][0]
    assert np.array_equal(pixels, fake.reader.images[s3_chip.image][1])  # every band


def test_a_copy_is_read_only_by_its_own_run_for_the_listed_object(monkeypatch, tmp_path) -> None:
    """An S3 copy is found only inside `reading` with the key it was kept under: the run
    that made it, the URL and the listed stamp. Another run, another stamp (the object
    replaced since) or a read outside a chip task never gets it, and `drop_run` removes
    it with the run."""
    from sn5dask import files

    url = "s3://bucket/chip0.tif"
    served = {url: b"old bytes!"}
    monkeypatch.setattr(files, "read_bytes", lambda u: served[u])
    monkeypatch.setattr(chipcache, "_folder", lambda: str(tmp_path))
    key = chipcache.CopyKey("run-1", url, "10:etag-old")
    local = chipcache.fetch(key)
    assert local is not None and open(local, "rb").read() == b"old bytes!"
    assert chipcache.lookup(url) is None  # outside any chip task
    with chipcache.reading(key):
        assert chipcache.lookup(url) == local
    for other in (chipcache.CopyKey("run-2", url, "10:etag-old"),
                  chipcache.CopyKey("run-1", url, "12:etag-new")):
        with chipcache.reading(other):
            assert chipcache.lookup(url) is None
    # An object whose size is not the listed one is not kept (it changed since listing).
    served[url] = b"new bytes!!!"
    assert chipcache.fetch(chipcache.CopyKey("run-3", url, "10:etag-old")) is None
    assert chipcache.drop_run("run-1") == 1
    assert not os.path.exists(local) and not chipcache._copies
