"""S3 end to end (slow): chips and labels read from a moto bucket on 127.0.0.1, GeoTIFFs
and the Zarr store written to a bucket, opened back and validated; no credential leaks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

from tests.procs import moto_server, real_cluster, sn5dask_cli, upload_tree

pytestmark = pytest.mark.slow
AOI = "AOI_99_Synthetic"


@pytest.fixture(scope="module")
def s3_env():
    with moto_server() as env:
        yield env


def upload(env: dict[str, str], local_root: Path, bucket: str, prefix: str, acl: str | None = None) -> None:
    upload_tree(env, local_root, bucket, prefix, acl)


def test_s3_in_s3_out_equals_local(small_aoi, s3_env, tmp_path, monkeypatch) -> None:
    upload(s3_env, small_aoi.root, "spacenet", "in")
    with real_cluster(2, env=s3_env) as cluster:
        process = sn5dask_cli("run", "s3://spacenet/in", "--out", "s3://spacenet/out",
                              "--scheduler", cluster.address, env=s3_env)
        output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    local = sn5dask_cli("run", small_aoi.root, "--out", tmp_path / "local", "--workers", "1")
    assert local.wait(300) == 0

    for key, value in s3_env.items():
        monkeypatch.setenv(key, value)
    import fsspec
    import xarray as xr

    from sn5dask.io.files import storage_options

    fs = fsspec.filesystem("s3", **storage_options("s3://x"))
    manifest_text = fs.cat_file("spacenet/out/AOI_99_Synthetic/manifest.json").decode()
    stats_text = fs.cat_file("spacenet/out/AOI_99_Synthetic/stats.json").decode()
    secret = s3_env["AWS_SECRET_ACCESS_KEY"]
    assert secret not in output and secret not in manifest_text and secret not in stats_text
    manifest = json.loads(manifest_text)
    assert manifest["counts"] == {"ok": 6, "skipped": 0, "failed": 0}
    from sn5dask.io.raster import gdal_env

    for chip_id, entry in manifest["chips"].items():
        for kind, relpath in entry["outputs"].items():
            if kind == "zarr":
                continue
            with gdal_env(), rasterio.open(f"s3://spacenet/out/{AOI}/{relpath}") as remote, \
                    rasterio.open(tmp_path / "local" / AOI / relpath) as here:
                assert np.array_equal(remote.read(), here.read()), (chip_id, kind)
                assert remote.transform == here.transform and remote.crs == here.crs
    # chunks=None: read here, not on a dask cluster some other test may have left as default
    remote_ds = xr.open_zarr(f"s3://spacenet/out/{AOI}/{AOI}.zarr",
                             storage_options=storage_options("s3://x"), chunks=None)
    local_ds = xr.open_zarr(tmp_path / "local" / AOI / f"{AOI}.zarr", chunks=None)
    for name in local_ds.data_vars:
        assert remote_ds[name].dtype == (np.int32 if name == "spatial_ref" else np.uint8)
        assert np.array_equal(remote_ds[name].values, local_ds[name].values), name
    assert not [p for p in fs.find("spacenet/out") if p.endswith(".partial") or p.endswith(".lock")]
    # the STAC catalog and folds are written on S3 too, the same documents as locally
    for relpath in ("catalog.json", f"{AOI}/collection.json", f"{AOI}/stac/chip0-label.json", f"{AOI}/folds.csv"):
        assert fs.cat_file(f"spacenet/out/{relpath}") == (tmp_path / "local" / relpath).read_bytes(), relpath

    validate = sn5dask_cli("validate", "s3://spacenet/out", env=s3_env)
    text, _ = validate.communicate(timeout=120)
    assert validate.returncode == 0 and ": OK" in text, text


def test_s3_stats_cli(small_aoi, s3_env) -> None:
    upload(s3_env, small_aoi.root, "statsbucket", "data")
    process = sn5dask_cli("stats", "s3://statsbucket/data", "--json", "--workers", "1", env=s3_env)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    values = json.loads(output[output.index("{"):])[AOI]["values"]
    chips = [rasterio.open(p).read(5).ravel() for p in small_aoi.images]
    valid = np.concatenate(chips)
    assert values["5"] == list(np.percentile(valid[valid > 0], [2, 98]))


def test_open_aoi_on_s3_reads_headers_on_the_workers_under_the_gdal_env(small_aoi, s3_env, monkeypatch) -> None:
    """open_aoi over s3:// reads through the same GDAL/S3 settings as the chip tasks: only
    AWS_ENDPOINT_URL is set, GDAL's own variables are derived (no AWS_S3_ENDPOINT)."""
    upload(s3_env, small_aoi.root, "openaoi", "in")
    for key, value in s3_env.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_S3_ENDPOINT", "AWS_HTTPS", "AWS_VIRTUAL_HOSTING"):
        monkeypatch.delenv(key, raising=False)
    import dask

    import sn5dask

    # Threads in this process (another test's cluster may be dask's default scheduler, and
    # its workers do not have this environment).
    with dask.config.set(scheduler="threads"):
        aoi = sn5dask.open_aoi("s3://openaoi/in", AOI, bands=[5, 3, 2])
        assert aoi.shape == (6, 3, 96, 96) and aoi.attrs["unreadable_chips"] == {}
        pixels = aoi[2].values
    with rasterio.open(small_aoi.images[2]) as src:
        assert np.array_equal(pixels, src.read([5, 3, 2]))
        chip = sn5dask.chip_dataarray(aoi, "chip2")
        assert chip.rio.transform() == src.transform and chip.rio.crs == src.crs


