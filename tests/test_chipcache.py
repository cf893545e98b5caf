"""sn5dask.io.chipcache: S3 copies only for a scan that a write pass follows, read only by
the run that made them for the object it listed, and removed with the run."""

from __future__ import annotations

import os

import pytest

from sn5dask.io import chipcache


@pytest.fixture(autouse=True)
def no_copies_left():
    yield
    with chipcache._lock:
        for key in list(chipcache._copies):
            chipcache._remove_copy(key)


def test_only_a_scan_that_a_write_pass_follows_keeps_copies(monkeypatch) -> None:
    """`sn5dask stats` and `open_aoi` scan without a write pass: they keep no pixels and
    make no S3 copies (nothing would ever take them)."""
    from dataclasses import replace

    from sn5dask.runner.aoistats import scan_chip
    from sn5dask.testing import fake_aoi

    fetched: list[chipcache.CopyKey] = []
    monkeypatch.setattr(chipcache, "fetch", lambda key: fetched.append(key))
    fake = fake_aoi(n_chips=2, size=32, with_edge_cases=False)
    s3_chip = replace(fake.catalog.chips[0], image="s3://bucket/chip0.tif")
    fake.reader.add_image(s3_chip.image, *fake.reader.images[fake.catalog.chips[0].image])
    for chip in (fake.catalog.chips[1], s3_chip):
        scan = scan_chip(chip, (5, 3, 2), True, True, fake.reader)  # no run follows
        assert chip.chip_id in scan.headers
    assert not fetched
    scan_chip(s3_chip, (5, 3, 2), True, True, fake.reader, for_run="run")
    assert fetched == [chipcache.CopyKey("run", s3_chip.image, s3_chip.image_stamp)]


def test_a_copy_is_read_only_by_its_own_run_for_the_listed_object(monkeypatch, tmp_path) -> None:
    """An S3 copy (fsspec's whole-file cache, here over fsspec's in-memory filesystem) is
    found only inside `reading` with the key it was kept under: the run that made it, the
    URL and the listed stamp. Another run, another stamp (the object replaced since) or a
    read outside a chip task never gets it, and `drop_run` removes it with the run."""
    import fsspec

    memory = fsspec.filesystem("memory")
    url = "memory://bucket/chip0.tif"
    memory.pipe_file("/bucket/chip0.tif", b"old bytes!")
    monkeypatch.setattr(chipcache, "_folder", lambda: str(tmp_path))
    key = chipcache.CopyKey("run-1", url, "10:etag-old")
    local = chipcache.fetch(key)
    assert local is not None and open(local, "rb").read() == b"old bytes!"
    assert chipcache.fetch(key) == local  # once per key
    assert chipcache.lookup(url) is None  # outside any chip task
    with chipcache.reading(key):
        assert chipcache.lookup(url) == local
    for other in (chipcache.CopyKey("run-2", url, "10:etag-old"),
                  chipcache.CopyKey("run-1", url, "12:etag-new")):
        with chipcache.reading(other):
            assert chipcache.lookup(url) is None
    # An object whose size is not the listed one is not kept (it changed since listing).
    memory.pipe_file("/bucket/chip0.tif", b"new bytes!!!")
    assert chipcache.fetch(chipcache.CopyKey("run-3", url, "10:etag-old")) is None
    assert chipcache.drop_run("run-1") == 1
    assert not os.path.exists(local) and not chipcache._copies
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # nothing left of either run
    memory.rm("/bucket", recursive=True)
