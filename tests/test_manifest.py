"""sn5dask.outputs.manifest: the typed model, its parser's errors, and the resume rules."""

from __future__ import annotations

import json

import pytest

from sn5dask.errors import ManifestError, ParamsChangedError
from sn5dask.io.catalog import ChipRecord
from sn5dask.outputs.layout import AoiLayout
from sn5dask.outputs.manifest import ChipEntry, Manifest, OutputState

PARAMS = {"profile": "sn5dask", "bands": [5, 3, 2], "percentiles": [2.0, 98.0],
          "aoi_percentiles": {"5": [1.0, 9.0]}}
LAYOUT = AoiLayout("/out", "AOI_7_Moscow")


def manifest(**chips) -> Manifest:
    return Manifest(aoi="AOI_7_Moscow", params=PARAMS, chips={k: ChipEntry(**v) for k, v in chips.items()})


def test_round_trip_keeps_every_field() -> None:
    m = manifest(chip0={"status": "ok", "outputs": {"rgb": "PS-RGB/a.tif", "zarr": "AOI_7_Moscow.zarr#0"},
                        "zero_fraction": {"5": 0.1}, "percentiles": {"5": [1.0, None]}, "extra": 3})
    document = json.loads(json.dumps(m.as_json()))
    assert document["counts"] == {"ok": 1, "skipped": 0, "failed": 0}
    again = Manifest.parse(document, "m.json")
    assert again.chips == m.chips and again.params == PARAMS
    assert again.chips["chip0"].model_extra == {"extra": 3}


@pytest.mark.parametrize("document, problem", [
    ([1, 2], "a JSON object was expected"),
    ({"params": {}}, "aoi: Field required"),
    ({"aoi": "A", "params": {}, "chips": [1]}, "chips: Input should be a valid dictionary"),
    ({"aoi": "A", "params": {}, "chips": {"c": {"status": "done"}}}, "chips.c.status"),
    ({"aoi": "A", "params": {}, "chips": {"c": {"status": "ok", "outputs": {"rgb": 7}}}}, "chips.c.outputs.rgb"),
    ({"aoi": "A", "params": "x"}, "params"),
])
def test_wrong_shapes_are_one_clear_error(document, problem) -> None:
    with pytest.raises(ManifestError, match="m.json: ") as info:
        Manifest.parse(document, "m.json")
    assert problem in str(info.value)


def chip(chip_id: str, image_stamp: str = "10:1", label_stamp: str | None = "5:1") -> ChipRecord:
    return ChipRecord("AOI_7_Moscow", chip_id, f"/in/{chip_id}.tif", f"/in/{chip_id}.geojson",
                      f"{chip_id}.tif", image_stamp=image_stamp, label_stamp=label_stamp)


def entry(chip_id: str, **fields) -> dict:
    return {"status": "ok", "image": f"/in/{chip_id}.tif", "label": f"/in/{chip_id}.geojson",
            "image_stamp": "10:1", "label_stamp": "5:1", **fields}


def test_done_entries_are_verified_not_trusted() -> None:
    m = manifest(
        ok=entry("ok", outputs={"rgb": "PS-RGB/a.tif", "zarr": "AOI_7_Moscow.zarr#0"}, output_bytes={"rgb": 100}),
        truncated=entry("truncated", outputs={"rgb": "PS-RGB/b.tif"}, output_bytes={"rgb": 100}),
        failed={**entry("failed"), "status": "failed"},
        skipped={**entry("skipped", outputs={"binary": "masks/binary/d.tif"}, output_bytes={"binary": 7}),
                 "status": "skipped"},
        escaping=entry("escaping", outputs={"rgb": "../../etc/passwd"}, output_bytes={"rgb": 100}),
        badref=entry("badref", outputs={"zarr": "AOI_7_Moscow.zarr#x"}),
        nochunk=entry("nochunk", outputs={"zarr": "AOI_7_Moscow.zarr#5"}),
        image_changed=entry("image_changed"),
        label_changed=entry("label_changed"),
        renamed=entry("renamed"),
        old_version={k: v for k, v in entry("old_version").items() if not k.endswith("stamp")},
    )
    chips = {c.chip_id: c for c in [chip(i) for i in m.chips if i not in ("image_changed", "label_changed", "renamed")]}
    chips["image_changed"] = chip("image_changed", image_stamp="10:2")
    chips["label_changed"] = chip("label_changed", label_stamp="6:1")
    chips["renamed"] = ChipRecord("AOI_7_Moscow", "renamed", "/in/other.tif", "/in/renamed.geojson", "x.tif",
                                  image_stamp="10:1", label_stamp="5:1")
    state = OutputState(
        file_sizes={"/out/AOI_7_Moscow/PS-RGB/a.tif": 100, "/out/AOI_7_Moscow/PS-RGB/b.tif": 50,
                    "/out/AOI_7_Moscow/masks/binary/d.tif": 7},
        zarr_chips=frozenset({0}),
    )
    done = m.done_entries(PARAMS, chips, LAYOUT, state)
    assert sorted(done) == ["ok", "skipped"]
    assert m.done_entries({**PARAMS, "bands": [7, 5, 3]}, chips, LAYOUT, state) == {}


