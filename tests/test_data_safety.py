"""Data safety (README: reliability): no native crash from a road, no output over an input,
one output per input and one AOI per name, nothing dropped at discovery, exact masks for
any label, resume that verifies, `validate` that reports, polar chips."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

import sn5dask
from sn5dask.config import load_config
from sn5dask.errors import ConfigError, ParamsChangedError
from sn5dask.io.catalog import discover
from sn5dask.outputs.layout import MAX_OUTPUT_NAME_BYTES, output_name
from tests.conftest import S02, write_tif
from tests.procs import sn5dask_cli

pytestmark = pytest.mark.faults
S02_IMAGE = S02 / "inputs" / "PS-MS" / "SN3_roads_train_AOI_2_Vegas_PS-MS_img991.tif"
S02_LABEL = S02 / "inputs" / "geojson_roads" / "AOI_2_Vegas_img991.geojson"
AOI = "AOI_2_Vegas"


def swapped_label(path: Path, every: int = 2) -> tuple[Path, list[int]]:
    """The real SN3 label with longitude and latitude swapped in every `every`-th feature."""
    document = json.loads(S02_LABEL.read_text())
    swapped = []
    for index, feature in enumerate(document["features"]):
        if index % every == 0:
            geometry = feature["geometry"]
            if geometry["type"] == "LineString":
                geometry["coordinates"] = [[y, x] for x, y, *_ in geometry["coordinates"]]
            else:
                geometry["coordinates"] = [[[y, x] for x, y, *_ in part] for part in geometry["coordinates"]]
            swapped.append(index)
    path.write_text(json.dumps(document))
    return path, swapped


def keep_features(path: Path, drop: list[int]) -> Path:
    document = json.loads(S02_LABEL.read_text())
    document["features"] = [f for i, f in enumerate(document["features"]) if i not in drop]
    path.write_text(json.dumps(document))
    return path


def s02_root(root: Path, label: Path) -> Path:
    (root / AOI / "PS-MS").mkdir(parents=True)
    (root / AOI / "geojson_roads").mkdir(parents=True)
    shutil.copy(S02_IMAGE, root / AOI / "PS-MS" / S02_IMAGE.name)
    shutil.copy(label, root / AOI / "geojson_roads" / S02_LABEL.name)
    return root


# --- 1. no native crash from a road ------------------------------------------------------

def run_in_subprocess(code: str) -> subprocess.CompletedProcess:
    """A segfault must fail the test, not kill the test process."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_swapped_lon_lat_roads_warn_and_the_others_burn_via_the_api(tmp_path) -> None:
    label, swapped = swapped_label(tmp_path / "swapped.geojson")
    reference = keep_features(tmp_path / "kept.geojson", swapped)
    code = f"""
import json, logging, numpy as np, sn5dask
records = []
logging.getLogger("sn5dask").addHandler(type("H", (logging.Handler,), {{"emit": lambda self, r: records.append(r.getMessage())}})())
masks = sn5dask.burn_masks({str(label)!r}, {str(S02_IMAGE)!r})
expected = sn5dask.burn_masks({str(reference)!r}, {str(S02_IMAGE)!r})
print(json.dumps({{"equal": all(np.array_equal(masks[k], expected[k]) for k in masks),
                   "roads": int((masks["binary"] > 0).sum()), "warnings": records}}))
"""
    result = run_in_subprocess(code)
    assert result.returncode == 0, result.stderr[-2000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["equal"] and outcome["roads"] > 0
    for index in swapped:
        assert any(f"{label}: feature {index}: coordinates outside longitude" in w and "swapped" in w
                   for w in outcome["warnings"]), index


def test_swapped_lon_lat_roads_via_the_cli_chip_ok(tmp_path) -> None:
    label, swapped = swapped_label(tmp_path / S02_LABEL.name)
    root = s02_root(tmp_path / "root", label)
    process = sn5dask_cli("run", root, "--out", tmp_path / "out", "--workers", "1", "--formats", "geotiff")
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    entry = json.loads((tmp_path / "out" / AOI / "manifest.json").read_text())["chips"]["img991"]
    assert entry["status"] == "ok" and {"rgb", "binary", "multichannel"} <= set(entry["outputs"])
    assert sum("coordinates outside longitude" in w for w in entry["warnings"]) == len(swapped)
    with rasterio.open(tmp_path / "out" / AOI / entry["outputs"]["binary"]) as src:
        assert src.read().any()


@pytest.mark.parametrize("coordinates, crs, problem", [
    ([[1e300, 36.18], [-115.2, 36.18]], "urn:ogc:def:crs:OGC:1.3:CRS84", "outside longitude"),
    ([[-115.2, 95.0], [-115.2, 36.18]], "urn:ogc:def:crs:OGC:1.3:CRS84", "outside longitude"),
    ([[660000.0, 1e300], [660010.0, 4006000.0]], "EPSG:32611", "beyond 1e+08"),
    # finite in UTM, but with no place on Earth: PROJ's inverse gives inf
    ([[9.0e7, 4006000.0], [9.0e7, 4006010.0]], "EPSG:32611", "have no place in"),
])
def test_impossible_coordinates_never_reach_geos(tmp_path, coordinates, crs, problem) -> None:
    good = json.loads(S02_LABEL.read_text())["features"][:3]
    bad = {"type": "Feature", "properties": {"inferred_speed_mph": 30},
           "geometry": {"type": "LineString", "coordinates": coordinates}}
    document = {"type": "FeatureCollection", "crs": {"type": "name", "properties": {"name": crs}},
                "features": [bad]}
    label = tmp_path / "bad.geojson"
    label.write_text(json.dumps(document))
    code = f"""
import json, sn5dask
from sn5dask.core.labels import parse_road_labels
from sn5dask.io.burn import burn_chip_masks
from sn5dask.api import to_grid
labels = parse_road_labels(open({str(label)!r}).read(), "bad.geojson")
warnings = list(labels.warnings)
masks = burn_chip_masks(labels, to_grid({str(S02_IMAGE)!r}), warnings=warnings)
print(json.dumps({{"warnings": warnings, "sum": int(masks["binary"].sum())}}))
"""
    result = run_in_subprocess(code)
    assert result.returncode == 0, result.stderr[-2000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert any(problem in w and ("feature 0" in w or "buffered road" in w) for w in outcome["warnings"])
    assert outcome["sum"] == 0
    del good


# --- 2. outputs never overwrite inputs ---------------------------------------------------

def test_out_equal_to_root_is_refused_and_originals_are_untouched(tmp_path) -> None:
    root = s02_root(tmp_path / "data", S02_LABEL)
    original = root / AOI / "PS-RGB" / S02_IMAGE.name.replace("PS-MS", "PS-RGB")
    original.parent.mkdir()
    original.write_bytes(b"the user's own PS-RGB file")
    for out in (root, root / AOI / "PS-MS", root / AOI / "geojson_roads" / "x"):
        process = sn5dask_cli("run", root, "--out", out, "--workers", "1")
        output, _ = process.communicate(timeout=120)
        assert process.returncode == 2, output
        lines = [line for line in output.splitlines() if line.strip()]
        assert len(lines) == 1 and "could overwrite inputs" in output and "Traceback" not in output
    assert original.read_bytes() == b"the user's own PS-RGB file"
    assert not (root / AOI / "PS-MS" / AOI).exists() and not (root / AOI / "masks").exists()


def test_outputs_inside_root_are_not_rediscovered(client, tmp_path) -> None:
    root = s02_root(tmp_path / "data", S02_LABEL)
    config = load_config(None, root=str(root), out=str(root / "prepared"), formats="geotiff")
    first = sn5dask.run(config, client=client)
    assert [a.aoi for a in first.aois] == [AOI] and first.aois[0].counts["ok"] == 1
    # Even a PS-MS folder under OUT is never an input.
    shutil.copytree(root / AOI / "PS-MS", root / "prepared" / "AOI_5_Elsewhere" / "PS-MS")
    again = sn5dask.run(config, client=client)
    assert [a.aoi for a in again.aois] == [AOI] and again.aois[0].processed == 0


# --- 3. one output per input, one AOI per name -------------------------------------------

def test_images_sharing_an_output_name_both_fail_naming_both(tmp_path) -> None:
    folder = tmp_path / "AOI_7_Moscow" / "PS-MS"
    folder.mkdir(parents=True)
    a = folder / "SN5_roads_train_AOI_7_Moscow_PS-MS_chip1.tif"
    b = folder / "SN5_roads_train_AOI_7_Moscow_PS-MS chip1.tif"
    for path in (a, b):
        write_tif(path, np.ones((8, 8, 8), np.uint16))
    (catalog,) = discover(str(tmp_path))
    assert len(catalog.chips) == 2
    for chip in catalog.chips:
        assert chip.problem is not None and str(a) in chip.problem and str(b) in chip.problem


def test_aoi_folders_that_sanitise_alike_are_kept_apart(tmp_path) -> None:
    for folder in ("Москва", "Київ"):
        write_tif(tmp_path / folder / "PS-MS" / "tile_1.tif", np.ones((8, 8, 8), np.uint16))
    catalogs = discover(str(tmp_path))
    names = sorted(c.aoi for c in catalogs)
    assert len(names) == 2 and names[0] != names[1]
    assert all(n.startswith("unnamed_") and len(n) == len("unnamed_") + 8 for n in names)
    assert discover(str(tmp_path)) == catalogs  # deterministic


def test_long_names_are_shortened_deterministically(client, tmp_path) -> None:
    stem = "SN5_roads_train_AOI_7_Moscow_PS-MS_" + "x" * 260 + "_chip3"
    name = output_name(stem + ".tif")
    assert len(name.encode()) <= MAX_OUTPUT_NAME_BYTES and name == output_name(stem + ".tif")
    assert name != output_name(stem.replace("x" * 260, "x" * 259 + "y") + ".tif")
    write_tif(tmp_path / "in" / "AOI_7_Moscow" / "PS-MS" / (stem[:240] + ".tif"), np.ones((8, 16, 16), np.uint16))
    summary = sn5dask.run(load_config(None, root=str(tmp_path / "in"), out=str(tmp_path / "out"),
                                      formats="geotiff"), client=client)
    assert summary.exit_code == 0
    (written,) = (tmp_path / "out" / "AOI_7_Moscow" / "PS-RGB").iterdir()
    assert len(written.name.encode()) <= MAX_OUTPUT_NAME_BYTES


# --- 4. nothing silently dropped at discovery --------------------------------------------

def test_symlinked_aoi_folder_is_followed(tmp_path) -> None:
    real = tmp_path / "elsewhere" / "AOI_2_Vegas"
    s02_root(tmp_path / "elsewhere", S02_LABEL)
    (tmp_path / "root").mkdir()
    os.symlink(real, tmp_path / "root" / "AOI_2_Vegas")
    os.symlink(tmp_path / "root", tmp_path / "root" / "loop")  # a loop is harmless
    (catalog,) = discover(str(tmp_path / "root"))
    assert [c.chip_id for c in catalog.chips] == ["img991"] and catalog.chips[0].label is not None


def test_an_aoi_with_labels_only_is_reported(client, tmp_path) -> None:
    root = s02_root(tmp_path / "root", S02_LABEL)
    orphan = root / "AOI_3_Paris" / "geojson_roads_speed" / "SN5_roads_train_AOI_3_Paris_geojson_roads_speed_chip7.geojson"
    orphan.parent.mkdir(parents=True)
    orphan.write_text('{"type": "FeatureCollection", "features": []}')
    summary = sn5dask.run(load_config(None, root=str(root), out=str(tmp_path / "out"), formats="geotiff"),
                          client=client)
    paris = {a.aoi: a for a in summary.aois}["AOI_3_Paris"]
    assert paris.orphan_labels == [str(orphan)] and paris.processed == 0
    manifest = json.loads((tmp_path / "out" / "AOI_3_Paris" / "manifest.json").read_text())
    assert manifest["orphan_labels"] == [str(orphan)] and manifest["chips"] == {}


def test_a_fifo_named_like_an_input_fails_its_chip_and_never_hangs(client, tmp_path) -> None:
    root = s02_root(tmp_path / "root", S02_LABEL)
    fifo = root / AOI / "PS-MS" / "SN3_roads_train_AOI_2_Vegas_PS-MS_img7.tif"
    os.mkfifo(fifo)
    summary = sn5dask.run(load_config(None, root=str(root), out=str(tmp_path / "out"), formats="geotiff"),
                          client=client)
    assert summary.aois[0].counts == {"ok": 1, "skipped": 0, "failed": 1}
    (reason,) = [r for cid, r in summary.aois[0].failures if cid == "img7"]
    assert reason.startswith(f"{fifo}: not a regular file")


# --- 5. exact masks for any label ---------------------------------------------------------

def test_more_distinct_speeds_than_uint16_still_burn_exactly() -> None:
    import shapely
    from odc.geo.geobox import GeoBox
    from pyproj import CRS

    from sn5dask.core.labels import RoadLabels
    from sn5dask.io.burn import burn_chip_masks

    grid = GeoBox((32, 32), Affine(0.5, 0, 500000, 0, -0.5, 4000016), "EPSG:32611")
    n = 70_000
    # 69,999 tiny roads far off the chip with distinct speeds, one 30 mph road across it
    xs = 600000 + np.arange(n, dtype=float) * 3
    lines = shapely.linestrings(np.stack([np.stack([xs, np.full(n, 4000000.0)], 1),
                                          np.stack([xs + 1, np.full(n, 4000000.0)], 1)], 1))
    lines[-1] = shapely.LineString([(500000, 4000008), (500016, 4000008)])
    speeds = 1.0 + np.arange(n) / n * 60
    speeds[-1] = 30.0
    labels = RoadLabels("many.geojson", CRS.from_epsg(32611), lines, speeds, speeds * 0.44704)
    masks = burn_chip_masks(labels, grid)
    row = masks["continuous"][16]
    assert (row == 117).any() and set(np.unique(row)) <= {0, 117}  # floor(255 * 30 / 65)
    assert set(np.unique(masks["binned"])) == {0, 108}


# --- 6. resume verifies before it trusts ---------------------------------------------------

@pytest.fixture
def done_run(client, tmp_path):
    from sn5dask.synthetic import make_synthetic_aoi

    aoi = make_synthetic_aoi(tmp_path / "root", n_chips=4, size=64, seed=11)
    out = tmp_path / "out"
    config = load_config(None, root=str(aoi.root), out=str(out))
    assert sn5dask.run(config, client=client).exit_code == 0
    return aoi, out, config


def test_a_damaged_manifest_with_other_params_on_record_stops(done_run, client) -> None:
    aoi, out, config = done_run
    manifest = out / "AOI_99_Synthetic" / "manifest.json"
    manifest.write_text(manifest.read_text()[:100])  # truncated
    other = load_config(None, root=str(aoi.root), out=str(out), bands="7,5,3")
    with pytest.raises(ParamsChangedError, match=r"unreadable.*bands: \[5, 3, 2\] -> \[7, 5, 3\]"):
        sn5dask.run(other, client=client)
    (out / "AOI_99_Synthetic" / "stats.json").unlink()
    with pytest.raises(ConfigError, match="nothing tells how the .* file"):
        sn5dask.run(other, client=client)
    assert sn5dask.run(other.model_copy(update={"overwrite": True}), client=client).exit_code == 0


def test_resume_redoes_truncated_outputs_missing_chunks_and_changed_inputs(done_run, client) -> None:
    aoi, out, config = done_run
    folder = out / "AOI_99_Synthetic"
    chips = json.loads((folder / "manifest.json").read_text())["chips"]
    rgb = folder / chips["chip0"]["outputs"]["rgb"]
    good = rgb.read_bytes()
    rgb.write_bytes(good[: len(good) // 2])  # truncated under its final name
    (folder / "AOI_99_Synthetic.zarr" / "mask_binary" / "c.1.0.0").unlink()  # a lost chunk
    label = Path(chips["chip2"]["label"])
    document = json.loads(label.read_text())
    document["features"] = document["features"][:1]  # the label changed since
    label.write_text(json.dumps(document))
    summary = sn5dask.run(config, client=client)
    assert summary.aois[0].processed == 3 and summary.exit_code == 0
    assert rgb.read_bytes() == good
    report = sn5dask_validate(out)
    assert report.ok, report.problems


def test_a_store_with_nested_chunk_keys_resumes_in_its_own_layout(client, tmp_path, monkeypatch) -> None:
    """Stores made before chunk keys had "." separators (`rgb/c/0/0/0/0`) resume as they
    are: their chunks count as written, and a lost one is written again under the store's
    own key, not the new one."""

    from sn5dask.io import zarrstore
    from sn5dask.synthetic import make_synthetic_aoi

    aoi = make_synthetic_aoi(tmp_path / "root", n_chips=4, size=64, seed=11)
    out = tmp_path / "out"
    config = load_config(None, root=str(aoi.root), out=str(out))
    monkeypatch.setattr(zarrstore, "DATA_CHUNK_KEYS", {"name": "default", "separator": "/"})
    assert sn5dask.run(config, client=client).exit_code == 0  # the client creates the store
    monkeypatch.undo()
    store = out / "AOI_99_Synthetic" / "AOI_99_Synthetic.zarr"

    def chunks() -> dict[str, bytes]:
        return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*"))
                if p.is_file() and p.name != "zarr.json"}

    before = chunks()
    assert "rgb/c/3/0/0/0" in before and "mask_binary/c/1/0/0" in before
    (store / "mask_binary" / "c" / "1" / "0" / "0").unlink()
    summary = sn5dask.run(config, client=client)
    assert summary.aois[0].processed == 1 and summary.exit_code == 0
    assert chunks() == before
    report = sn5dask_validate(out)
    assert report.ok, report.problems


def sn5dask_validate(out: Path):
    from sn5dask.outputs.validate import validate_output

    return validate_output(str(out))


@pytest.mark.slow  # a moto server
def test_a_stale_s3_lock_of_this_host_is_taken_over(small_aoi) -> None:
    from tests.procs import moto_server

    with moto_server() as env:
        import boto3

        s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                          aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
        s3.create_bucket(Bucket="locks")
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        s3.put_object(Bucket="locks", Key="out/AOI_99_Synthetic/.sn5dask.lock",
                      Body=json.dumps({"host": socket.gethostname(), "pid": dead.pid}).encode())
        process = sn5dask_cli("run", small_aoi.root, "--out", "s3://locks/out", "--workers", "1",
                              "--formats", "geotiff", env=env)
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, output
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="locks", Prefix="out/")["Contents"]]
        assert "out/AOI_99_Synthetic/manifest.json" in keys and "out/AOI_99_Synthetic/.sn5dask.lock" not in keys


# --- 7. validate reports, never crashes ----------------------------------------------------

@pytest.mark.parametrize("damage, problem", [
    (lambda m, d: m.write_text(m.read_text()[:50]), "unreadable manifest"),
    (lambda m, d: m.write_text(json.dumps({"aoi": "x", "chips": []})), "not a valid sn5dask manifest"),
    (lambda m, d: _edit_output(m, "rgb", "../../../etc/passwd"), "escapes the output folder"),
    (lambda m, d: _edit_output(m, "zarr", "AOI_99_Synthetic.zarr"), "is not a Zarr reference"),
    (lambda m, d: (d / "AOI_99_Synthetic.zarr" / "rgb" / "c.0.0.0.0").unlink(), "rgb chunk of chip 0 is missing"),
])
def test_validate_names_each_problem(done_run, damage, problem) -> None:
    from typer.testing import CliRunner

    from sn5dask.cli import app

    _, out, _ = done_run
    folder = out / "AOI_99_Synthetic"
    damage(folder / "manifest.json", folder)
    result = CliRunner().invoke(app, ["validate", str(out)])
    assert result.exit_code == 1, result.output
    assert problem in " ".join(result.output.split()) and "Traceback" not in result.output


def _edit_output(manifest: Path, kind: str, value: str) -> None:
    document = json.loads(manifest.read_text())
    document["chips"]["chip0"]["outputs"][kind] = value
    manifest.write_text(json.dumps(document))


# --- 8. polar chips -----------------------------------------------------------------------

def test_a_chip_beyond_the_utm_zones_gets_its_rgb_and_ups_masks(client, tmp_path) -> None:
    root = tmp_path / "root"
    transform = Affine(2e-5, 0, 20.0, 0, -2e-5, 85.5)  # Svalbard's north, beyond 84°N
    write_tif(root / "AOI_42_North" / "PS-MS" / "SN5_roads_train_AOI_42_North_PS-MS_chip0.tif",
              np.full((8, 64, 64), 500, np.uint16) + np.arange(64, dtype=np.uint16), transform=transform)
    label = root / "AOI_42_North" / "geojson_roads_speed" / "SN5_roads_train_AOI_42_North_geojson_roads_speed_chip0.geojson"
    label.parent.mkdir(parents=True)
    lon0, lat0 = transform @ (0, 32)
    lon1, _ = transform @ (64, 32)
    label.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"inferred_speed_mph": 25},
         "geometry": {"type": "LineString", "coordinates": [[lon0, lat0], [lon1, lat0]]}}]}))
    summary = sn5dask.run(load_config(None, root=str(root), out=str(tmp_path / "out"), formats="geotiff"),
                          client=client)
    assert summary.exit_code == 0
    entry = json.loads((tmp_path / "out" / "AOI_42_North" / "manifest.json").read_text())["chips"]["chip0"]
    assert entry["status"] == "ok" and {"rgb", "binary"} <= set(entry["outputs"])
    with rasterio.open(tmp_path / "out" / "AOI_42_North" / entry["outputs"]["binary"]) as src:
        binary = src.read(1)
    # A 2 m buffer on a ~0.6 m x 2.2 m pixel grid: a band of rows around row 32, full width.
    rows = np.flatnonzero(binary.any(axis=1))
    assert binary[32].all() and 30 <= rows.min() and rows.max() <= 34


