"""The `sn5dask` CLI: exit codes, `stats --json`, `demo`, `validate` findings."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from typer.testing import CliRunner

from sn5dask.cli import app

AOI = "AOI_99_Synthetic"
runner = CliRunner()


@pytest.fixture(autouse=True)
def use_test_cluster(client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", client.scheduler.address)


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_stats_json_shape_and_values(small_aoi) -> None:
    result = invoke("stats", small_aoi.root, "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    stats = document[AOI]
    assert set(stats) == {"bands", "percentiles", "values", "valid_pixels"}
    assert stats["bands"] == [5, 3, 2] and stats["percentiles"] == [2.0, 98.0]
    with rasterio.open(small_aoi.images[0]) as src:
        assert src.count == 8
    values = np.concatenate([rasterio.open(p).read(5).ravel() for p in small_aoi.images])
    values = values[values > 0]
    assert stats["values"]["5"] == list(np.percentile(values, [2, 98]))
    assert stats["valid_pixels"]["5"] == values.size


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--profile", "cresi", "--stretch", "aoi"], "--stretch aoi is refused"),
        (["--percentiles", "2"], "percentiles"),
        (["--bands", "0,1"], "1-based"),
        (["--masks", "roads"], "unknown mask kind"),
        (["--compress", "jpeg"], "compress"),
    ],
)
def test_bad_arguments_exit_2(small_aoi, tmp_path: Path, args: list[str], message: str) -> None:
    import gc

    result = invoke("run", small_aoi.root, "--out", tmp_path, *args)
    assert result.exit_code == 2 and message in result.output
    assert gc.isenabled()


def test_no_chips_exits_2(tmp_path: Path) -> None:
    result = invoke("run", tmp_path, "--out", tmp_path / "out")
    assert result.exit_code == 2 and "no chips found" in result.output


def test_run_with_a_failed_chip_exits_1_and_lists_it(small_aoi, tmp_path: Path) -> None:
    import gc

    frozen = gc.get_freeze_count()
    root = tmp_path / "in"
    shutil.copytree(small_aoi.root, root)
    bad = root / AOI / "PS-MS" / f"SN5_roads_train_{AOI}_PS-MS_chip3.tif"
    bad.write_bytes(b"not a tiff")
    result = invoke("run", root, "--out", tmp_path / "out", "--formats", "geotiff")
    assert result.exit_code == 1
    assert "failed" in result.output and "chip3" in result.output and "cannot be read" in result.output
    # code that calls the CLI's `app` keeps its collector as it was (only the `sn5dask`
    # command's own process pauses it while a run starts, and freezes it at exit)
    assert gc.isenabled() and gc.get_freeze_count() == frozen


def test_config_file_equals_flags(small_aoi, tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(f"root: {small_aoi.root}\nout: {tmp_path / 'a'}\nmasks: binary\nformats: [geotiff]\n")
    assert invoke("run", "--config", config).exit_code == 0
    flags = invoke("run", small_aoi.root, "--out", tmp_path / "b", "--masks", "binary", "--formats", "geotiff")
    assert flags.exit_code == 0
    for path in sorted((tmp_path / "a").rglob("*.tif")):
        twin = tmp_path / "b" / path.relative_to(tmp_path / "a")
        assert np.array_equal(rasterio.open(path).read(), rasterio.open(twin).read())
    bad = tmp_path / "bad.yaml"
    bad.write_text("root: x\nout: y\nbuffer_metres: 3\n")
    result = invoke("run", "--config", bad)
    assert result.exit_code == 2 and "buffer_metres" in result.output


def test_demo_then_validate_then_break_things(tmp_path: Path) -> None:
    result = invoke("demo", tmp_path, "--chips", "4", "--size", "64")
    assert result.exit_code == 0, result.output
    out = tmp_path / "output"
    ok = invoke("validate", out)
    assert ok.exit_code == 0 and "validated 4 chips" in ok.output and ": OK" in ok.output

    masks = out / AOI / "masks"
    # 1. a truncated output
    truncated = masks / "binary" / f"SN5_roads_train_{AOI}_PS-RGB_chip0.tif"
    truncated.write_bytes(truncated.read_bytes()[:300])
    # 2. a georeferencing mismatch
    shifted = masks / "continuous" / f"SN5_roads_train_{AOI}_PS-RGB_chip1.tif"
    with rasterio.open(shifted, "r+") as dst:
        dst.transform = dst.transform @ Affine.translation(1, 0)
    # 3. a missing chip
    manifest_path = out / AOI / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["chips"]["chip2"]
    manifest_path.write_text(json.dumps(manifest))
    broken = invoke("validate", out)
    assert broken.exit_code == 1
    text = " ".join(broken.output.split())
    assert "chip0" in text and "corrupted or truncated" in text
    assert "chip1" in text and "georeferencing mismatch: transform" in text
    assert "chip2: missing chip" in text


def test_validate_refuses_a_folder_without_manifest(tmp_path: Path) -> None:
    result = invoke("validate", tmp_path)
    assert result.exit_code == 2 and "no manifest.json" in result.output
