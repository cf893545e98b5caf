"""Training-ready outputs (DESIGN.md §5.1), checked in the tools users read them with:
GDAL/rasterio warping, rioxarray and odc-geo, pandas as CRESI's folds reader, pystac and
the STAC JSON schemas (vendored in tests/data, nothing fetched), xbatcher, and the loader.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
from rasterio.enums import ColorInterp
import xarray as xr
from rasterio.enums import ColorInterp, Resampling
from rasterio.vrt import WarpedVRT

import sn5dask
from sn5dask.config import load_config
from sn5dask.core.encodings import MASK_ENCODINGS

AOI = "AOI_99_Synthetic"
SCHEMAS = Path(__file__).parent / "data" / "stac-schemas"


@pytest.fixture(scope="module")
def made(client, tmp_path_factory):
    """9 chips of 96 px: the last without a label file, the one before with no roads."""
    from sn5dask.synthetic import make_synthetic_aoi

    aoi = make_synthetic_aoi(tmp_path_factory.mktemp("in"), n_chips=9, size=96, seed=21,
                             roads_per_chip=(4, 8))
    out = tmp_path_factory.mktemp("out")
    summary = sn5dask.run(load_config(None, root=str(aoi.root), out=str(out)), client=client)
    assert summary.exit_code == 0
    return aoi, out, json.loads((out / AOI / "manifest.json").read_text())


def rgb_path(out: Path, i: int) -> Path:
    return out / AOI / "PS-RGB" / f"SN5_roads_train_{AOI}_PS-RGB_chip{i}.tif"


# --- 1. 0 means nodata, only nodata --------------------------------------------------------

def test_zero_is_nodata_and_nothing_else(made) -> None:
    aoi, out, _ = made
    for i, image in enumerate(aoi.images):
        with rasterio.open(image) as src:
            source = src.read([5, 3, 2])
        with rasterio.open(rgb_path(out, i)) as dst:
            rgb = dst.read()
            assert dst.nodatavals == (0.0, 0.0, 0.0)
        assert np.array_equal(rgb == 0, source == 0), i  # dark roads are 1, not holes


def test_nodata_aware_bilinear_warp_changes_no_valid_pixel(made) -> None:
    """GDAL's warper (what TorchGeo's RasterDataset reads through) treats 0 as a hole:
    with no valid pixel at 0, a bilinear warp onto the chip's own grid changes nothing."""
    _, out, _ = made
    for i in range(9):
        with rasterio.open(rgb_path(out, i)) as src:
            original = src.read()
            with WarpedVRT(src, resampling=Resampling.bilinear) as vrt:
                warped = vrt.read(out_shape=original.shape, resampling=Resampling.bilinear)
        valid = original > 0
        assert np.array_equal(warped[valid], original[valid]), i


def test_rioxarray_masks_exactly_the_nodata(made) -> None:
    import rioxarray

    aoi, out, _ = made
    masked = rioxarray.open_rasterio(rgb_path(out, 1), masked=True)
    with rasterio.open(aoi.images[1]) as src:
        assert int(masked.isnull().sum()) == int((src.read([5, 3, 2]) == 0).sum()) > 0


# --- 2. encodings carried -------------------------------------------------------------------