def test_keys_with_hash_and_question_mark_are_read(small_aoi, s3_env, tmp_path) -> None:
    """`#` and `?` are ordinary characters of an S3 key: not a URL fragment or query."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                      aws_access_key_id=s3_env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=s3_env["AWS_SECRET_ACCESS_KEY"])
    s3.create_bucket(Bucket="oddkeys")
    pairs = list(zip(small_aoi.images[:2], small_aoi.labels[:2], strict=True))
    for i, (image, label) in enumerate(pairs):
        s3.upload_file(str(image), "oddkeys", f"in/Vegas #1?/PS-MS/SN5 v#2?_PS-MS_chip{i}.tif")
        s3.upload_file(str(label), "oddkeys", f"in/Vegas #1?/geojson_roads_speed/SN5 v#2?_geojson_roads_speed_chip{i}.geojson")
    process = sn5dask_cli("run", "s3://oddkeys/in", "--out", tmp_path / "out", "--workers", "1",
                          "--formats", "geotiff", env=s3_env)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    manifest = json.loads((tmp_path / "out" / "Vegas_1" / "manifest.json").read_text())
    assert manifest["counts"] == {"ok": 2, "skipped": 0, "failed": 0}
    for i, (image, _) in enumerate(pairs):
        entry = manifest["chips"][f"chip{i}"]
        assert entry["image"] == f"s3://oddkeys/in/Vegas #1?/PS-MS/SN5 v#2?_PS-MS_chip{i}.tif"
        assert {"rgb", "binary", "multichannel"} <= set(entry["outputs"])
        with rasterio.open(image) as src, rasterio.open(tmp_path / "out" / "Vegas_1" / entry["outputs"]["rgb"]) as rgb:
            assert rgb.transform == src.transform and rgb.read().any()


NO_CREDENTIALS = {
    # nothing in botocore's chain: no keys, no profile files, no instance-role probe
    "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_SESSION_TOKEN": "",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/credentials", "AWS_CONFIG_FILE": "/nonexistent/config",
    "AWS_EC2_METADATA_DISABLED": "true", "AWS_PROFILE": "",
}


def without_credentials(env: dict[str, str], endpoint: str) -> dict[str, str]:
    import os

    environment = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    environment.update({k: v for k, v in NO_CREDENTIALS.items() if v})
    environment.update(AWS_ENDPOINT_URL=endpoint, AWS_DEFAULT_REGION=env["AWS_DEFAULT_REGION"])
    return environment


def test_no_credentials_reads_a_public_bucket_anonymously(small_aoi, s3_env, tmp_path) -> None:
    upload(s3_env, small_aoi.root, "public", "in", acl="public-read")  # as SpaceNet's bucket
    env = without_credentials(s3_env, s3_env["AWS_ENDPOINT_URL"])
    process = sn5dask_cli("run", "s3://public/in", "--out", tmp_path / "out", "--workers", "1",
                          "--formats", "geotiff", env=env)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    manifest = json.loads((tmp_path / "out" / AOI / "manifest.json").read_text())
    assert manifest["counts"]["ok"] == 6


def test_no_credentials_and_a_private_bucket_is_one_line(small_aoi, s3_env, tmp_path) -> None:
    from tests.procs import FaultyProxy

    upload(s3_env, small_aoi.root, "private", "in")
    unsigned = lambda headers: "Authorization" not in headers  # noqa: E731
    with FaultyProxy(s3_env["AWS_ENDPOINT_URL"], lambda *a: False, deny=unsigned) as proxy:
        env = without_credentials(s3_env, proxy.url)
        process = sn5dask_cli("run", "s3://private/in", "--out", tmp_path / "out", env=env)
        output, _ = process.communicate(timeout=300)
    lines = [line for line in output.splitlines() if line.strip()]
    assert process.returncode == 2 and len(lines) == 1 and "Traceback" not in output, output
    text = " ".join(output.split())
    assert "s3://private/in: access denied when read anonymously" in text
    assert "No AWS credentials were found in the AWS_ACCESS_KEY_ID" in text and "aws configure" in text


def served_per_chip(small_aoi, s3_env, tmp_path, bucket: str, extra_env: dict[str, str]) -> list[float]:
    """Bytes of each chip image served by S3 during a run, over the image's size."""
    from tests.procs import FaultyProxy

    upload(s3_env, small_aoi.root, bucket, "in")
    with FaultyProxy(s3_env["AWS_ENDPOINT_URL"], lambda *a: False) as proxy:
        env = {**s3_env, "AWS_ENDPOINT_URL": proxy.url, **extra_env}
        process = sn5dask_cli("run", f"s3://{bucket}/in", "--out", tmp_path / bucket, "--workers", "2",
                              "--formats", "geotiff", env=env)
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, output
        served = dict(proxy.bytes_served)
    ratios = []
    for image in small_aoi.images:
        key = f"/{bucket}/in/{image.relative_to(small_aoi.root)}"
        ratios.append(served.get(key, 0) / image.stat().st_size)
    return ratios


