"""sn5dask.manifest: the typed model, its parser's errors, and the resume rules."""

from __future__ import annotations

import json

import pytest

from sn5dask.errors import ManifestError, ParamsChangedError
from sn5dask.layout import AoiLayout
from sn5dask.manifest import ChipEntry, Manifest

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


def test_done_entries_need_same_params_and_every_output() -> None:
    m = manifest(
        chip0={"status": "ok", "outputs": {"rgb": "PS-RGB/a.tif", "zarr": "AOI_7_Moscow.zarr#0"}},
        chip1={"status": "ok", "outputs": {"rgb": "PS-RGB/b.tif"}},
        chip2={"status": "failed", "outputs": {}},
        chip3={"status": "skipped", "outputs": {"binary": "masks/binary/d.tif"}},
        chip4={"status": "ok", "outputs": {"rgb": "../../etc/passwd"}},
        chip5={"status": "ok", "outputs": {"zarr": "AOI_7_Moscow.zarr#x"}},
    )
    present = {"/out/AOI_7_Moscow/PS-RGB/a.tif", "/out/AOI_7_Moscow/AOI_7_Moscow.zarr",
               "/out/AOI_7_Moscow/masks/binary/d.tif"}
    done = m.done_entries(PARAMS, LAYOUT, present.__contains__)
    assert sorted(done) == ["chip0", "chip3"]
    assert m.done_entries({**PARAMS, "bands": [7, 5, 3]}, LAYOUT, present.__contains__) == {}


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
