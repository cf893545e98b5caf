"""sn5dask.io.catalog: naming rules on real SpaceNet ids, discovery, pairing, problems."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from sn5dask.errors import NoChipsError
from sn5dask.io.catalog import (
    AOI_NAME_RE,
    CHIP_ID_RE,
    aoi_from_name,
    chip_id_from_name,
    discover,
    output_name,
)
from tests.conftest import REFDATA, write_tif

TABLES = REFDATA / "SpaceNet_Optimized_Routing_Solutions" / "ikibardin" / "spacenet5" / "tables"


def real_ids() -> list[dict[str, str]]:
    with (TABLES / "folds_v4.csv").open() as f:
        return list(csv.DictReader(f))


def test_aoi_and_chip_id_of_every_real_training_id() -> None:
    rows = real_ids()
    assert len(rows) == 5149
    for row in rows:
        name = row["id"] + ".tif"
        assert aoi_from_name(name) == row["city_id"]
        chip_id = chip_id_from_name(name)
        assert CHIP_ID_RE.match(chip_id) and row["id"].endswith("_" + chip_id)
    assert {r["city_id"] for r in rows} == {
        "AOI_2_Vegas", "AOI_3_Paris", "AOI_4_Shanghai", "AOI_5_Khartoum", "AOI_7_Moscow", "AOI_8_Mumbai"}


def test_real_test_ids_with_multi_word_city() -> None:
    with (TABLES / "test.csv").open() as f:
        ids = [row["id"] for row in csv.DictReader(f)]
    cities = {aoi_from_name(i + ".tif") for i in ids}
    assert cities == {"AOI_7_Moscow", "AOI_8_Mumbai", "AOI_9_San_Juan"}


@pytest.mark.parametrize(
    ("name", "aoi", "chip"),
    [
        ("SN5_roads_train_AOI_7_Moscow_PS-MS_chip0.tif", "AOI_7_Moscow", "chip0"),
        ("SN5_roads_train_AOI_7_Moscow_geojson_roads_speed_chip0.geojson", "AOI_7_Moscow", "chip0"),
        ("SN3_roads_train_AOI_2_Vegas_geojson_roads_img1.geojson", "AOI_2_Vegas", "img1"),
        ("AOI_2_Vegas_img990.geojson", "AOI_2_Vegas", "img990"),
        ("SN5_roads_test_AOI_10_Dar_Es_Salaam_PS-RGB_chip12.tif", "AOI_10_Dar_Es_Salaam", "chip12"),
        ("RGB-PanSharpen_AOI_2_Vegas_img0.tif", "AOI_2_Vegas", "img0"),
        ("weird name (1).tif", None, "weird_name_1"),
        ("../../etc/passwd.tif", None, "passwd"),
    ],
)
def test_naming_rules(name: str, aoi: str | None, chip: str) -> None:
    assert aoi_from_name(name) == aoi
    assert chip_id_from_name(name) == chip


def test_output_name() -> None:
    assert output_name("SN5_roads_train_AOI_7_Moscow_PS-MS_chip0.tif") == (
        "SN5_roads_train_AOI_7_Moscow_PS-RGB_chip0.tif")
    assert output_name("RGB-PanSharpen_AOI_2_Vegas_img0.tif") == "RGB-PanSharpen_AOI_2_Vegas_img0.tif"
    assert "/" not in output_name("a/../b c.tif")


def tiny(path: Path) -> None:
    write_tif(path, np.ones((8, 4, 4), np.uint16))


def test_discover_pairs_reports_orphans_and_duplicates(tmp_path: Path) -> None:
    m = tmp_path / "AOI_7_Moscow"
    for i in (0, 1, 2, 10):
        tiny(m / "PS-MS" / f"SN5_roads_train_AOI_7_Moscow_PS-MS_chip{i}.tif")
    (m / "geojson_roads_speed").mkdir()
    (m / "geojson_roads").mkdir()
    for i in (0, 1, 7):
        (m / "geojson_roads_speed" / f"SN5_roads_train_AOI_7_Moscow_geojson_roads_speed_chip{i}.geojson").write_text("{}")
    (m / "geojson_roads" / "SN5_roads_train_AOI_7_Moscow_geojson_roads_chip1.geojson").write_text("{}")
    (m / "geojson_roads" / "SN5_roads_train_AOI_7_Moscow_geojson_roads_chip2.geojson").write_text("{}")
    # Same (AOI, chip id) twice: a copy with another prefix.
    tiny(m / "PS-MS" / "SN5_roads_test_AOI_7_Moscow_PS-MS_chip10.tif")
    v = tmp_path / "AOI_2_Vegas"
    tiny(v / "PS-MS" / "SN3_roads_train_AOI_2_Vegas_PS-MS_img5.tif")

    catalogs = discover(str(tmp_path))
    assert [c.aoi for c in catalogs] == ["AOI_2_Vegas", "AOI_7_Moscow"]
    moscow = catalogs[1]
    assert [c.chip_id for c in moscow.chips] == ["chip0", "chip1", "chip2", "chip10", "chip10"]
    by_id = {c.chip_id: c for c in moscow.chips}
    assert by_id["chip1"].label.endswith("geojson_roads_speed_chip1.geojson")  # speed wins
    assert by_id["chip2"].label.endswith("geojson_roads/SN5_roads_train_AOI_7_Moscow_geojson_roads_chip2.geojson")
    assert moscow.orphan_labels == [str(m / "geojson_roads_speed" / "SN5_roads_train_AOI_7_Moscow_geojson_roads_speed_chip7.geojson")]
    duplicates = [c for c in moscow.chips if c.chip_id == "chip10"]
    assert all(c.problem and "SN5_roads_test_" in c.problem and "SN5_roads_train_" in c.problem for c in duplicates)
    assert by_id["chip0"].problem is None and by_id["chip0"].output_name.endswith("PS-RGB_chip0.tif")
    assert [c.chip_id for c in moscow.images_without_labels] == ["chip10", "chip10"]
    assert [c.aoi for c in discover(str(tmp_path), ["AOI_2_Vegas"])] == ["AOI_2_Vegas"]


def test_root_that_is_one_aoi_folder(tmp_path: Path) -> None:
    tiny(tmp_path / "PS-MS" / "SN5_roads_train_AOI_8_Mumbai_PS-MS_chip5.tif")
    [catalog] = discover(str(tmp_path))
    assert catalog.aoi == "AOI_8_Mumbai" and catalog.chips[0].label is None


def test_folder_name_is_the_aoi_when_file_names_say_nothing(tmp_path: Path) -> None:
    tiny(tmp_path / "my city!" / "PS-MS" / "tile_003.tif")
    [catalog] = discover(str(tmp_path))
    assert catalog.aoi == "my_city" and catalog.chips[0].chip_id == "tile_003"


def test_no_chips_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(NoChipsError, match="no chips found"):
        discover(str(tmp_path))
    tiny(tmp_path / "AOI_2_Vegas" / "PS-MS" / "SN3_roads_train_AOI_2_Vegas_PS-MS_img1.tif")
    with pytest.raises(NoChipsError, match="AOI_5_Khartoum not found"):
        discover(str(tmp_path), ["AOI_5_Khartoum"])


def test_aoi_names_found_are_safe() -> None:
    assert AOI_NAME_RE.match("AOI_9_San_Juan")
    assert not AOI_NAME_RE.match("AOI_9_../x")