def test_each_s3_byte_crosses_the_network_once(small_aoi, s3_env, tmp_path) -> None:
    """The scan copies each chip to its worker; the write task runs there and reads it."""
    once = served_per_chip(small_aoi, s3_env, tmp_path, "once", {})
    assert all(0.99 <= r <= 1.05 for r in once), once
    # Without the copies both passes read S3. GDAL's own in-process cache would spare the
    # second read when one worker happens to do both passes of a small chip (never for a
    # 27 MB SpaceNet chip: the cache holds 16 MB), so it is off here to make that certain.
    no_copies = {"DASK_SN5DASK__CHIP_CACHE_BYTES": "0", "CPL_VSIL_CURL_NON_CACHED": "/vsis3/twice"}
    twice = served_per_chip(small_aoi, s3_env, tmp_path, "twice", no_copies)
    assert all(r >= 1.9 for r in twice), twice
    for name in ("twice",):  # the outputs are the same either way
        for rgb in sorted((tmp_path / "once" / AOI / "PS-RGB").glob("*.tif")):
            twin = tmp_path / name / AOI / "PS-RGB" / rgb.name
            assert np.array_equal(rasterio.open(rgb).read(), rasterio.open(twin).read())


def test_a_long_lived_cluster_never_reads_a_replaced_object_from_an_old_copy(tmp_path, s3_env) -> None:
    """Copies a run's scan keeps are for the objects that run listed, and die with it: a
    no-op re-run leaves none behind, and after the objects are replaced under the same
    names a later run on the same workers makes every RGB from the new bytes."""
    from sn5dask.synthetic import make_synthetic_aoi

    old = make_synthetic_aoi(tmp_path / "old", n_chips=4, size=96, seed=3, with_edge_cases=False)
    new = make_synthetic_aoi(tmp_path / "new", n_chips=4, size=96, seed=5, with_edge_cases=False)
    upload(s3_env, old.root, "replaced", "in")
    env = s3_env
    with real_cluster(1, env=env) as cluster:
        def run(out: Path, *extra: str) -> str:
            process = sn5dask_cli("run", "s3://replaced/in", "--out", out, "--scheduler",
                                  cluster.address, "--formats", "geotiff", *extra, env=env)
            output, _ = process.communicate(timeout=300)
            assert process.returncode == 0, output
            return output

        run(tmp_path / "first")
        assert "already done" in run(tmp_path / "first")  # a scan, and no write pass
        upload(s3_env, new.root, "replaced", "in")  # the same names, other pixels
        run(tmp_path / "second")
    reference = sn5dask_cli("run", new.root, "--out", tmp_path / "reference", "--workers", "1",
                            "--formats", "geotiff")
    assert reference.wait(300) == 0
    rgbs = sorted((tmp_path / "reference" / AOI / "PS-RGB").glob("*.tif"))
    assert len(rgbs) == 4
    for rgb in rgbs:
        made = rasterio.open(tmp_path / "second" / AOI / "PS-RGB" / rgb.name).read()
        assert np.array_equal(made, rasterio.open(rgb).read()), rgb.name


