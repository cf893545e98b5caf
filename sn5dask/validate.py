"""`sn5dask validate OUT`: check every output against the manifest and the source chips.

For each AOI under OUT (a folder with `manifest.json`): every chip of the source AOI is in
the manifest; every output a done chip lists exists, decodes completely (a truncated or
corrupted file fails to decode), is uint8 with the expected band count, and has the
source image's size, CRS and transform; the Zarr store has the chip ids, per-chip
georeferencing and uint8 arrays the manifest implies. Each problem names the file.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import rasterio
from rasterio.errors import RasterioError

from sn5dask import storage
from sn5dask.catalog import discover
from sn5dask.errors import ChipError, Sn5daskError
from sn5dask.manifest import DONE_STATUSES, MANIFEST_NAME
from sn5dask.raster import ChipHeader, gdal_env, read_header

EXPECTED_BANDS = {"binary": 1, "continuous": 1, "binned": 1, "multichannel": 8}


@dataclass
class ValidationReport:
    checked_files: int = 0
    checked_chips: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def validate_output(out: str) -> ValidationReport:
    """Validate every AOI output folder under `out` (or `out` itself being one)."""
    fs, base = storage.filesystem(out)
    manifests = sorted(
        set(fs.glob(f"{base.rstrip('/')}/*/{MANIFEST_NAME}"))
        | set(fs.glob(f"{base.rstrip('/')}/{MANIFEST_NAME}"))
    )
    if not manifests:
        raise Sn5daskError(f"{out}: no manifest.json found (not an sn5dask output folder)")
    report = ValidationReport()
    for manifest_path in manifests:
        out_aoi = storage.full_url(fs, posixpath.dirname(manifest_path))
        if storage.is_local(out):
            out_aoi = posixpath.dirname(manifest_path)
        _validate_aoi(out_aoi, storage.read_json(storage.full_url(fs, manifest_path)), report)
    return report


def _validate_aoi(out_aoi: str, manifest: dict[str, Any], report: ValidationReport) -> None:
    aoi = manifest.get("aoi", "?")
    chips: dict[str, dict[str, Any]] = manifest.get("chips") or {}
    params = manifest.get("params") or {}
    root = manifest.get("root")
    if root:
        try:
            source_ids = {c.chip_id for cat in discover(root, [aoi]) for c in cat.chips}
        except Sn5daskError as exc:
            report.problems.append(f"{aoi}: cannot list the source chips ({exc})")
            source_ids = set()
        for chip_id in sorted(source_ids - set(chips)):
            report.problems.append(f"{aoi} {chip_id}: missing chip: in {root} but not in the manifest")
    zarr_entries: dict[str, tuple[int, ChipHeader | None]] = {}
    for chip_id, entry in chips.items():
        if entry.get("status") not in DONE_STATUSES:
            continue
        report.checked_chips += 1
        header = _source_header(entry, aoi, chip_id, report)
        for kind, relpath in (entry.get("outputs") or {}).items():
            if kind == "zarr":
                zarr_entries[chip_id] = (int(str(relpath).split("#", 1)[1]), header)
                continue
            url = storage.join(out_aoi, relpath)
            bands = len(params.get("bands", [])) if kind == "rgb" else EXPECTED_BANDS.get(kind, 1)
            _check_geotiff(url, bands, header, f"{aoi} {chip_id}", report)
    if zarr_entries:
        _check_zarr(storage.join(out_aoi, f"{aoi}.zarr"), zarr_entries, aoi, report)


def _source_header(
    entry: dict[str, Any], aoi: str, chip_id: str, report: ValidationReport
) -> ChipHeader | None:
    image = entry.get("image")
    if not image:
        return None
    try:
        return read_header(image)
    except ChipError as exc:
        report.problems.append(f"{aoi} {chip_id}: source image unreadable, georef not checked ({exc})")
        return None


def _check_geotiff(
    url: str, bands: int, header: ChipHeader | None, label: str, report: ValidationReport
) -> None:
    report.checked_files += 1
    if not storage.exists(url):
        report.problems.append(f"{label}: {url}: missing output file")
        return
    try:
        with gdal_env(), rasterio.open(url) as src:
            src.read()  # decodes every block: a truncated or corrupted file raises here
            if src.count != bands or set(src.dtypes) != {"uint8"}:
                report.problems.append(
                    f"{label}: {url}: {src.count} band(s) of {src.dtypes[0]}, expected {bands} uint8"
                )
            if header is not None:
                _check_georef(url, label, src.height, src.width, tuple(src.transform)[:6],
                              src.crs.to_wkt() if src.crs else None, header, report)
    except RasterioError as exc:
        report.problems.append(f"{label}: {url}: corrupted or truncated ({exc})")


def _check_georef(
    url: str,
    label: str,
    height: int,
    width: int,
    transform: tuple[float, ...],
    crs_wkt: str | None,
    header: ChipHeader,
    report: ValidationReport,
) -> None:
    if (height, width) != (header.height, header.width):
        report.problems.append(
            f"{label}: {url}: size {height}x{width} differs from the source's "
            f"{header.height}x{header.width}"
        )
    if tuple(transform) != tuple(header.transform):
        report.problems.append(
            f"{label}: {url}: georeferencing mismatch: transform {transform} differs from the "
            f"source's {header.transform}"
        )
    if crs_wkt is None or rasterio.crs.CRS.from_wkt(crs_wkt) != rasterio.crs.CRS.from_wkt(header.crs_wkt):
        report.problems.append(f"{label}: {url}: georeferencing mismatch: CRS differs from the source's")


def _check_zarr(
    url: str,
    entries: dict[str, tuple[int, ChipHeader | None]],
    aoi: str,
    report: ValidationReport,
) -> None:
    import xarray as xr

    report.checked_files += 1
    try:
        ds = xr.open_zarr(url, **_zarr_options(url))
    except Exception as exc:  # any failure to open is a finding, not a crash
        report.problems.append(f"{aoi}: {url}: cannot open the Zarr store ({exc})")
        return
    for name, variable in ds.data_vars.items():
        if variable.dtype != np.uint8:
            report.problems.append(f"{aoi}: {url}: {name} is {variable.dtype}, expected uint8")
    ids = [str(v) for v in ds["chip_id"].values]
    transforms = ds["transform"].values
    crs_list = ds.attrs.get("crs_wkt", [])
    crs_index = ds["crs"].values
    for chip_id, (index, header) in entries.items():
        if index >= len(ids) or ids[index] != chip_id:
            report.problems.append(f"{aoi} {chip_id}: {url}: chip missing at index {index}")
            continue
        if header is None:
            continue
        if tuple(transforms[index]) != tuple(header.transform):
            report.problems.append(f"{aoi} {chip_id}: {url}: georeferencing mismatch (transform)")
        wkt = crs_list[crs_index[index]] if 0 <= crs_index[index] < len(crs_list) else None
        if wkt is None or rasterio.crs.CRS.from_wkt(wkt) != rasterio.crs.CRS.from_wkt(header.crs_wkt):
            report.problems.append(f"{aoi} {chip_id}: {url}: georeferencing mismatch (crs)")
        try:
            ds["rgb"][index].values  # decode the chip's chunk
        except Exception as exc:  # a corrupted chunk is a finding
            report.problems.append(f"{aoi} {chip_id}: {url}: chunk unreadable ({exc})")


def _zarr_options(url: str) -> dict[str, Any]:
    from sn5dask.storage import storage_options

    options = storage_options(url)
    return {"storage_options": options} if options else {}