@pytest.mark.slow  # a moto server
def test_an_s3_lock_has_one_winner_and_a_dead_clients_lock_is_broken_on_request(small_aoi) -> None:
    """S3 locks are created with a conditional PUT: of two starters exactly one wins. A lock
    left by a client on another host (a killed job pod) stops a run with a message naming
    --break-lock; with it, the run takes the lock and completes."""
    import threading

    from sn5dask.errors import LockError
    from sn5dask.io.lock import RunLock
    from tests.procs import moto_server

    with moto_server() as env:
        import boto3

        s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                          aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
        s3.create_bucket(Bucket="locks")
        old_env = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            for attempt in range(5):  # starters released together, five times over
                url = f"s3://locks/race{attempt}/.sn5dask.lock"
                results: list[str] = []
                start = threading.Barrier(4)

                def starter() -> None:
                    lock = RunLock(url)
                    start.wait()
                    try:
                        lock.acquire()
                        results.append("won")
                    except LockError:
                        results.append("refused")

                threads = [threading.Thread(target=starter) for _ in range(4)]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join(60)
                assert sorted(results) == ["refused"] * 3 + ["won"], results
        finally:
            for key, value in old_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

        s3.put_object(Bucket="locks", Key="out/AOI_99_Synthetic/.sn5dask.lock",
                      Body=json.dumps({"host": "job-pod-7f9c", "pid": 1}).encode())
        args = ("run", small_aoi.root, "--out", "s3://locks/out", "--workers", "1", "--formats", "geotiff")
        process = sn5dask_cli(*args, env=env)
        output, _ = process.communicate(timeout=300)
        text = " ".join(output.split())
        assert process.returncode == 2 and "host job-pod-7f9c pid 1" in text and "--break-lock" in text, output
        process = sn5dask_cli(*args, "--break-lock", env=env)
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, output
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="locks", Prefix="out/")["Contents"]]
        assert "out/AOI_99_Synthetic/manifest.json" in keys and "out/AOI_99_Synthetic/.sn5dask.lock" not in keys