def test_malformed_zarr_reference_is_a_manifest_error() -> None:
    entry = ChipEntry(status="ok", image="i.tif", outputs={"zarr": "store#-1"})
    with pytest.raises(ManifestError, match="i.tif: 'store#-1' is not a Zarr reference"):
        entry.zarr_ref()


def test_changed_params_name_each_change_and_blame_chips_only_when_only_they_changed() -> None:
    m = manifest()
    m.check_params(PARAMS)
    with pytest.raises(ParamsChangedError) as info:
        m.check_params({**PARAMS, "percentiles": [1.0, 99.0], "aoi_percentiles": {"5": [0.0, 9.5]}})
    text = str(info.value)
    assert "percentiles: [2.0, 98.0] -> [1.0, 99.0]" in text and "chips changed" not in text
    with pytest.raises(ParamsChangedError, match=r"\(the AOI's chips changed since that run\)"):
        m.check_params({**PARAMS, "aoi_percentiles": {"5": [0.0, 9.5]}})


def test_earlier_outputs_are_only_paths_of_sn5dasks_output_shapes() -> None:
    """What a manifest says earlier runs made, and may be removed at the end of a run:
    never the manifest, stats, the lock, a folder, a chunk or a path leaving the AOI folder,
    whatever a damaged or edited manifest lists."""
    from sn5dask.outputs.stale import earlier_outputs

    m = manifest(chip0={"status": "ok", "outputs": {"rgb": "PS-RGB/a.tif", "binary": "masks/binary/a.tif",
                                                    "zarr": "AOI_7_Moscow.zarr#0"}},
                 chip1={"status": "ok", "outputs": {"rgb": "PS-RGB/../manifest.json", "binary": "../in/b.tif"}})
    m.superseded = ["masks/continuous/a.tif", "stac/chip9-label.json", "manifest.json", "stats.json",
                    ".sn5dask.lock", "masks/binary", "PS-RGB/./a.tif", "/etc/passwd", "../x.tif",
                    "AOI_7_Moscow.zarr/rgb/c/0/0/0", "masks/other/a.tif", "collection.json", ""]
    assert earlier_outputs(m, LAYOUT) == [
        "AOI_7_Moscow.zarr", "PS-RGB/a.tif", "collection.json", "masks/binary/a.tif",
        "masks/continuous/a.tif", "stac/chip0-label.json", "stac/chip0.json", "stac/chip1-label.json",
        "stac/chip1.json", "stac/chip9-label.json",
    ]
    assert earlier_outputs(None, LAYOUT) == [] and earlier_outputs(ManifestError("damaged"), LAYOUT) == []


def test_a_damaged_superseded_list_loses_its_entries_not_the_manifest() -> None:
    document = json.loads(json.dumps(manifest(chip0={"status": "ok"}).as_json()))
    for value, kept in ((None, []), ("PS-RGB/a.tif", []), ([1, "PS-RGB/a.tif", None], ["PS-RGB/a.tif"])):
        document["superseded"] = value
        assert Manifest.parse(document, "m.json").superseded == kept
