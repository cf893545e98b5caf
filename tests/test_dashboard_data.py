"""sn5dask/dashboard/data.py and run.LiveCounts: what the page shows, from files (fast,
no browser: the browser tests are in test_dashboard.py)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from sn5dask.dashboard import data
from sn5dask.dashboard.run import LiveCounts
from sn5dask.outputs.layout import AoiLayout

AOI = "AOI_99_Synthetic"


def manifest_document(**chips: dict) -> dict:
    return {"aoi": AOI, "params": {}, "counts": {"ok": len(chips), "skipped": 0, "failed": 0},
            "chips": {cid: {"status": "ok", "outputs": {}, **entry} for cid, entry in chips.items()}}  # fmt: skip


@pytest.fixture
def layout(tmp_path) -> AoiLayout:
    (tmp_path / AOI).mkdir()
    return AoiLayout(str(tmp_path), AOI)


def write(layout: AoiLayout, document: object) -> None:
    with open(layout.manifest_url, "w") as f:
        f.write(document if isinstance(document, str) else json.dumps(document))


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        ('{"aoi": ', "not valid JSON"),
        ({"aoi": AOI, "params": {}, "counts": {"ok": "lots"}, "chips": {}}, "counts are not numbers"),
        (manifest_document(chip0={"outputs": {"rgb": "../../etc/passwd"}}), "lies outside the output folder"),
        (manifest_document(chip0={"outputs": {"rgb": "/etc/passwd"}}), "lies outside the output folder"),
        ({"aoi": AOI, "params": {}, "chips": {"chip0": {"status": "done?"}}}, "not a valid sn5dask manifest"),
    ],
)
def test_a_damaged_manifest_is_a_problem_not_an_exception(layout, document, problem) -> None:
    write(layout, document)
    reading = data.read_manifest(layout)
    assert reading.manifest is None and problem in str(reading.problem)
    progress = data.ProgressWatch(layout).read()
    assert progress.damaged == reading.problem and progress.done == 0


def test_an_unchanged_manifest_is_not_read_again(layout) -> None:
    write(layout, manifest_document(chip0={}))
    before = data.READS[layout.manifest_url]
    first = data.read_manifest(layout)
    for _ in range(20):  # twenty refreshes of any number of tabs
        assert data.read_manifest(layout) is first
    assert data.READS[layout.manifest_url] == before + 1
    write(layout, manifest_document(chip0={}, chip1={}))
    assert list(data.read_manifest(layout).manifest.chips) == ["chip0", "chip1"]
    assert data.READS[layout.manifest_url] == before + 2


def test_folds_and_reasons_as_the_table_shows_them(layout) -> None:
    write(layout, manifest_document(
        chip0={"fold": 2, "label": "l0", "outputs": {"rgb": "PS-RGB/a.tif", "binary": "masks/binary/a.tif"}},
        chip1={"status": "failed", "fold": 1, "label": "l1", "reason": "/data/in/x_chip1.geojson: not valid GeoJSON",
               "outputs": {"rgb": "PS-RGB/b.tif"}},
        chip2={"fold": None, "outputs": {"rgb": "PS-RGB/c.tif"}},
    ))  # fmt: skip
    rows = {row["chip"]: row for row in data.chip_table(data.read_manifest(layout).manifest, {"chip3": "ok"})}
    assert [rows[c]["fold"] for c in ("chip0", "chip1", "chip2", "chip3")] == [2, None, None, None]
    assert (rows["chip1"]["reason"], rows["chip1"]["file"]) == ("not valid GeoJSON", "x_chip1.geojson")
    assert rows["chip3"]["status"] == "ok"  # reported by the run, not in the manifest yet


def test_chips_per_second_counts_only_this_runs_chips(monkeypatch) -> None:
    clock = [100.0]
    monkeypatch.setattr("sn5dask.dashboard.run.time.monotonic", lambda: clock[0])
    live = LiveCounts()
    live.aoi_started(AOI, total=2000, already_done=1990, already_failed=0)  # a resume
    clock[0] += 4.0
    live.chip_finished(AOI, SimpleNamespace(status="ok", chip_id="chip1990"))
    clock[0] += 4.0
    live.chip_finished(AOI, SimpleNamespace(status="failed", chip_id="chip1991"))
    progress = live.counts[AOI]
    assert progress.chips_per_second == pytest.approx(2 / 8.0)
    assert progress.eta_seconds == pytest.approx(8 / 0.25)
    assert live.chip_status[AOI] == {"chip1990": "ok", "chip1991": "failed"}


def test_footprints_name_the_chips_without_one(layout) -> None:
    write(layout, manifest_document(chip0={}, chip1={"status": "failed"}))
    with open(layout.stats_url, "w") as f:
        json.dump({"chip_bboxes": {"chip0": [1.0, 2.0, 3.0, 4.0]}}, f)
    found = data.footprints(layout, data.read_manifest(layout).manifest, {"chip2": "failed"})
    assert [(b["chip"], b["status"]) for b in found.boxes] == [("chip0", "ok")]
    assert found.without_footprint == {"chip1": "failed", "chip2": "failed"}