def test_a_changed_run_leaves_no_output_its_records_do_not_list(client, tmp_path) -> None:
    """OUT, the manifest, folds.csv and the STAC catalog agree after every run: a re-run
    with other parameters (--overwrite) removes the GeoTIFFs, items and collection the
    new run does not make; a chip whose input is gone loses its outputs; a chip whose
    label turns bad keeps the RGB it still lists and loses its masks; the run says so."""
    import shutil

    import sn5dask
    from sn5dask.config import load_config
    from sn5dask.outputs.validate import validate_output
    from sn5dask.synthetic import make_synthetic_aoi

    aoi = make_synthetic_aoi(tmp_path / "in", n_chips=5, size=64, seed=4, with_edge_cases=False)
    out = tmp_path / "out"
    folder = out / "AOI_99_Synthetic"
    notices: list[str] = []

    from sn5dask.runner.report import LogReporter

    class Notes(LogReporter):
        def notice(self, message: str) -> None:
            notices.append(message)

    def run(**options) -> None:
        summary = sn5dask.run(load_config(None, root=str(aoi.root), out=str(out), **options), client=client,
                              reporter=Notes())
        assert summary.aois[0].counts.get("ok", 0) >= 1
        assert validate_output(str(out)).ok

    def listed() -> set[Path]:
        manifest = json.loads((folder / "manifest.json").read_text())
        paths = {folder / p for e in manifest["chips"].values() for k, p in e["outputs"].items() if k != "zarr"}
        return paths | {folder / "stac" / f"{c}{s}.json" for c, e in manifest["chips"].items()
                        if e["status"] == "ok" and "rgb" in e["outputs"]
                        for s in ("", "-label") if s == "" or "binary" in e["outputs"]}

    def tifs_and_items() -> set[Path]:
        return {p for p in folder.rglob("*") if p.suffix in (".tif", ".json")
                and p.parent.name != "AOI_99_Synthetic" and ".zarr" not in str(p)}

    run(formats="geotiff,zarr")
    assert tifs_and_items() == listed() and len(listed()) == 5 * 5 + 5 * 2

    # the input of chip 3 is gone, the label of chip 1 turns bad
    Path(aoi.images[3]).unlink()
    Path(aoi.labels[1]).write_text("{not json")
    run(formats="geotiff,zarr", overwrite=True)  # the AOI's percentiles changed with its chips
    manifest = json.loads((folder / "manifest.json").read_text())
    assert "chip3" not in manifest["chips"] and manifest["chips"]["chip1"]["status"] == "failed"
    assert tifs_and_items() == listed()
    assert not list(folder.rglob("*chip3*")) and list((folder / "PS-RGB").glob("*chip1.tif"))
    assert not list((folder / "masks").rglob("*chip1.tif"))
    assert "chip1" not in (folder / "folds.csv").read_text() and notices

    # other parameters over it: Zarr only, other bands
    notices.clear()
    run(formats="zarr", bands="7,5,3", overwrite=True)
    assert not tifs_and_items() and not (folder / "collection.json").exists()
    assert not (out / "catalog.json").exists() and any("removed" in n for n in notices)
    assert (folder / "AOI_99_Synthetic.zarr").is_dir()
    run(formats="geotiff", overwrite=True)
    assert not (folder / "AOI_99_Synthetic.zarr").exists() and tifs_and_items() == listed()
    shutil.rmtree(out)


