"""sn5dask.runner.chiptask in-process, through the fakes of sn5dask.testing: every output a chip
task writes is checked against the pure functions, and every failure path is recorded."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sn5dask.config import load_config
from sn5dask.core.labels import parse_road_labels
from sn5dask.io.burn import burn_chip_masks
from sn5dask.core.outputspec import OutputSpec
from sn5dask.core.stretch import (
    band_cut,
    band_histograms,
    percentiles_from_histogram,
    stretch_to_uint8,
)
from sn5dask.errors import ImageError
from sn5dask.outputs.layout import AoiLayout
from sn5dask.runner.chiptask import ChipJob, process_chip
from sn5dask.testing import FakeGeoTiff, MemoryWriter, fake_aoi

AOI = "AOI_98_Fake"
CUTS = tuple(band_cut(300.0, 1500.0) for _ in range(3))


@pytest.fixture(scope="module")
def fake():
    return fake_aoi(aoi=AOI, n_chips=6, size=64, seed=5)


@pytest.fixture
def writer():
    memory = MemoryWriter()
    yield memory
    memory.clear()


def job_for(fake, writer, tmp_path, *, cuts=CUTS, with_zarr=False, **options) -> ChipJob:
    config = load_config(None, root="mem://", out=str(tmp_path), **options)
    return ChipJob(config, AoiLayout(str(tmp_path), AOI), cuts, with_zarr, fake.reader, writer)


def test_outputs_equal_the_pure_functions(fake, writer, tmp_path) -> None:
    job = job_for(fake, writer, tmp_path)
    chip = fake.catalog.chips[0]
    result = process_chip(chip, job)
    assert result.status == "ok" and result.reason is None
    header, pixels = fake.reader.images[chip.image]
    layout = job.layout

    rgb = writer.files[layout.url(result.entry.outputs["rgb"])]
    assert isinstance(rgb, FakeGeoTiff) and rgb.header == header
    assert rgb.spec == OutputSpec("deflate", is_mask=False, nodata=0, photometric="RGB",
                                  descriptions=("PS-MS band 5", "PS-MS band 3", "PS-MS band 2"))
    assert np.array_equal(rgb.array, stretch_to_uint8(pixels[[4, 2, 1]], list(CUTS), [None] * 3, floor=1))

    labels = parse_road_labels(fake.reader.labels[chip.label], chip.label)
    expected = burn_chip_masks(labels, header.grid, image=pixels)
    assert set(result.entry.outputs) == {"rgb", "binary", "continuous", "binned", "multichannel"}
    for kind, mask in expected.items():
        written = writer.files[layout.url(result.entry.outputs[kind])]
        assert written.spec == OutputSpec.mask(kind, "deflate") and written.array.dtype == np.uint8
        assert np.array_equal(written.array, mask if mask.ndim == 3 else mask[np.newaxis])
    assert result.entry.outputs["binary"] == f"masks/binary/{chip.output_name}"
    assert result.entry.zero_fraction == {"5": 0.0, "3": 0.0, "2": 0.0}
    assert fake.reader.pixel_reads()[chip.image] >= 1


def test_zarr_region_is_written_and_recorded(fake, writer, tmp_path) -> None:
    job = job_for(fake, writer, tmp_path, with_zarr=True, formats="zarr")
    layout = job.layout
    headers = {c.chip_id: fake.reader.images[c.image][0] for c in fake.catalog.chips}
    writer.create_zarr(layout.zarr_url, chip_ids=list(headers), headers=headers, bands=(5, 3, 2),
                       mask_kinds=job.config.masks, attrs={})
    result = process_chip(fake.catalog.chips[2], job, 2)
    assert result.status == "ok" and result.entry.outputs == {"zarr": f"{AOI}.zarr#2"}
    rgb, masks = writer.files[layout.zarr_url]["regions"][2]
    assert rgb.shape == (3, 64, 64) and set(masks) == {"binary", "continuous", "binned", "multichannel"}


def test_per_chip_stretch_and_cresi_skip_rule(fake, writer, tmp_path) -> None:
    job = job_for(fake, writer, tmp_path, cuts=None, profile="cresi")
    chip = fake.catalog.chips[0]
    result = process_chip(chip, job)
    _, pixels = fake.reader.images[chip.image]
    hist = band_histograms(pixels[[4, 2, 1]])
    cuts = [band_cut(*percentiles_from_histogram(h, (2, 98))) for h in hist]
    rgb = writer.files[job.layout.url(result.entry.outputs["rgb"])].array
    assert np.array_equal(rgb, stretch_to_uint8(pixels[[4, 2, 1]], cuts))
    assert result.entry.percentiles == {str(b): percentiles_from_histogram(h, (2, 98))
                                  for b, h in zip((5, 3, 2), hist, strict=True)}
    # Chip 4 has 22 of 64 columns zero (34.4 %): CRESI's rule writes no RGB, still the masks.
    skipped = process_chip(fake.catalog.chips[4], job)
    assert skipped.status == "skipped" and "band 5 is 34.4% zeros" in skipped.reason
    assert "rgb" not in skipped.entry.outputs and "multichannel" in skipped.entry.outputs


def test_chip_without_label_gets_rgb_and_a_warning(fake, writer, tmp_path) -> None:
    chip = fake.catalog.chips[-1]
    assert chip.label is None
    result = process_chip(chip, job_for(fake, writer, tmp_path))
    assert result.status == "ok" and set(result.entry.outputs) == {"rgb"}
    assert result.entry.warnings == [f"{chip.image}: no label file: masks not written"]


def test_failures_are_recorded_never_raised(fake, writer, tmp_path) -> None:
    chip = fake.catalog.chips[1]
    job = job_for(fake, writer, tmp_path)
    fake.reader.failures[chip.image] = ImageError(chip.image, "cannot be read as a raster (boom)")
    try:
        result = process_chip(chip, job)
        assert result.status == "failed" and result.reason == f"{chip.image}: cannot be read as a raster (boom)"
        assert result.entry.outputs == {} and not writer.files

        fake.reader.failures[chip.image] = RuntimeError("a bug")
        result = process_chip(chip, job)
        log_url = job.layout.chip_log_url(chip.chip_id)
        assert result.status == "failed"
        assert result.reason == f"{chip.image}: unexpected error RuntimeError: a bug (traceback in {log_url})"
        log_text = writer.files[log_url].decode()
        assert log_text.startswith(chip.image) and "Traceback" in log_text and "RuntimeError: a bug" in log_text
    finally:
        del fake.reader.failures[chip.image]

    fake.reader.failures[chip.label] = PermissionError(13, "Permission denied")
    try:
        result = process_chip(chip, job)
        assert result.status == "failed" and result.reason.startswith(f"{chip.label}: cannot be read")
    finally:
        del fake.reader.failures[chip.label]

    big = job_for(fake, writer, tmp_path, max_label_mb=1e-6)
    result = process_chip(chip, big)
    assert result.status == "failed" and "label file too large" in result.reason

    broken = fake.reader.labels[chip.label]
    fake.reader.labels[chip.label] = b"{not json"
    try:
        result = process_chip(chip, job)
        assert result.status == "failed" and "not valid GeoJSON" in result.reason
    finally:
        fake.reader.labels[chip.label] = broken


def test_a_failed_write_fails_the_chip_naming_the_error(fake, tmp_path) -> None:
    writer = MemoryWriter(failures={".tif": OSError(28, "No space left on device")})
    try:
        result = process_chip(fake.catalog.chips[0], job_for(fake, writer, tmp_path))
        assert result.status == "failed" and "No space left on device" in result.reason
    finally:
        writer.clear()


def test_manifest_entry_is_the_typed_model(fake, writer, tmp_path) -> None:
    job = job_for(fake, writer, tmp_path)
    result = process_chip(fake.catalog.chips[0], job)
    entry = result.entry
    document = entry.as_json()
    assert json.loads(json.dumps(document)) == document and "percentiles" not in document
    assert list(document) == ["status", "image", "label", "reason", "warnings", "zero_fraction", "outputs",
                              "output_bytes", "image_stamp", "label_stamp", "fold"]
    assert document["output_bytes"] == {k: writer.files[job.layout.url(v)].array.nbytes
                                        for k, v in document["outputs"].items()}


def test_a_batch_whose_outputs_cannot_be_flushed_fails_each_chip_and_names_none(
    fake, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real files: the batch's outputs get their final names together; when the flush to
    disk fails, no output is left under a final name (nor as .partial) and every chip of
    the batch is reported failed with the reason."""
    import errno

    from sn5dask.io import files
    from sn5dask.io.chipio import FileWriter
    from sn5dask.runner.chiptask import process_chip_batch

    config = load_config(None, root="mem://", out=str(tmp_path))
    job = ChipJob(config, AoiLayout(str(tmp_path), AOI), CUTS, False, fake.reader, FileWriter())
    batch = [(chip, None) for chip in fake.catalog.chips[:3]]
    monkeypatch.setattr(files.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.EIO, "EIO")))
    results = process_chip_batch(batch, job)
    assert [r.status for r in results] == ["failed"] * 3
    assert all("could not be made durable" in (r.reason or "") for r in results)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
    monkeypatch.undo()
    results = process_chip_batch(batch, job)  # the same batch, flushed this time
    assert [r.status for r in results] == ["ok"] * 3
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert len(written) == 3 * 5 and not any(name.endswith(".partial") for name in written)
