"""Fault injection and bad input (marked `faults`; run in CI by default).

Every case checks the outcome DESIGN.md §1/§4/§6 asks for: which inputs fail their chip
(with a reason naming the file) and which are warnings, that the run goes on for every
other chip, and that no wrong or partial output is left under a final name.
The README's reliability section reports these cases.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from pyproj import Transformer

import sn5dask
from sn5dask.config import load_config
from sn5dask.io.lock import RunLock
from tests.conftest import write_tif
from tests.procs import FaultyProxy, kill_group, moto_server, sn5dask_cli, upload_tree

pytestmark = pytest.mark.faults
AOI = "AOI_7_Moscow"


def image_name(i: int | str, prefix: str = "SN5_roads_train") -> str:
    return f"{prefix}_{AOI}_PS-MS_chip{i}.tif"


def label_name(i: int | str) -> str:
    return f"SN5_roads_train_{AOI}_geojson_roads_speed_chip{i}.geojson"


@pytest.fixture(scope="module")
def good_chip(tmp_path_factory):
    from sn5dask.synthetic import make_synthetic_aoi

    aoi = make_synthetic_aoi(tmp_path_factory.mktemp("good"), aoi=AOI, n_chips=1, size=96,
                             roads_per_chip=(6, 6), with_edge_cases=False)
    return aoi.images[0], aoi.labels[0]


def feature_collection(features: list, crs: str = "urn:ogc:def:crs:OGC:1.3:CRS84") -> dict:
    return {"type": "FeatureCollection", "crs": {"type": "name", "properties": {"name": crs}},
            "features": features}


@pytest.fixture(scope="module")
def bad_inputs(good_chip, client, tmp_path_factory):
    """One AOI holding a good chip and one chip per bad-input case; run once."""
    root = tmp_path_factory.mktemp("bad_root")
    images, labels = root / AOI / "PS-MS", root / AOI / "geojson_roads_speed"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    good_image, good_label = good_chip
    good = json.loads(good_label.read_text())
    with rasterio.open(good_image) as src:
        pixels, transform, crs = src.read(), src.transform, src.crs.to_wkt()

    def chip(i, image_bytes=None, label=None):
        if image_bytes is None:
            shutil.copy(good_image, images / image_name(i))
        else:
            (images / image_name(i)).write_bytes(image_bytes)
        if label is not None:
            text = label if isinstance(label, str) else json.dumps(label)
            (labels / label_name(i)).write_text(text)

    chip(0, label=good)
    data = good_image.read_bytes()
    chip(1, image_bytes=data[: len(data) // 3], label=good)                     # truncated TIFF
    chip(2, image_bytes=b"GIF89a this is not a TIFF", label=good)                # not a TIFF
    write_tif(images / image_name(3), pixels.astype(np.float32), transform=transform, crs=crs)
    write_tif(images / image_name(4), pixels[:4], transform=transform, crs=crs)  # 4 bands
    write_tif(images / image_name(5), pixels, transform=transform, crs=None)      # no CRS
    write_tif(images / image_name(6), pixels, crs=crs,
              transform=transform @ Affine.rotation(10))                           # rotated
    write_tif(images / image_name(7), np.zeros_like(pixels), transform=transform, crs=crs)
    (labels / label_name(7)).write_text(json.dumps(good))                         # all nodata
    chip(8, label='{"type": "FeatureCollection", "features": [')                 # does not parse
    chip(9, label={"type": "FeatureCollection", "roads": []})                     # no features key
    with_nulls = json.loads(json.dumps(good))
    with_nulls["features"][0]["geometry"] = None
    with_nulls["features"][1]["geometry"] = None
    chip(10, label=with_nulls)                                                    # null geometries
    far = feature_collection([{"type": "Feature", "properties": {"inferred_speed_mph": 30},
                               "geometry": {"type": "LineString", "coordinates": [[10, 10], [10.01, 10.01]]}}])
    chip(11, label=far)                                                           # far outside
    bad_speeds = json.loads(json.dumps(good))
    for feature, speed in zip(bad_speeds["features"], ["NaN", "Infinity", -5, '"fast"']):
        feature["properties"]["inferred_speed_mph"] = f"@{speed}@"
        feature["properties"].pop("inferred_speed_mps")
    text = json.dumps(bad_speeds)
    for speed in ["NaN", "Infinity", -5, '"fast"']:
        text = text.replace(f'"@{speed}@"', str(speed))
    chip(12, label=text)                                                          # NaN/Inf/neg/str speeds
    to_mercator = Transformer.from_crs(4326, 3857, always_xy=True)
    mercator = json.loads(json.dumps(good))
    for feature in mercator["features"]:
        feature["geometry"]["coordinates"] = [list(to_mercator.transform(*c)) for c in feature["geometry"]["coordinates"]]
    chip(13, label=feature_collection(mercator["features"], "EPSG:3857"))         # other CRS
    chip(14, label=good)
    shutil.copy(good_image, images / image_name(14, prefix="SN5_roads_test"))   # duplicate id
    big = json.loads(json.dumps(good))
    big["features"][0]["properties"]["padding"] = "x" * (1_200_000)
    chip(15, label=big)                                                           # > --max-label-mb 1
    chip(16, label="[" * 200_000 + "]" * 200_000)                                 # deeply nested
    chip(17, label={"type": "FeatureCollection", "features": [1, "x", None, {"type": "Feature"}]})
    (labels / label_name(99)).write_text(json.dumps(good))                        # orphan label

    out = tmp_path_factory.mktemp("bad_out")
    summary = sn5dask.run(load_config(None, root=str(root), out=str(out), max_label_mb=1), client=client)
    manifest = json.loads((out / AOI / "manifest.json").read_text())
    return root, out, summary, manifest


FAILED = {
    1: "chip1.tif: cannot be read as a raster",
    2: "chip2.tif: cannot be read as a raster",
    3: "chip3.tif: unsupported pixel type float32",
    4: "chip4.tif: has 4 band(s) but --bands asks for band 5",
    5: "chip5.tif: has no CRS",
    6: "chip6.tif: has a rotated or sheared transform",
    8: "chip8.geojson: not valid GeoJSON",
    9: "chip9.geojson: GeoJSON has no 'features' list",
    15: "chip15.geojson: label file too large",
    16: "chip16.geojson: not valid GeoJSON",
}
WARNED = {
    7: "every pixel of bands [5, 3, 2] is 0 (all nodata)",
    10: "feature 0: null geometry",
    11: "none of its 1 road(s) falls on the chip",
    12: "no usable speed",
    17: "feature 0: not a GeoJSON Feature",
}


def test_bad_inputs_fail_alone_with_named_reasons(bad_inputs) -> None:
    root, out, summary, manifest = bad_inputs
    assert summary.exit_code == 1
    chips = manifest["chips"]
    for i, reason in FAILED.items():
        assert chips[f"chip{i}"]["status"] == "failed", i
        assert reason in chips[f"chip{i}"]["reason"], (i, chips[f"chip{i}"]["reason"])
        # A bad label fails the chip after its RGB was written: the RGB is kept.
        expected = {"rgb"} if reason.endswith(("GeoJSON", "list", "too large")) else set()
        assert set(chips[f"chip{i}"]["outputs"]) == expected, (i, chips[f"chip{i}"]["outputs"])
    for i, warning in WARNED.items():
        assert chips[f"chip{i}"]["status"] == "ok", (i, chips[f"chip{i}"])
        assert any(warning in w for w in chips[f"chip{i}"]["warnings"]), (i, chips[f"chip{i}"]["warnings"])
    assert chips["chip0"]["status"] == "ok" and chips["chip0"]["warnings"] == []
    assert chips["chip13"]["status"] == "ok"
    duplicate = chips["chip14"]
    assert duplicate["status"] == "failed" and "duplicate chip id chip14" in duplicate["reason"]
    assert image_name(14) in duplicate["reason"] and image_name(14, "SN5_roads_test") in duplicate["reason"]
    assert [Path(p).name for p in manifest["orphan_labels"]] == [label_name(99)]
    assert manifest["counts"] == {"ok": 7, "skipped": 0, "failed": 11}
    assert not list(out.rglob("*.partial"))


def test_bad_input_outputs_are_right(bad_inputs) -> None:
    root, out, _, manifest = bad_inputs

    def mask(chip: int, kind: str) -> np.ndarray:
        with rasterio.open(out / AOI / manifest["chips"][f"chip{chip}"]["outputs"][kind]) as src:
            return src.read()

    reference = mask(0, "binary")
    assert reference.any()
    # A label in EPSG:3857 gives the mask of the same roads in CRS84 (reprojected both ways).
    assert int((mask(13, "binary") != reference).sum()) <= 0.01 * int((reference > 0).sum())
    assert not mask(11, "binary").any() and not mask(7, "multichannel").any()
    speeds = mask(12, "continuous")[0]
    binary = mask(12, "binary")[0]
    assert binary.any() and (speeds[binary > 0] >= 0).all()
    with rasterio.open(out / AOI / manifest["chips"]["chip7"]["outputs"]["rgb"]) as src:
        assert not src.read().any()


def test_unreadable_files_simulated_permission_error(good_chip, tmp_path, monkeypatch) -> None:
    """Tests run as root, so a chmod would not stop a read: raise EACCES where the OS would."""
    from sn5dask.core.stretch import band_cut
    from sn5dask.io import files as storage
    from sn5dask.io.catalog import ChipRecord
    from sn5dask.outputs.layout import AoiLayout
    from sn5dask.runner.chiptask import ChipJob, process_chip

    image, label = good_chip
    config = load_config(None, root=str(image.parent), out=str(tmp_path), formats="geotiff")
    job = ChipJob(config, AoiLayout(str(tmp_path), AOI), tuple(band_cut(100, 900) for _ in range(3)))
    chip = ChipRecord(AOI, "chip0", str(image), str(label), "out.tif")
    real_open = rasterio.open

    def denied_open(path, *args, **kwargs):
        if str(path) == str(image):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(rasterio, "open", denied_open)
    result = process_chip(chip, job)
    assert result.status == "failed" and str(image) in result.reason and "Permission denied" in result.reason
    monkeypatch.setattr(rasterio, "open", real_open)

    def denied_read(url, max_bytes=None):
        raise PermissionError(13, "Permission denied", url)

    monkeypatch.setattr(storage, "read_bytes", denied_read)
    result = process_chip(chip, job)
    assert result.status == "failed" and str(label) in result.reason and "cannot be read" in result.reason
    assert not list(tmp_path.rglob("masks/*/*.tif"))


# --- path traversal ----------------------------------------------------------------------

def test_hostile_names_never_write_outside_out(good_chip, client, tmp_path) -> None:
    image, label = good_chip
    root = tmp_path / "root"
    hostile_aoi = root / "AOI_7_Moscow" / "PS-MS"
    hostile_aoi.mkdir(parents=True)
    names = ["..PS-MS_chip31.tif", "x;rm -rf ~ `id`_PS-MS_chip32.tif", "....tif", ".hidden.tif",
             "ünïcödé name.tif", "a%2F..%2F..%2Fescape.tif"]
    for name in names:
        shutil.copy(image, hostile_aoi / name)
    odd_folder = root / "..odd folder" / "PS-MS"
    odd_folder.mkdir(parents=True)
    shutil.copy(image, odd_folder / "tile.tif")
    out = tmp_path / "deep" / "out"
    before = {p for p in tmp_path.rglob("*")}
    summary = sn5dask.run(load_config(None, root=str(root), out=str(out), formats="geotiff"), client=client)
    assert summary.exit_code == 0
    created = {p for p in tmp_path.rglob("*")} - before
    assert created and all(p == out.parent or out in p.parents or p == out for p in created)
    written = sorted(p.name for p in out.rglob("PS-RGB/*.tif"))
    assert all(n.endswith(".tif") and "/" not in n and not n.startswith(".") for n in written)
    assert sorted(a.aoi for a in summary.aois) == ["AOI_7_Moscow", "odd_folder"]


def test_s3_style_keys_are_sanitised() -> None:
    from sn5dask.io import files as storage
    from sn5dask.io.catalog import aoi_for_image, output_name

    assert aoi_for_image("bucket/in/../PS-MS/evil.tif") == "unnamed"
    assert aoi_for_image("bucket/in/AOI_7_Moscow;rm/PS-MS/x.tif") == "AOI_7_Moscow_rm"
    assert output_name("..%2F..%2Fetc%2Fpasswd.tif") == "2F_2Fetc_2Fpasswd.tif"
    with pytest.raises(ValueError, match="unsafe"):
        storage.join("s3://bucket/out", "../escape")
    with pytest.raises(ValueError, match="unsafe"):
        storage.join("/tmp/out", "/etc")


# --- faults: S3 --------------------------------------------------------------------------

def upload(env: dict, root: Path, bucket: str) -> None:
    upload_tree(env, root, bucket)


@pytest.mark.slow  # a moto server
def test_flaky_s3_is_retried_and_a_dead_object_fails_clearly(small_aoi, tmp_path) -> None:
    with moto_server() as env:
        upload(env, small_aoi.root, "flaky")
        # 1. every 4th request fails with 503 SlowDown: retries make the run whole.
        with FaultyProxy(env["AWS_ENDPOINT_URL"], lambda method, path, n: n % 4 == 0) as proxy:
            proxied = {**env, "AWS_ENDPOINT_URL": proxy.url}
            run = sn5dask_cli("run", "s3://flaky/in", "--out", "s3://flaky/out", "--workers", "2", env=proxied)
            output, _ = run.communicate(timeout=600)
        assert run.returncode == 0, output
        assert proxy.failed >= 10
        # 2. one chip's image always fails: that chip fails with its name, the rest finish.
        dead = "chip2.tif"
        with FaultyProxy(env["AWS_ENDPOINT_URL"], lambda method, path, n: dead in path and method == "GET") as proxy:
            proxied = {**env, "AWS_ENDPOINT_URL": proxy.url}
            run = sn5dask_cli("run", "s3://flaky/in", "--out", "s3://flaky/out2", "--workers", "2",
                              "--formats", "geotiff", env=proxied)
            output, _ = run.communicate(timeout=600)
        assert run.returncode == 1, output
        flat = " ".join(output.split())
        assert "failed" in flat and "chip2" in flat and "s3://flaky/in/AOI_99_Synthetic/PS-MS/" in flat
        import boto3

        s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                          aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
        manifest_text = s3.get_object(Bucket="flaky", Key="out2/AOI_99_Synthetic/manifest.json")["Body"].read().decode()
        manifest = json.loads(manifest_text)
        assert manifest["counts"] == {"ok": 5, "skipped": 0, "failed": 1}
        for text in (output, manifest_text):
            assert env["AWS_SECRET_ACCESS_KEY"] not in text and env["AWS_ACCESS_KEY_ID"] not in text
        clean = s3.get_object(Bucket="flaky", Key="out/AOI_99_Synthetic/manifest.json")["Body"].read()
        assert json.loads(clean)["counts"]["ok"] == 6


# --- faults: full disk -------------------------------------------------------------------

def test_full_disk_leaves_no_partial_or_truncated_file(client, tmp_path, monkeypatch) -> None:
    """A real full disk (a 1.5 MB tmpfs) where the test can mount one, else ENOSPC raised
    by the writes themselves."""
    from sn5dask.synthetic import make_synthetic_aoi

    aoi = make_synthetic_aoi(tmp_path / "in", n_chips=8, size=400, with_edge_cases=False)
    out = tmp_path / "small_disk"
    out.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1500k", "tmpfs", str(out)],
                             capture_output=True).returncode == 0
    try:
        if mounted:
            process = sn5dask_cli("run", aoi.root, "--out", out, "--workers", "1", "--formats", "geotiff")
            output, _ = process.communicate(timeout=600)
            assert process.returncode == 1, output
            assert "No space left on device" in " ".join(output.split())
        else:
            from sn5dask.io import files as storage

            written = {"bytes": 0}
            real_write = storage.os.fsync

            def fsync_until_full(fd: int) -> None:
                written["bytes"] += os.fstat(fd).st_size
                if written["bytes"] > 1_500_000:
                    raise OSError(28, "No space left on device")
                real_write(fd)

            monkeypatch.setattr(storage.os, "fsync", fsync_until_full)
            from sn5dask.core.stretch import band_cut
            from sn5dask.io.catalog import discover
            from sn5dask.outputs.layout import AoiLayout
            from sn5dask.runner.chiptask import ChipJob, process_chip

            config = load_config(None, root=str(aoi.root), out=str(out), formats="geotiff")
            job = ChipJob(config, AoiLayout(str(out), "AOI_99_Synthetic"), tuple(band_cut(100, 900) for _ in range(3)))
            results = [process_chip(chip, job) for chip in discover(str(aoi.root))[0].chips]
            failed = [r for r in results if r.status == "failed"]
            assert failed and all("No space left on device" in r.reason for r in failed)
        assert not list(out.rglob("*.partial"))
        for path in out.rglob("*.tif"):  # whatever exists under a final name is complete
            with rasterio.open(path) as src:
                src.read()
    finally:
        if mounted:
            subprocess.run(["umount", str(out)], check=True)


# --- faults: two runs on one OUT; Ctrl-C and resume, byte for byte ---------------------------

def file_digests(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file() and p.suffix in (".tif", "") and ".zarr" not in p.name
            and p.name not in ("zarr.json",)}


@pytest.fixture(scope="module")
def mid_aoi(tmp_path_factory):
    from sn5dask.synthetic import make_synthetic_aoi

    return make_synthetic_aoi(tmp_path_factory.mktemp("mid"), n_chips=12, size=900, seed=5)


def _lock_holder(lock) -> dict:
    try:
        return json.loads(lock.read_text())
    except (OSError, ValueError):
        return {}


def test_second_run_on_the_same_out_exits_2_naming_the_holder(mid_aoi, tmp_path) -> None:
    first = sn5dask_cli("run", mid_aoi.root, "--out", tmp_path, "--workers", "1")
    lock = tmp_path / "AOI_99_Synthetic" / ".sn5dask.lock"
    deadline = time.monotonic() + 120
    # The holder's host and pid follow the OS lock by a moment: wait for them.
    while not _lock_holder(lock) and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.02)
    holder = _lock_holder(lock)
    assert holder, "the first run never took the lock"
    second = sn5dask_cli("run", mid_aoi.root, "--out", tmp_path, "--workers", "1")
    second_output, _ = second.communicate(timeout=300)
    first_output, _ = first.communicate(timeout=600)
    assert second.returncode == 2, second_output
    assert f"pid {holder['pid']}" in " ".join(second_output.split())
    assert holder["pid"] == first.pid and first.returncode == 0, first_output
    manifest = json.loads((tmp_path / "AOI_99_Synthetic" / "manifest.json").read_text())
    assert manifest["counts"]["ok"] == 12
    RunLock(str(lock)).check_free()  # released (the file stays; the OS lock went with the run)


def test_ctrl_c_then_rerun_is_byte_identical(mid_aoi, tmp_path) -> None:
    clean = tmp_path / "clean"
    done = sn5dask_cli("run", mid_aoi.root, "--out", clean, "--workers", "2")
    assert done.wait(600) == 0
    interrupted = tmp_path / "interrupted"
    process = sn5dask_cli("run", mid_aoi.root, "--out", interrupted, "--workers", "2")
    rgb = interrupted / "AOI_99_Synthetic" / "PS-RGB"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if rgb.exists() and len(list(rgb.glob("*.tif"))) >= 3:
            break
        time.sleep(0.02)
    assert process.poll() is None
    os.kill(process.pid, 2)  # SIGINT, as Ctrl-C
    process.communicate(timeout=120)
    assert process.returncode != 0
    kill_group(process)
    chips = json.loads((interrupted / "AOI_99_Synthetic" / "manifest.json").read_text())["chips"]
    assert sum(e["status"] == "ok" for e in chips.values()) < 12  # written on Ctrl-C, cut short
    resumed = sn5dask_cli("run", mid_aoi.root, "--out", interrupted, "--workers", "2")
    output, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, output
    assert file_digests(interrupted / "AOI_99_Synthetic") == file_digests(clean / "AOI_99_Synthetic")
    assert len(file_digests(clean / "AOI_99_Synthetic")) >= 12 * 5