def small_aoi_runs(tmp_path: Path, n_chips: int, seed: int):
    """OUT, its AOI folder, and a maker of run configs over a small synthetic AOI."""
    from sn5dask.config import load_config
    from sn5dask.synthetic import make_synthetic_aoi

    aoi = make_synthetic_aoi(tmp_path / "in", n_chips=n_chips, size=64, seed=seed, with_edge_cases=False)
    out = tmp_path / "out"

    def config(**options):
        return load_config(None, root=str(aoi.root), out=str(out), **options)

    return out, out / "AOI_99_Synthetic", config


def test_a_changed_run_stopped_midway_leaves_nothing_unlisted_once_resumed(client, tmp_path) -> None:
    """A re-run with other parameters (--overwrite: the binary mask only, no more Zarr)
    stopped after its first chip: its manifest carries on what the earlier run made, and
    the resume (the same new parameters, no --overwrite) removes every output that no
    record lists: the continuous masks, the other chips' Zarr store."""
    import sn5dask
    from sn5dask.runner.report import LogReporter

    out, folder, config = small_aoi_runs(tmp_path, n_chips=4, seed=5)

    class StopAfterOneChip(LogReporter):
        def chip_finished(self, aoi: str, result) -> None:
            super().chip_finished(aoi, result)
            raise KeyboardInterrupt  # as Ctrl-C in the client

    assert sn5dask.run(config(formats="geotiff,zarr", masks="binary,continuous"), client=client).exit_code == 0
    continuous = sorted((folder / "masks" / "continuous").glob("*.tif"))
    assert len(continuous) == 4 and (folder / "AOI_99_Synthetic.zarr").is_dir()

    # a plain resume carries on only what its manifest does not list yet: the redone chip's
    # files, and the store and collection (which no chip of a manifest saved at once lists)
    rgb = folder / json.loads((folder / "manifest.json").read_text())["chips"]["chip2"]["outputs"]["rgb"]
    rgb.unlink()
    with pytest.raises(KeyboardInterrupt):
        sn5dask.run(config(formats="geotiff,zarr", masks="binary,continuous"), client=client,
                    reporter=StopAfterOneChip())  # fmt: skip
    superseded = json.loads((folder / "manifest.json").read_text())["superseded"]
    aoi_level = {"AOI_99_Synthetic.zarr", "collection.json"}
    assert len(superseded) == 7 and aoi_level < set(superseded), superseded
    assert all("chip2" in path for path in set(superseded) - aoi_level), superseded
    assert sn5dask.run(config(formats="geotiff,zarr", masks="binary,continuous"), client=client).exit_code == 0

    with pytest.raises(KeyboardInterrupt):
        sn5dask.run(config(formats="geotiff", masks="binary", overwrite=True), client=client,
                    reporter=StopAfterOneChip())  # fmt: skip
    manifest = json.loads((folder / "manifest.json").read_text())
    assert len(manifest["chips"]) == 1 and manifest["params"]["masks"] == ["binary"]
    superseded = set(manifest["superseded"])
    assert {f"masks/continuous/{p.name}" for p in continuous} | {"AOI_99_Synthetic.zarr"} <= superseded
    assert all(p.exists() for p in continuous)  # nothing removed before the run finishes

    assert sn5dask.run(config(formats="geotiff", masks="binary"), client=client).exit_code == 0
    manifest = json.loads((folder / "manifest.json").read_text())
    assert "superseded" not in manifest and len(manifest["chips"]) == 4
    listed = {folder / p for e in manifest["chips"].values() for p in e["outputs"].values()}
    made = {p for p in folder.rglob("*.tif")}
    assert made == listed and len(made) == 4 * 2
    assert not (folder / "AOI_99_Synthetic.zarr").exists()


