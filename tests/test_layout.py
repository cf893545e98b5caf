"""sn5dask.outputs.layout: every output path, the Zarr reference format, refusal to leave OUT."""

from __future__ import annotations

import pytest

from sn5dask.outputs.layout import AoiLayout, ZarrRef, layouts_under, output_name


def test_every_path_of_an_aoi() -> None:
    layout = AoiLayout("s3://bucket/out", "AOI_7_Moscow")
    name = output_name("SN5_roads_train_AOI_7_Moscow_PS-MS_chip0.tif")
    assert name == "SN5_roads_train_AOI_7_Moscow_PS-RGB_chip0.tif"
    assert layout.url(layout.rgb_relpath(name)) == f"s3://bucket/out/AOI_7_Moscow/PS-RGB/{name}"
    assert layout.mask_relpath("binned", name) == f"masks/binned/{name}"
    assert layout.zarr_url == "s3://bucket/out/AOI_7_Moscow/AOI_7_Moscow.zarr"
    assert str(layout.zarr_ref(12)) == "AOI_7_Moscow.zarr#12"
    assert layout.manifest_url.endswith("/AOI_7_Moscow/manifest.json")
    assert layout.stats_url.endswith("/AOI_7_Moscow/stats.json")
    assert layout.lock_url.endswith("/AOI_7_Moscow/.sn5dask.lock")
    assert layout.chip_log_url("img 9/../x") == "s3://bucket/out/AOI_7_Moscow/logs/img_9_x.log"
    local = AoiLayout("/data/out", "AOI_2_Vegas")
    assert local.url("PS-RGB/a.tif") == "/data/out/AOI_2_Vegas/PS-RGB/a.tif"


@pytest.mark.parametrize("relpath", ["../x.tif", "/etc/passwd", "PS-RGB/../../x", "", None])
def test_paths_that_leave_the_aoi_folder_are_refused(relpath) -> None:
    with pytest.raises(ValueError):
        AoiLayout("/out", "AOI_7_Moscow").url(relpath)


@pytest.mark.parametrize("text", ["a.zarr#", "a.zarr#x", "a.zarr#-1", "a#1", "../a.zarr#1", 3, "a.zarr#1#2"])
def test_zarr_references_parse_strictly(text) -> None:
    with pytest.raises(ValueError):
        ZarrRef.parse(text)
    assert ZarrRef.parse("AOI_7_Moscow.zarr#40") == ZarrRef("AOI_7_Moscow.zarr", 40)


def test_layouts_under_finds_aoi_folders_and_an_aoi_folder_itself(tmp_path) -> None:
    for aoi in ("AOI_2_Vegas", "AOI_7_Moscow"):
        (tmp_path / aoi).mkdir()
        (tmp_path / aoi / "manifest.json").write_text("{}")
    (tmp_path / "other").mkdir()
    assert layouts_under(str(tmp_path)) == [AoiLayout(str(tmp_path), "AOI_2_Vegas"),
                                            AoiLayout(str(tmp_path), "AOI_7_Moscow")]
    assert layouts_under(str(tmp_path / "AOI_2_Vegas")) == [AoiLayout(str(tmp_path), "AOI_2_Vegas")]
    assert layouts_under(str(tmp_path / "other")) == []


def test_a_local_lock_is_held_by_a_live_process_only(tmp_path) -> None:
    """An OS file lock (filelock): a second run is refused, naming the holder, while the
    holder lives; once the holder is killed the kernel has released it, and the next run
    takes it without anyone deleting a file."""
    import json as _json

    from sn5dask.errors import LockError
    from sn5dask.io.lock import RunLock
    from tests.procs import lock_held_elsewhere

    url = str(tmp_path / "AOI" / ".sn5dask.lock")
    with lock_held_elsewhere(url) as holder:
        assert _json.loads((tmp_path / "AOI" / ".sn5dask.lock").read_text())["pid"] == holder.pid
        for attempt in (RunLock(url).acquire, RunLock(url).check_free):
            with pytest.raises(LockError, match=f"pid {holder.pid}"):
                attempt()
    with RunLock(url) as lock:  # the holder was SIGKILLed: free
        assert _json.loads((tmp_path / "AOI" / ".sn5dask.lock").read_text()) == lock.holder
        assert [p.name for p in (tmp_path / "AOI").iterdir()] == [".sn5dask.lock"]
    RunLock(url).check_free()