def test_workers_missing_the_s3_endpoint_are_one_line_before_any_chip(small_aoi, s3_env, tmp_path) -> None:
    """Workers started without the client's AWS_ENDPOINT_URL (a MinIO/moto server): one
    line, within seconds, names a worker, the problem and the setting that differs,
    instead of every chip failing after botocore's retries; nothing is written."""
    import time

    upload(s3_env, small_aoi.root, "noendpoint", "in")
    worker_env = {k: v for k, v in s3_env.items() if k != "AWS_ENDPOINT_URL"}
    worker_env["SN5DASK_TEST_CWD"] = str(tmp_path)
    with real_cluster(2, worker_envs=[worker_env, worker_env]) as cluster:
        started = time.monotonic()
        process = sn5dask_cli("run", "s3://noendpoint/in", "--out", "s3://noendpoint/out",
                              "--scheduler", cluster.address, env=s3_env)
        output, _ = process.communicate(timeout=120)
        elapsed = time.monotonic() - started
    message = " ".join(output.split())
    assert process.returncode == 2 and "Traceback" not in output, output
    assert message.startswith("error: --out s3://noendpoint/out: 2 of 2 workers (e.g. tcp://127.0.0.1:"), output
    assert f"AWS_ENDPOINT_URL is {s3_env['AWS_ENDPOINT_URL']} here, not set there" in message, output
    assert s3_env["AWS_SECRET_ACCESS_KEY"] not in output and elapsed < 60
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                      aws_access_key_id=s3_env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=s3_env["AWS_SECRET_ACCESS_KEY"])
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="noendpoint").get("Contents", [])]
    assert keys and all(key.startswith("in/") for key in keys)  # no output, no probe left


def test_validate_runs_its_per_chip_checks_on_the_cluster(small_aoi, s3_env, tmp_path) -> None:
    """`validate --scheduler`: the workers read every output; the client only lists and
    sums. Its own S3 endpoint here answers every GeoTIFF GET with 503 (so a check run on
    the client would fail), and validation is OK with not one such GET; a deleted RGB is
    then found and named."""
    import boto3

    from tests.procs import FaultyProxy

    upload(s3_env, small_aoi.root, "checked", "in")
    with real_cluster(2, env=s3_env) as cluster:
        run = sn5dask_cli("run", "s3://checked/in", "--out", "s3://checked/out", "--scheduler", cluster.address,
                          env=s3_env)
        output, _ = run.communicate(timeout=300)
        assert run.returncode == 0, output
        tif_gets = lambda method, path, n: method == "GET" and ".tif" in path  # noqa: E731
        with FaultyProxy(s3_env["AWS_ENDPOINT_URL"], tif_gets) as proxy:
            client_env = {**s3_env, "AWS_ENDPOINT_URL": proxy.url}
            check = sn5dask_cli("validate", "s3://checked/out", "--scheduler", cluster.address, env=client_env)
            output, _ = check.communicate(timeout=300)
            assert check.returncode == 0 and "OK" in output, output
            assert proxy.failed == 0  # the client read no GeoTIFF
            s3 = boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                              aws_access_key_id=s3_env["AWS_ACCESS_KEY_ID"],
                              aws_secret_access_key=s3_env["AWS_SECRET_ACCESS_KEY"])
            rgb = next(o["Key"] for o in s3.list_objects_v2(Bucket="checked", Prefix=f"out/{AOI}/PS-RGB/")["Contents"])
            s3.delete_object(Bucket="checked", Key=rgb)
            check = sn5dask_cli("validate", "s3://checked/out", "--scheduler", cluster.address, env=client_env)
            output, _ = check.communicate(timeout=300)
    text = " ".join(output.split())
    assert check.returncode == 1 and f"s3://checked/{rgb}: missing output file" in text, output
    assert "1 problem(s)" in text