def test_band_descriptions_and_colour_interpretation(made) -> None:
    _, out, manifest = made
    outputs = manifest["chips"]["chip0"]["outputs"]
    with rasterio.open(out / AOI / outputs["rgb"]) as src:
        assert src.colorinterp == (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
        assert src.descriptions == ("PS-MS band 5", "PS-MS band 3", "PS-MS band 2")
    with rasterio.open(out / AOI / outputs["multichannel"]) as src:
        assert src.descriptions[1] == "speed 11-20 mph" and src.descriptions[6] == "speed 61+ mph"
        assert src.descriptions[7] == "road"
    with rasterio.open(out / AOI / outputs["binary"]) as src:
        assert src.descriptions == ("road",)
    ds = xr.open_zarr(out / AOI / f"{AOI}.zarr")
    assert ds["mask_multichannel"].attrs["band_descriptions"] == list(MASK_ENCODINGS["multichannel"].bands)
    assert ds["mask_binned"].attrs["description"] == MASK_ENCODINGS["binned"].values
    assert all(v.dtype == np.uint8 for k, v in ds.data_vars.items() if k != "spatial_ref")  # no float promotion
    assert "crs_wkt" in ds["spatial_ref"].attrs and "spatial_ref" not in ds["rgb"].coords


# --- 3. spatial folds in CRESI's format ------------------------------------------------------

def cresi_folds(path: Path, names: list[str]) -> tuple[list[list[str]], list[list[str]]]:
    """CRESI's get_csv_folds, from its documented behaviour: index = image file name, a
    `fold` column, m = max(fold) + 1 folds, train/test lists of file names per fold."""
    df = pd.read_csv(path, index_col=0)
    m = int(df["fold"].max()) + 1
    train, test = [], []
    for fold in range(m):
        test.append([n for n in names if n in df.index and df.loc[n, "fold"] == fold])
        train.append([n for n in names if n in df.index and df.loc[n, "fold"] != fold])
    return train, test


def test_folds_are_listed_chips_with_masks_and_load_in_cresis_logic(made) -> None:
    _, out, manifest = made
    folds_path = out / AOI / "folds.csv"
    names = sorted(p.name for p in (out / AOI / "PS-RGB").glob("*.tif"))
    assert len(names) == 9  # the unlabelled chip keeps its RGB ...
    df = pd.read_csv(folds_path, index_col=0)
    assert list(df.columns) == ["fold"] and len(df) == 8  # ... and stays out of the folds
    assert f"SN5_roads_train_{AOI}_PS-RGB_chip8.tif" not in df.index
    assert sorted(df["fold"].unique()) == [0, 1, 2, 3, 4]
    train, test = cresi_folds(folds_path, names)
    assert len(test) == 5 and sorted(sum(test, [])) == sorted(df.index)
    for fold in range(5):
        for name in train[fold] + test[fold]:
            with rasterio.open(out / AOI / "PS-RGB" / name) as image, \
                    rasterio.open(out / AOI / "masks" / "multichannel" / name) as mask:
                assert image.shape == mask.shape and mask.count == 8
    for chip_id, entry in manifest["chips"].items():
        assert (entry["fold"] is None) == (chip_id == "chip8")
    ds = xr.open_zarr(out / AOI / f"{AOI}.zarr")
    assert ds["has_labels"].values.tolist() == [True] * 8 + [False]


def test_images_and_masks_load_as_cresis_reader_loads_them(made, tmp_path) -> None:
    """CRESI's loader reads images and masks with scikit-image's imread, i.e. tifffile, in
    environments without imagecodecs: every output of the run decodes there to the pixels
    rasterio reads (images as (y, x, band), masks as (y, x) or (band, y, x))."""
    import subprocess
    import textwrap

    _, out, manifest = made
    paths = [out / AOI / path for entry in manifest["chips"].values()
             for kind, path in entry["outputs"].items() if kind != "zarr"]
    assert len(paths) == 9 + 8 * 4
    for i, path in enumerate(paths):
        with rasterio.open(path) as src:
            pixels = src.read()
            pixel_interleaved = src.count > 1 and src.profile["interleave"] == "pixel"
        np.save(tmp_path / f"{i}.npy", np.moveaxis(pixels, 0, -1) if pixel_interleaved else pixels)
    script = textwrap.dedent(f"""
        import sys
        sys.modules["imagecodecs"] = None  # as where it is not installed
        import numpy as np, tifffile
        for i, path in enumerate({[str(p) for p in paths]!r}):
            expected = np.load("{tmp_path}/%d.npy" % i)
            image = tifffile.imread(path)
            assert image.dtype == np.uint8 and np.array_equal(image, expected.squeeze()), path
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_cresi_profile_multichannel_masks_read_as_cresi_read_them(client, tmp_path) -> None:
    """CRESI wrote its 8-channel masks pixel-interleaved (GDAL's default), so its readers
    (skimage.io.imread, i.e. tifffile) get (H, W, 8): the `cresi` profile writes them so.
    The default profile writes them band-interleaved (faster, smaller), read as (8, H, W)."""
    import tifffile

    from sn5dask.synthetic import make_synthetic_aoi

    aoi = make_synthetic_aoi(tmp_path / "in", n_chips=3, size=96, seed=8, roads_per_chip=(4, 8))
    for profile, shape in (("cresi", (96, 96, 8)), ("sn5dask", (8, 96, 96))):
        out = tmp_path / profile
        sn5dask.run(load_config(None, root=str(aoi.root), out=str(out), profile=profile,
                                masks="multichannel", formats="geotiff"), client=client)
        for path in (out / AOI / "masks" / "multichannel").glob("*.tif"):
            image = tifffile.imread(path)
            with rasterio.open(path) as src:
                assert image.shape == shape and set(src.colorinterp) <= {ColorInterp.gray, ColorInterp.undefined}
                assert np.array_equal(np.moveaxis(image, -1, 0) if profile == "cresi" else image, src.read())


def test_four_rgb_bands_are_red_green_blue_then_undefined_not_alpha(client, tmp_path) -> None:
    from sn5dask.synthetic import make_synthetic_aoi

    aoi = make_synthetic_aoi(tmp_path / "in", n_chips=2, size=64, seed=8, with_edge_cases=False)
    sn5dask.run(load_config(None, root=str(aoi.root), out=str(tmp_path / "out"), bands="5,3,2,1",
                            masks="none", formats="geotiff"), client=client)
    for path in (tmp_path / "out" / AOI / "PS-RGB").glob("*.tif"):
        with rasterio.open(path) as src:
            assert src.colorinterp == (ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.undefined)
            assert src.count == 4 and src.nodata == 0


# --- 4. STAC ---------------------------------------------------------------------------------

def schema_validator(schema_url: str):
    import jsonschema
    from referencing import Registry, Resource

    def retrieve(uri: str) -> Resource:
        path = SCHEMAS / uri.split("://", 1)[1].split("#")[0]
        return Resource.from_contents(json.loads(path.read_text()))

    registry = Registry(retrieve=retrieve)
    schema = retrieve(schema_url).contents
    return jsonschema.Draft7Validator(schema, registry=registry)


def validate_stac(document: dict) -> None:
    kind = {"Feature": "item-spec/json-schema/item.json", "Catalog": "catalog-spec/json-schema/catalog.json",
            "Collection": "collection-spec/json-schema/collection.json"}[document["type"]]
    assert document["stac_version"] == "1.1.0"
    schema_validator(f"https://schemas.stacspec.org/v1.1.0/{kind}").validate(document)
    for extension in document.get("stac_extensions", []):
        schema_validator(extension).validate(document)


def test_stac_catalog_validates_offline_and_reads_with_pystac(made) -> None:
    import pystac

    _, out, manifest = made
    documents = [out / "catalog.json", out / AOI / "collection.json", *sorted((out / AOI / "stac").glob("*.json"))]
    for path in documents:
        validate_stac(json.loads(path.read_text()))
    catalog = pystac.Catalog.from_file(str(out / "catalog.json"))
    (collection,) = catalog.get_children()
    items = {item.id: item for item in collection.get_items()}
    assert len(items) == 9 + 8  # an image item per chip, a label item per labelled chip
    for chip_id, entry in manifest["chips"].items():
        image = items[f"{AOI}-{chip_id}"]
        href = image.assets["image"].get_absolute_href()
        with rasterio.open(href) as src:
            assert list(src.transform)[:6] == image.properties["proj:transform"]
            assert [src.height, src.width] == image.properties["proj:shape"]
        assert image.properties["proj:code"] == "EPSG:4326"
        label = items.get(f"{AOI}-{chip_id}-label")
        if chip_id == "chip8":
            assert label is None
            continue
        assert label.properties["sn5dask:fold"] == entry["fold"]
        assert label.properties["label:type"] == "raster"
        (source,) = label.get_links("source")
        assert source.resolve_stac_object().target.id == image.id
        for kind in ("binary", "continuous", "binned", "multichannel"):
            asset = label.assets[kind]
            assert Path(asset.get_absolute_href()) == out / AOI / entry["outputs"][kind]
            # the classes an asset lists are the values its pixels take (a regression
            # target, the continuous mask, lists none)
            with rasterio.open(asset.get_absolute_href()) as src:
                values = set(np.unique(src.read()).tolist())
            if kind == "continuous":
                assert "label:classes" not in asset.extra_fields
                continue
            [classes] = asset.extra_fields["label:classes"]
            assert classes["name"] is None and values <= set(classes["classes"]) and 0 in values
            assert set(classes["classes"]) == ({0, 255} if kind in ("binary", "multichannel")
                                               else {0, 36, 72, 108, 144, 180, 216, 252, 255})
        assert "label:classes" not in label.properties  # none at item level that matches no asset


def test_stac_validation_catches_a_broken_item(made) -> None:
    import jsonschema

    _, out, _ = made
    document = json.loads((out / AOI / "stac" / "chip0-label.json").read_text())
    document["properties"]["label:type"] = "pixels"
    with pytest.raises(jsonschema.ValidationError):
        validate_stac(document)


def test_catalog_is_identical_after_a_resume(made, client) -> None:
    aoi, out, _ = made
    before = {p: p.read_bytes() for p in out.rglob("*.json") if "stac" in p.parts or p.name.endswith("n.json")}
    before[out / AOI / "folds.csv"] = (out / AOI / "folds.csv").read_bytes()
    again = sn5dask.run(load_config(None, root=str(aoi.root), out=str(out)), client=client)
    assert again.aois[0].processed == 0
    for path, data in before.items():
        assert path.read_bytes() == data, path


# --- 5. georeferenced Zarr --------------------------------------------------------------------

PLAIN_XARRAY = """
import json, sys
import odc.geo.xr, rioxarray, xarray as xr
ds = xr.open_zarr(sys.argv[1])
chip = ds.rgb.isel(chip=int(sys.argv[2]))
chip.rio.to_raster(sys.argv[3])
print(json.dumps({"crs": None if chip.rio.crs is None else str(chip.rio.crs),
                  "geobox": chip.odc.geobox is not None, "dataset_crs": ds.rio.crs is not None,
                  "sn5dask": "sn5dask" in sys.modules}))
"""


def test_a_chip_of_the_store_in_plain_xarray_claims_no_wrong_grid(made, tmp_path) -> None:
    """`xarray.open_zarr(store).rgb.isel(chip=i)` without sn5dask: no x/y coordinates, so
    it must carry no CRS, and `.rio.to_raster` must write a file that claims no place on
    Earth (before: the AOI's EPSG:4326 with 1-degree pixels at 0, 0)."""
    import subprocess
    import sys

    _, out, _ = made
    written = tmp_path / "plain.tif"
    result = subprocess.run([sys.executable, "-c", PLAIN_XARRAY, str(out / AOI / f"{AOI}.zarr"), "3", str(written)],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.splitlines()[-1])
    assert seen == {"crs": None, "geobox": False, "dataset_crs": False, "sn5dask": False}
    with rasterio.open(written) as src:
        assert src.crs is None


def test_zarr_chips_are_their_geotiffs_for_rioxarray_and_odc_geo(made, tmp_path) -> None:
    import odc.geo.xr  # noqa: F401
    import rioxarray  # noqa: F401

    _, out, manifest = made
    ds = sn5dask.open_store(str(out / AOI / f"{AOI}.zarr"))
    assert "crs_wkt" in ds["spatial_ref"].attrs and ds["rgb"].dtype == np.uint8
    for chip_id in ("chip0", "chip5"):
        outputs = manifest["chips"][chip_id]["outputs"]
        for var, kind in (("rgb", "rgb"), ("mask_multichannel", "multichannel"), ("mask_binned", "binned")):
            chip = sn5dask.chip_dataarray(ds, chip_id, var=var)
            with rasterio.open(out / AOI / outputs[kind]) as src:
                assert chip.rio.crs == src.crs and chip.rio.transform() == src.transform
                assert chip.rio.bounds() == tuple(src.bounds)
                assert chip.odc.geobox.affine == src.transform and chip.odc.geobox.shape == src.shape
                assert np.array_equal(np.asarray(chip.values).reshape(src.count, *src.shape), src.read())
                written = tmp_path / f"{chip_id}-{var}.tif"
                chip.rio.to_raster(written, recalc_transform=False)
                with rasterio.open(written) as back:
                    assert np.array_equal(back.read(), src.read())
                    assert back.transform == src.transform and back.crs == src.crs


def test_xbatcher_batches_over_chips_without_padding(made) -> None:
    import xbatcher

    _, out, _ = made
    ds = sn5dask.open_store(str(out / AOI / f"{AOI}.zarr"))
    seen = 0
    for chip_id in ds["chip_id"].values[:3]:
        chip = sn5dask.chip_dataarray(ds, str(chip_id), var="rgb")  # unpadded: no zero border
        for batch in xbatcher.BatchGenerator(chip, input_dims={"y": 32, "x": 32}):
            assert batch.dtype == np.uint8 and batch.sizes["y"] == batch.sizes["x"] == 32
            y0 = int(np.argmin(np.abs(chip.y.values - batch.y.values[0])))
            x0 = int(np.argmin(np.abs(chip.x.values - batch.x.values[0])))
            assert np.array_equal(batch.values, chip.values[:, y0:y0 + 32, x0:x0 + 32])
            seen += 1
    assert seen == 3 * 9


# --- 6. the loader -----------------------------------------------------------------------------

def test_chip_dataset_reads_folds_crops_and_class_indices(made) -> None:
    from sn5dask.training import ChipDataset

    _, out, manifest = made
    everything = ChipDataset(str(out), AOI)
    assert len(everything) == 8 and "torch" not in sys.modules
    first = everything[0]
    assert first["image"].shape == (3, 96, 96) and first["image"].dtype == np.uint8
    assert first["mask"].shape == (8, 96, 96) and set(np.unique(first["mask"])) <= {0, 255}
    with rasterio.open(out / AOI / manifest["chips"][first["chip_id"]]["outputs"]["multichannel"]) as src:
        assert np.array_equal(first["mask"], src.read())

    train = ChipDataset(str(out), AOI, folds=(0, 1, 2), crop=48, index_masks=True, masks="binned", seed=7)
    assert 0 < len(train) < 8 and all(item.fold in (0, 1, 2) for item in train.items)
    a, b = train[1], train[1]
    assert np.array_equal(a["image"], b["image"]) and a["image"].shape == (3, 48, 48)  # deterministic
    assert a["mask"].shape == (48, 48) and a["mask"].max() <= 7
    other_seed = ChipDataset(str(out), AOI, folds=(0, 1, 2), crop=48, seed=8)[1]
    assert not np.array_equal(a["image"], other_seed["image"])

    zarr = ChipDataset(str(out), AOI, source="zarr")
    for i in (0, 5):
        assert np.array_equal(zarr[i]["image"], everything[i]["image"])
        assert np.array_equal(zarr[i]["mask"], everything[i]["mask"])
    with pytest.raises(ValueError, match="continuous"):
        ChipDataset(str(out), AOI, masks="continuous", index_masks=True)


def _epoch_worker(dataset, requests, replies) -> None:  # a persistent DataLoader worker
    for index in iter(requests.get, None):
        replies.put(dataset[index]["image"])


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_set_epoch_reaches_persistent_workers(made, method) -> None:
    """DataLoader(persistent_workers=True) keeps one copy of the dataset per worker
    process, made when the workers start (fork, or pickled for spawn); `set_epoch` called
    afterwards in the main process must still change the crops those workers draw."""
    import multiprocessing

    from sn5dask.training import ChipDataset

    _, out, _ = made
    dataset = ChipDataset(str(out), AOI, crop=48, seed=3)
    context = multiprocessing.get_context(method)
    requests, replies = context.Queue(), context.Queue()
    worker = context.Process(target=_epoch_worker, args=(dataset, requests, replies))
    worker.start()
    try:
        crops = []
        for epoch in (0, 1, 0):
            dataset.set_epoch(epoch)
            requests.put(2)
            crops.append(replies.get(timeout=60))
            assert np.array_equal(crops[-1], dataset[2]["image"])  # the same crop as here
    finally:
        requests.put(None)
        worker.join(30)
    assert not np.array_equal(crops[0], crops[1]) and np.array_equal(crops[0], crops[2])


def test_crops_beyond_a_small_chip_can_be_marked_for_the_loss_to_ignore(made) -> None:
    from sn5dask.training import ChipDataset

    _, out, _ = made
    plain = ChipDataset(str(out), AOI, crop=128, masks="binary", index_masks=True)[0]
    marked = ChipDataset(str(out), AOI, crop=128, masks="binary", index_masks=True, mask_pad_value=255)[0]
    assert plain["mask"].shape == marked["mask"].shape == (128, 128)
    assert np.array_equal(marked["mask"][:96, :96], plain["mask"][:96, :96])  # the 96 px chip
    assert (marked["mask"][96:, :] == 255).all() and (marked["mask"][:, 96:] == 255).all()
    assert (plain["mask"][96:, :] == 0).all() and (marked["image"][:, 96:, :] == 0).all()
    with pytest.raises(ValueError, match="mask_pad_value"):
        ChipDataset(str(out), AOI, crop=128, mask_pad_value=300)


def test_an_aoi_without_labels_writes_no_folds_csv_and_says_so(tmp_path) -> None:
    """A header-only folds.csv crashes CRESI's get_csv_folds (max() of no folds): none is
    written, the run says why, and the loader has nothing to give."""
    from sn5dask.synthetic import make_synthetic_aoi
    from sn5dask.training import ChipDataset
    from tests.procs import sn5dask_cli

    aoi = make_synthetic_aoi(tmp_path / "in", n_chips=3, size=64, seed=2)
    for label in aoi.labels:
        Path(label).unlink(missing_ok=True)
    process = sn5dask_cli("run", aoi.root, "--out", tmp_path / "out", "--workers", "1")
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    assert "no chip has masks" in " ".join(output.split()) and "no folds.csv written" in " ".join(output.split())
    assert not (tmp_path / "out" / AOI / "folds.csv").exists()
    assert len(ChipDataset(str(tmp_path / "out"), AOI)) == 0


def test_a_dataset_copies_with_its_epoch_and_epoch_0_keeps_the_crops(made) -> None:
    import copy

    from sn5dask.training import ChipDataset

    _, out, _ = made
    dataset = ChipDataset(str(out), AOI, crop=48, seed=3)
    first = dataset[2]["image"]
    dataset.set_epoch(4)
    other = copy.deepcopy(dataset)
    assert other.epoch == 4 and np.array_equal(other[2]["image"], dataset[2]["image"])
    other.set_epoch(5)
    assert dataset.epoch == 4  # a copy's epoch is its own
    dataset.set_epoch(0)
    assert np.array_equal(dataset[2]["image"], first)
    assert np.array_equal(first, ChipDataset(str(out), AOI, crop=48, seed=3)[2]["image"])
