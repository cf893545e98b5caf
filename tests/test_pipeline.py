"""sn5dask.runner.pipeline on a real LocalCluster: outputs checked pixel by pixel against the
pure functions, resume, parameter changes, fault isolation, the lock, the cresi profile."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr

import sn5dask
from sn5dask.config import load_config
from sn5dask.core.stretch import band_cut, stretch_to_uint8
from sn5dask.errors import LockError, ParamsChangedError
from sn5dask.io.lock import RunLock
from tests.conftest import S01, write_tif

AOI = "AOI_99_Synthetic"


def config(root, out, **kwargs):
    return load_config(None, root=str(root), out=str(out), **kwargs)


def read(path) -> tuple[np.ndarray, dict]:
    with rasterio.open(path) as src:
        return src.read(), {"transform": src.transform, "crs": src.crs, "nodata": src.nodatavals,
                            "dtypes": src.dtypes}


def snapshot(out: Path) -> dict[str, bytes]:
    """Every GeoTIFF's pixels + georef and every Zarr chunk's bytes."""
    files = {}
    for path in sorted(out.rglob("*.tif")):
        data, meta = read(path)
        files[str(path.relative_to(out))] = data.tobytes() + repr(meta).encode()
    for path in sorted(out.rglob("*.zarr/*/c.*")):  # the data arrays' chunks
        if path.is_file():
            files[str(path.relative_to(out))] = path.read_bytes()
    return files


@pytest.fixture(scope="module")
def default_run(small_aoi, client, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    summary = sn5dask.run(config(small_aoi.root, out), client=client)
    return small_aoi, out, summary


def test_run_outputs_match_the_pure_functions(default_run) -> None:
    aoi, out, summary = default_run
    assert summary.exit_code == 0 and summary.aois[0].counts == {"ok": 6, "skipped": 0, "failed": 0}
    out_aoi = out / AOI
    stats = json.loads((out_aoi / "stats.json").read_text())

    # Exact AOI percentiles: numpy on all valid pixels of the AOI.
    chips = [read(p)[0] for p in aoi.images]
    for band in (5, 3, 2):
        values = np.concatenate([c[band - 1].ravel() for c in chips])
        values = values[values > 0]
        assert stats["values"][str(band)] == list(np.percentile(values, [2, 98]))
        assert stats["valid_pixels"][str(band)] == values.size
    cuts = [band_cut(*stats["values"][str(b)]) for b in (5, 3, 2)]

    manifest = json.loads((out_aoi / "manifest.json").read_text())
    assert manifest["aoi"] == AOI and manifest["params"]["profile"] == "sn5dask"
    for i, image_path in enumerate(aoi.images):
        entry = manifest["chips"][f"chip{i}"]
        assert entry["status"] == "ok"
        source, source_meta = read(image_path)
        rgb, meta = read(out_aoi / entry["outputs"]["rgb"])
        assert np.array_equal(rgb, stretch_to_uint8(source[[4, 2, 1]], cuts, floor=1))
        assert meta["transform"] == source_meta["transform"] and meta["crs"] == source_meta["crs"]
        assert meta["nodata"] == (0.0, 0.0, 0.0) and meta["dtypes"] == ("uint8",) * 3
        label = aoi.root / AOI / "geojson_roads_speed" / f"SN5_roads_train_{AOI}_geojson_roads_speed_chip{i}.geojson"
        if not label.exists():
            assert set(entry["outputs"]) == {"rgb", "zarr"}
            assert any("no label file: masks not written" in w for w in entry["warnings"])
            continue
        expected = sn5dask.burn_masks(label, image_path, image=source)
        for kind, mask in expected.items():
            got, mask_meta = read(out_aoi / entry["outputs"][kind])
            assert np.array_equal(got, mask if mask.ndim == 3 else mask[np.newaxis]), kind
            assert mask_meta["transform"] == source_meta["transform"] and mask_meta["nodata"][0] is None
    assert manifest["chips"]["chip4"]["zero_fraction"]["5"] == pytest.approx(0.35, abs=0.01)
    assert not list(out.rglob("*.partial"))


def test_zarr_store_matches_geotiffs(default_run) -> None:
    aoi, out, _ = default_run
    ds = xr.open_zarr(out / AOI / f"{AOI}.zarr")
    assert dict(ds.sizes) == {"chip": 6, "band": 3, "y": 96, "x": 96, "channel": 8, "affine": 6}
    assert ds.rgb.dims == ("chip", "band", "y", "x") and ds.mask_multichannel.dims == ("chip", "channel", "y", "x")
    for name in ("rgb", "mask_binary", "mask_continuous", "mask_binned", "mask_multichannel"):
        assert ds[name].dtype == np.uint8 and ds[name].chunks[0] == (1,) * 6
    assert list(ds.chip_id.values) == [f"chip{i}" for i in range(6)]
    manifest = json.loads((out / AOI / "manifest.json").read_text())
    for i in range(6):
        entry = manifest["chips"][f"chip{i}"]
        assert entry["outputs"]["zarr"] == f"{AOI}.zarr#{i}"
        rgb, meta = read(out / AOI / entry["outputs"]["rgb"])
        assert np.array_equal(ds.rgb[i].values, rgb)
        assert tuple(ds.transform[i].values) == tuple(meta["transform"])[:6]
        assert rasterio.crs.CRS.from_wkt(ds.attrs["crs_wkt"][int(ds.crs[i])]) == meta["crs"]
        if "binary" in entry["outputs"]:
            assert np.array_equal(ds.mask_binary[i].values, read(out / AOI / entry["outputs"]["binary"])[0][0])
        else:
            assert not ds.mask_binary[i].values.any()


def test_rerun_resumes_and_changed_params_exit(default_run, client, tmp_path) -> None:
    aoi, out, _ = default_run
    work = tmp_path / "out"
    shutil.copytree(out, work)
    before = snapshot(work)
    again = sn5dask.run(config(aoi.root, work), client=client)
    assert again.aois[0].processed == 0 and again.exit_code == 0
    assert snapshot(work) == before

    # A lost output makes its chip redo; everything ends identical.
    (work / AOI / "masks" / "binned" / f"SN5_roads_train_{AOI}_PS-RGB_chip2.tif").unlink()
    redo = sn5dask.run(config(aoi.root, work), client=client)
    assert redo.aois[0].processed == 1 and snapshot(work) == before

    with pytest.raises(ParamsChangedError, match=r"percentiles: \[2.0, 98.0\] -> \[1.0, 99.0\]"):
        sn5dask.run(config(aoi.root, work, percentiles="1,99"), client=client)
    changed = sn5dask.run(config(aoi.root, work, percentiles="1,99", overwrite=True), client=client)
    assert changed.aois[0].processed == 6
    assert snapshot(work) != before


def test_bad_chips_fail_alone(small_aoi, client, tmp_path) -> None:
    root = tmp_path / "root"
    shutil.copytree(small_aoi.root, root)
    ps_ms = root / AOI / "PS-MS"
    labels = root / AOI / "geojson_roads_speed"
    (ps_ms / f"SN5_roads_train_{AOI}_PS-MS_chip0.tif").write_bytes(b"II*\x00garbage")
    write_tif(ps_ms / f"SN5_roads_train_{AOI}_PS-MS_chip1.tif", np.ones((3, 96, 96), np.uint16))
    (labels / f"SN5_roads_train_{AOI}_geojson_roads_speed_chip2.geojson").write_text('{"type": "Feat')
    summary = sn5dask.run(config(root, tmp_path / "out"), client=client)
    assert summary.exit_code == 1
    assert summary.aois[0].counts == {"ok": 3, "skipped": 0, "failed": 3}
    reasons = dict(summary.aois[0].failures)
    assert "chip0.tif: cannot be read as a raster" in reasons["chip0"]
    assert "chip1.tif: has 3 band(s) but --bands asks for band 5" in reasons["chip1"]
    assert "chip2.geojson: not valid GeoJSON" in reasons["chip2"]
    manifest = json.loads((tmp_path / "out" / AOI / "manifest.json").read_text())
    assert manifest["chips"]["chip0"]["status"] == "failed" and manifest["chips"]["chip3"]["status"] == "ok"
    assert (tmp_path / "out" / AOI / "PS-RGB" / f"SN5_roads_train_{AOI}_PS-RGB_chip3.tif").exists()


def test_lock_stops_a_second_run(small_aoi, client, tmp_path) -> None:
    import socket

    from tests.procs import lock_held_elsewhere

    with lock_held_elsewhere(str(tmp_path / "out" / AOI / ".sn5dask.lock")) as holder:
        with pytest.raises(LockError, match=f"host {socket.gethostname()} pid {holder.pid}"):
            sn5dask.run(config(small_aoi.root, tmp_path / "out"), client=client)


def test_a_lock_file_nobody_holds_is_free(small_aoi, client, tmp_path) -> None:
    """A lock file left by a run that died (whatever it says) is not held: the OS lock died
    with its process."""
    out_aoi = tmp_path / "out" / AOI
    out_aoi.mkdir(parents=True)
    (out_aoi / ".sn5dask.lock").write_text(json.dumps({"host": "other-host", "pid": 4242}))
    summary = sn5dask.run(config(small_aoi.root, tmp_path / "out", formats="geotiff"), client=client)
    assert summary.exit_code == 0


def test_cresi_profile_reproduces_case_s01_through_the_pipeline(client, tmp_path) -> None:
    summary = sn5dask.run(config(S01 / "inputs", tmp_path, profile="cresi"), client=client)
    assert summary.exit_code == 0
    name = "SN5_roads_train_AOI_8_Mumbai_PS-MS_chip5.tif"
    got, meta = read(tmp_path / "AOI_8_Mumbai" / "PS-RGB" / name.replace("PS-MS", "PS-RGB"))
    expected, expected_meta = read(S01 / "expected" / "PS-RGB" / name)
    assert np.array_equal(got, expected)
    assert meta["transform"] == expected_meta["transform"] and meta["crs"] == expected_meta["crs"]
    assert meta["nodata"] == expected_meta["nodata"] == (0.0, 0.0, 0.0)
    entry = json.loads((tmp_path / "AOI_8_Mumbai" / "manifest.json").read_text())["chips"]["chip5"]
    assert entry["percentiles"] == {"5": [126.0, 1011.0], "3": [170.0, 988.0], "2": [163.0, 908.0]}


def test_cresi_skip_rule_keeps_masks(small_aoi, client, tmp_path) -> None:
    summary = sn5dask.run(config(small_aoi.root, tmp_path, profile="cresi"), client=client)
    assert summary.exit_code == 0 and summary.aois[0].counts == {"ok": 5, "skipped": 1, "failed": 0}
    entry = json.loads((tmp_path / AOI / "manifest.json").read_text())["chips"]["chip4"]
    assert entry["status"] == "skipped" and "band 5 is 34.4% zeros (>= 30%)" in entry["reason"]
    assert "rgb" not in entry["outputs"] and "multichannel" in entry["outputs"]
    assert not (tmp_path / AOI / "PS-RGB" / f"SN5_roads_train_{AOI}_PS-RGB_chip4.tif").exists()


def test_chips_of_different_sizes_are_padded_in_zarr(client, tmp_path) -> None:
    from sn5dask.synthetic import make_synthetic_aoi

    big = make_synthetic_aoi(tmp_path / "in", n_chips=2, size=80, with_edge_cases=False)
    small = make_synthetic_aoi(tmp_path / "small", n_chips=1, size=50, seed=9, with_edge_cases=False)
    small_name = big.images[0].parent / f"SN5_roads_train_{AOI}_PS-MS_chip7.tif"
    shutil.copy(small.images[0], small_name)
    sn5dask.run(config(tmp_path / "in", tmp_path / "out", masks="binary"), client=client)
    ds = xr.open_zarr(tmp_path / "out" / AOI / f"{AOI}.zarr")
    assert ds.sizes["y"] == 80 and list(ds.height.values) == [80, 80, 50]
    rgb = read(tmp_path / "out" / AOI / "PS-RGB" / f"SN5_roads_train_{AOI}_PS-RGB_chip7.tif")[0]
    assert np.array_equal(ds.rgb[2, :, :50, :50].values, rgb) and not ds.rgb[2, :, 50:, :].values.any()


# --- the run loop in-process, on fakes (sn5dask.testing) ---------------------------------

@pytest.fixture(scope="module")
def inprocess_client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as c:
        yield c


def test_run_loop_in_process_with_fakes(inprocess_client, tmp_path) -> None:
    from sn5dask.io.chipio import read_json
    from sn5dask.outputs.layout import AoiLayout
    from sn5dask.runner.pipeline import run_aoi
    from sn5dask.runner.report import LogReporter
    from sn5dask.testing import MemoryWriter, fake_aoi

    fake = fake_aoi(aoi="AOI_98_Fake", n_chips=5, size=48, seed=2)
    bad = fake.catalog.chips[1]
    fake.reader.failures[bad.label] = RuntimeError("decoder bug")  # read by the chip task only
    writer = MemoryWriter()
    cfg = config("mem://", tmp_path)
    layout = AoiLayout(str(tmp_path), "AOI_98_Fake")
    try:
        summary = run_aoi(inprocess_client, cfg, fake.catalog, LogReporter(), reader=fake.reader, writer=writer)
        assert summary.counts == {"ok": 4, "skipped": 0, "failed": 1} and summary.processed == 5
        manifest = read_json(writer, layout.manifest_url)
        assert list(manifest["chips"]) == [f"chip{i}" for i in range(5)]
        assert manifest["chips"]["chip1"]["reason"].startswith(f"{bad.image}: unexpected error RuntimeError")
        stats = read_json(writer, layout.stats_url)
        values = np.concatenate([fake.reader.images[c.image][1][4].ravel() for c in fake.catalog.chips])
        assert stats["values"]["5"] == list(np.percentile(values[values > 0], [2, 98]))
        store = writer.files[layout.zarr_url]
        assert store["chip_ids"] == [f"chip{i}" for i in range(5)] and sorted(store["regions"]) == [0, 2, 3, 4]  # chip1 failed before its write
        cuts = [band_cut(*stats["values"][str(b)]) for b in (5, 3, 2)]
        for i in (0, 2, 3, 4):
            chip = fake.catalog.chips[i]
            rgb = writer.files[layout.url(manifest["chips"][chip.chip_id]["outputs"]["rgb"])].array
            assert np.array_equal(rgb, stretch_to_uint8(fake.reader.images[chip.image][1][[4, 2, 1]], cuts,
                                                        floor=1))
            assert manifest["chips"][chip.chip_id]["outputs"]["zarr"] == f"AOI_98_Fake.zarr#{i}"

        # Resume: the scan reads every chip again, only the failed chip is redone (its write
        # task reads it a second time); --overwrite redoes every chip, read twice each.
        del fake.reader.failures[bad.label]
        reads_before = fake.reader.pixel_reads()
        again = run_aoi(inprocess_client, cfg, fake.catalog, LogReporter(), reader=fake.reader, writer=writer)
        assert again.counts == {"ok": 5, "skipped": 0, "failed": 0} and again.processed == 1
        reads = fake.reader.pixel_reads() - reads_before
        assert reads == {c.image: 2 if c is bad else 1 for c in fake.catalog.chips}
        rgb_url = layout.url(read_json(writer, layout.manifest_url)["chips"]["chip1"]["outputs"]["rgb"])
        rgb = writer.files[rgb_url].array
        assert np.array_equal(rgb, stretch_to_uint8(fake.reader.images[bad.image][1][[4, 2, 1]], cuts, floor=1))
        reads_before = fake.reader.pixel_reads()
        run_aoi(inprocess_client, cfg.model_copy(update={"overwrite": True}), fake.catalog, LogReporter(),
                reader=fake.reader, writer=writer)
        assert fake.reader.pixel_reads() - reads_before == {c.image: 2 for c in fake.catalog.chips}
        assert np.array_equal(writer.files[rgb_url].array, rgb)

        # Other parameters over the same outputs stop, naming the change.
        with pytest.raises(ParamsChangedError, match=r"bands: \[5, 3, 2\] -> \[7, 5, 3\]"):
            run_aoi(inprocess_client, config("mem://", tmp_path, bands="7,5,3"), fake.catalog,
                    LogReporter(), reader=fake.reader, writer=writer)
        RunLock(str(tmp_path / "AOI_98_Fake" / ".sn5dask.lock")).check_free()  # released
    finally:
        writer.clear()


def test_chip_tasks_write_their_stac_items_and_stale_outputs_go_on_fakes(inprocess_client, tmp_path) -> None:
    """The run loop on fakes: each chip task writes its chip's STAC items (fold included,
    known from the scan); a re-run in which one chip's input is gone and another's label
    fails removes exactly the outputs and items the new manifest no longer lists, and
    says so."""
    from sn5dask.io.chipio import read_json
    from sn5dask.outputs import stac
    from sn5dask.outputs.layout import AoiLayout
    from sn5dask.runner.pipeline import run_aoi
    from sn5dask.runner.report import LogReporter
    from sn5dask.testing import MemoryWriter, fake_aoi

    notices: list[str] = []

    class Notes(LogReporter):
        def notice(self, message: str) -> None:
            notices.append(message)

    fake = fake_aoi(aoi="AOI_98_Fake", n_chips=4, size=48, seed=5, with_edge_cases=False)
    writer = MemoryWriter()
    cfg = config("mem://", tmp_path, formats="geotiff")
    layout = AoiLayout(str(tmp_path), "AOI_98_Fake")
    try:
        run_aoi(inprocess_client, cfg, fake.catalog, Notes(), reader=fake.reader, writer=writer)
        manifest = read_json(writer, layout.manifest_url)
        for chip_id, entry in manifest["chips"].items():
            image = read_json(writer, layout.url(stac.item_relpath(chip_id)))
            label = read_json(writer, layout.url(stac.item_relpath(chip_id, label=True)))
            assert image["properties"]["proj:shape"] == [48, 48] and image["bbox"][0] < image["bbox"][2]
            assert label["properties"]["sn5dask:fold"] == entry["fold"] is not None
        links = read_json(writer, layout.url(stac.COLLECTION_NAME))["links"]
        assert sum(link["rel"] == "item" for link in links) == 8 and not notices

        gone = fake.catalog.chips.pop(3)
        failing = fake.catalog.chips[1]
        fake.reader.failures[failing.label] = OSError("label server down")
        before = set(writer.files)
        run_aoi(inprocess_client, cfg.model_copy(update={"overwrite": True}), fake.catalog, Notes(),
                reader=fake.reader, writer=writer)
        manifest = read_json(writer, layout.manifest_url)
        assert gone.chip_id not in manifest["chips"] and manifest["chips"]["chip1"]["status"] == "failed"
        removed = before - set(writer.files)
        assert all(gone.chip_id in url or ("chip1" in url and "/masks/" in url) or url.endswith("chip1.json")
                   or url.endswith("chip1-label.json") for url in removed), sorted(removed)
        assert {url for url in removed if gone.chip_id in url} == {u for u in before if f"{gone.chip_id}." in u
                                                                  or f"{gone.chip_id}-" in u}
        assert layout.url(manifest["chips"]["chip1"]["outputs"]["rgb"]) in writer.files  # still listed
        assert len(notices) == 1 and f"removed {len(removed)} output(s)" in notices[0]
    finally:
        writer.clear()


def test_a_chip_task_on_other_versions_stops_the_run_loop_on_fakes(inprocess_client, tmp_path) -> None:
    """A worker that joined unchecked and runs another numpy: its chip task refuses before
    writing, and the run stops with one error naming both versions."""
    import numpy

    from sn5dask.errors import VersionSkewError
    from sn5dask.runner.pipeline import run_aoi
    from sn5dask.runner.report import LogReporter
    from sn5dask.runner.versioncheck import WorkerVersions
    from sn5dask.testing import MemoryWriter, fake_aoi

    fake = fake_aoi(aoi="AOI_98_Fake", n_chips=3, size=32, seed=1, with_edge_cases=False)
    writer = MemoryWriter()
    checked = WorkerVersions(inprocess_client)
    checked.of_worker = {address: {} for address in inprocess_client.nthreads()}  # "already checked"
    checked.expected = {**checked.expected, "numpy": "0.0"}  # what the client would run
    try:
        with pytest.raises(VersionSkewError, match=rf"numpy {numpy.__version__} there, 0.0 here"):
            run_aoi(inprocess_client, config("mem://", tmp_path, formats="geotiff"), fake.catalog, LogReporter(),
                    reader=fake.reader, writer=writer, workers_checked=checked)
        assert not [url for url in writer.files if url.endswith(".tif")]
    finally:
        writer.clear()


def test_many_small_chips_in_batches_give_the_same_outputs(client, tmp_path, monkeypatch) -> None:
    """An AOI of 200 small chips is scanned and written in batches (several chips per
    task): every chip still gets its own manifest entry, and every output is the same as
    with one task per chip."""
    from sn5dask.runner import graph
    from sn5dask.synthetic import make_synthetic_aoi

    aoi = make_synthetic_aoi(tmp_path / "in", n_chips=200, size=24, seed=4, roads_per_chip=(1, 2))
    batched = sn5dask.run(config(aoi.root, tmp_path / "batched"), client=client)
    monkeypatch.setattr(graph, "SCAN_BATCH_CHIPS", 1)  # one task per chip, both passes
    single = sn5dask.run(config(aoi.root, tmp_path / "single"), client=client)
    for summary in (batched, single):
        assert summary.exit_code == 0 and summary.aois[0].counts["ok"] == 200
    manifest = json.loads((tmp_path / "batched" / AOI / "manifest.json").read_text())
    assert len(manifest["chips"]) == 200 and all(e["status"] == "ok" for e in manifest["chips"].values())
    assert snapshot(tmp_path / "batched") == snapshot(tmp_path / "single")
    assert len([k for k in snapshot(tmp_path / "batched") if "/PS-RGB/" in k]) == 200
