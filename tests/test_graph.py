"""sn5dask.runner.graph and the scan tasks it builds, computed in-process on fakes: exact AOI
percentiles, the tree's shape, per-chip keys, and errors kept per chip."""

from __future__ import annotations

from dataclasses import replace

import dask
import numpy as np
import pytest

from sn5dask.config import load_config
from sn5dask.errors import ImageError
from sn5dask.outputs.layout import AoiLayout
from sn5dask.runner.chiptask import ChipJob
from sn5dask.runner.graph import (
    MIN_CHIP_TASKS,
    SCAN_BATCH_BYTES,
    SCAN_BATCH_CHIPS,
    TREE_FAN_IN,
    chip_tasks,
    scan_batches,
    scan_graph,
    scan_tree,
)
from sn5dask.testing import MemoryWriter, fake_aoi

AOI = "AOI_98_Fake"


@pytest.fixture(scope="module")
def fake():
    return fake_aoi(aoi=AOI, n_chips=6, size=48, seed=9)


def test_scan_graph_gives_exact_percentiles_and_every_header(fake) -> None:
    graph = scan_graph(fake.catalog.chips, (5, 3, 2), (2, 98), with_histogram=True, reader=fake.reader)
    stats = graph.compute(scheduler="sync")
    for band in (5, 3, 2):
        values = np.concatenate([fake.reader.images[c.image][1][band - 1].ravel() for c in fake.catalog.chips])
        values = values[values > 0]
        assert stats.values[band] == tuple(np.percentile(values, [2, 98]))
        assert stats.valid_pixels[band] == values.size
    assert set(stats.headers) == {c.chip_id for c in fake.catalog.chips} and stats.errors == {}


def test_a_chip_that_fails_the_scan_is_an_error_not_a_crash(fake) -> None:
    bad = fake.catalog.chips[3]
    fake.reader.failures[bad.image] = ImageError(bad.image, "truncated")
    try:
        stats = scan_graph(fake.catalog.chips, (5, 3, 2), (2, 98), with_histogram=False,
                           reader=fake.reader).compute(scheduler="sync")
    finally:
        del fake.reader.failures[bad.image]
    assert stats.errors == {bad.chip_id: f"{bad.image}: truncated"}
    assert bad.chip_id not in stats.headers and len(stats.headers) == 5
    assert stats.values is None  # headers only: no pixels read for them


@pytest.mark.parametrize("n_chips", [1, 8, 9, 70, 300])
def test_scan_tree_sums_with_fan_in_8(n_chips) -> None:
    fake = fake_aoi(aoi=AOI, n_chips=n_chips, size=16, seed=1, with_edge_cases=False)
    tree = scan_tree(fake.catalog.chips, (1,), with_histogram=True, reader=fake.reader)
    graph = dict(tree.__dask_graph__())
    scans = [k for k in graph if str(k).startswith("scan_chips")]
    combines = [k for k in graph if str(k).startswith("combine_scans")]
    batches = -(-n_chips // SCAN_BATCH_CHIPS)  # 16 px chips: batches are full by chip count
    expected, level = 0, batches
    while level > 1:
        level = -(-level // TREE_FAN_IN)
        expected += level
    assert len(scans) == batches and len(combines) == expected
    scan = tree.compute(scheduler="sync")
    assert int(scan.histogram.sum()) == sum(
        int(np.count_nonzero(fake.reader.images[c.image][1][0])) for c in fake.catalog.chips
    )


def test_small_chips_are_scanned_in_batches_large_ones_alone(fake) -> None:
    small = fake.catalog.chips[0]
    chips = [replace(small, chip_id=f"s{i}", image_stamp="65536:v") for i in range(40)]
    chips += [replace(small, chip_id="full", image_stamp=f"{27 * 2**20}:v"), replace(small, chip_id="unknown", image_stamp=None)]
    chips += [replace(small, chip_id=f"m{i}", image_stamp=f"{SCAN_BATCH_BYTES // 3}:v") for i in range(4)]
    batches = [[c.chip_id for c in batch] for batch in scan_batches(chips)]
    assert batches[0] == [f"s{i}" for i in range(SCAN_BATCH_CHIPS)]
    assert batches[1:] == [[f"s{i}" for i in range(32, 40)], ["full"], ["unknown"], ["m0", "m1", "m2"], ["m3"]]


def test_many_small_chips_are_written_in_batches(tmp_path) -> None:
    fake = fake_aoi(aoi=AOI, n_chips=200, size=16, seed=3, with_edge_cases=False)
    writer = MemoryWriter()
    config = load_config(None, root="mem://", out=str(tmp_path), formats="geotiff")
    job = ChipJob(config, AoiLayout(str(tmp_path), AOI), None, False, fake.reader, writer)
    chips = [(c, i) for i, c in enumerate(fake.catalog.chips)]
    # The first 100 chips copied to one worker, the rest to another: no batch mixes them.
    placement = {c.chip_id: ("tcp://a:1" if i < 100 else "tcp://b:1") for c, i in chips}
    tasks = chip_tasks(chips, job, placement)
    sizes = [len(records) for records, _ in tasks]
    assert max(sizes) == 200 // MIN_CHIP_TASKS and len(tasks) >= MIN_CHIP_TASKS
    assert [c for records, _ in tasks for c in records] == [c for c, _ in chips]
    assert all(len({placement[c.chip_id] for c in records}) == 1 for records, _ in tasks)
    first, task = tasks[0]
    assert task.key.startswith(f"process_chip-{AOI}-{first[0].chip_id}+{len(first) - 1}-")
    try:
        results = [r for batch in dask.compute(*(t for _, t in tasks), scheduler="sync") for r in batch]
        assert [r.chip_id for r in results] == [c.chip_id for c, _ in chips]
        assert all(r.status == "ok" for r in results)
        assert sum(1 for url in writer.files if "/PS-RGB/" in url) == 200
    finally:
        writer.clear()


def test_chip_tasks_are_keyed_by_chip_and_compute_results(fake, tmp_path) -> None:
    writer = MemoryWriter()
    config = load_config(None, root="mem://", out=str(tmp_path), formats="geotiff")
    job = ChipJob(config, AoiLayout(str(tmp_path), AOI), None, False, fake.reader, writer)
    chips = [(c, i) for i, c in enumerate(fake.catalog.chips)]
    tasks = chip_tasks(chips, job)
    assert [t.key.split("-")[1:3] for _, t in tasks] == [[AOI, c.chip_id] for c, _ in chips]
    assert [records for records, _ in tasks] == [[c] for c, _ in chips]
    results = [r for batch in dask.compute(*(t for _, t in tasks), scheduler="sync") for r in batch]
    try:
        assert [r.chip_id for r in results] == [c.chip_id for c, _ in chips]
        assert all(r.status == "ok" for r in results)
        assert sum(1 for url in writer.files if "/PS-RGB/" in url) == 6
    finally:
        writer.clear()