@pytest.mark.parametrize("stopped, then, gone", [
    (dict(formats="geotiff,zarr", masks="binary"), dict(formats="geotiff"), "AOI_99_Synthetic.zarr"),
    (dict(formats="geotiff"), dict(formats="zarr"), "collection.json"),
])  # fmt: skip
def test_a_changed_run_stopped_before_any_chip_hands_on_the_store_and_collection(
    client, tmp_path, stopped, then, gone
) -> None:
    """A re-run with other parameters stopped before its first chip lists no chip, so its
    manifest alone must say that the earlier run's Zarr store and STAC collection are
    there: the next run with other parameters removes the one it does not make (and a
    folder where an output file would be is left alone)."""
    import sn5dask
    from sn5dask.outputs.validate import validate_output
    from sn5dask.runner.report import LogReporter

    out, folder, config = small_aoi_runs(tmp_path, n_chips=3, seed=6)

    class StopAtStart(LogReporter):
        def aoi_started(self, aoi: str, total: int, already_done: int, already_failed: int) -> None:
            raise KeyboardInterrupt  # as Ctrl-C in the client

    assert sn5dask.run(config(formats="geotiff,zarr", masks="binary,continuous"), client=client).exit_code == 0
    assert (folder / "AOI_99_Synthetic.zarr").is_dir() and (folder / "collection.json").is_file()
    with pytest.raises(KeyboardInterrupt):
        sn5dask.run(config(overwrite=True, **stopped), client=client, reporter=StopAtStart())
    assert gone in json.loads((folder / "manifest.json").read_text())["superseded"]
    (folder / "PS-RGB" / "chip9.tif").mkdir()  # a folder of the user's, named like an output
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["superseded"].append("PS-RGB/chip9.tif")
    (folder / "manifest.json").write_text(json.dumps(manifest))

    assert sn5dask.run(config(overwrite=True, **then), client=client).exit_code == 0
    assert not (folder / gone).exists() and (folder / "PS-RGB" / "chip9.tif").is_dir()
    assert (out / "catalog.json").exists() == ("geotiff" in then["formats"])
    assert validate_output(str(out)).ok


def test_a_resumed_run_writes_the_items_of_chips_done_before_again(client, tmp_path) -> None:
    """Chips done by an earlier run get their STAC items again (deleted, written by an
    older version, or with a fold that moved): the catalog equals a fresh run's."""
    import sn5dask
    from sn5dask.config import load_config
    from sn5dask.synthetic import make_synthetic_aoi

    aoi = make_synthetic_aoi(tmp_path / "in", n_chips=4, size=48, seed=6, with_edge_cases=False)
    out = tmp_path / "out"
    cfg = load_config(None, root=str(aoi.root), out=str(out), formats="geotiff")
    sn5dask.run(cfg, client=client)
    items = {p: p.read_bytes() for p in (out / "AOI_99_Synthetic" / "stac").glob("*.json")}
    (out / "AOI_99_Synthetic" / "stac" / "chip0.json").unlink()
    (out / "AOI_99_Synthetic" / "stac" / "chip1-label.json").write_text("{}")
    again = sn5dask.run(cfg, client=client)
    assert again.aois[0].processed == 0
    assert {p: p.read_bytes() for p in (out / "AOI_99_Synthetic" / "stac").glob("*.json")} == items
