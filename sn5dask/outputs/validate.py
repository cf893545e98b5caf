"""`sn5dask validate OUT`: check every output against the manifest and the source chips.

For each AOI under OUT (a folder with `manifest.json`): every chip of the source AOI is in
the manifest; every output a done chip lists exists, decodes completely (a truncated or
corrupted file fails to decode), is uint8 with the expected band count, and has the
source image's size, CRS and transform; the Zarr store has the chip ids, per-chip
georeferencing and uint8 arrays the manifest implies. Each problem names the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import rasterio
from rasterio.errors import RasterioError

from sn5dask.core.grid import ChipHeader
from sn5dask.errors import ChipError, ManifestError, Sn5daskError
from sn5dask.io import files
from sn5dask.io.catalog import discover
from sn5dask.io.chipio import FileWriter, read_json
from sn5dask.io.raster import gdal_env, gdal_path, read_header
from sn5dask.outputs.layout import RGB_OUTPUT, AoiLayout, ZarrRef, layouts_under
from sn5dask.outputs.manifest import ChipEntry, Manifest

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
    out = files.normalise_location(out)
    layouts = layouts_under(out)
    if not layouts:
        raise Sn5daskError(f"{out}: no manifest.json found (not an sn5dask output folder)")
    report = ValidationReport()
    for layout in layouts:
        try:
            manifest = Manifest.parse(read_json(FileWriter(), layout.manifest_url), layout.manifest_url)
        except (OSError, ValueError) as exc:
            report.problems.append(f"{layout.manifest_url}: unreadable manifest ({exc})")
            continue
        except ManifestError as exc:
            report.problems.append(str(exc))
            continue
        _validate_aoi(layout, manifest, report)
    return report


def _validate_aoi(layout: AoiLayout, manifest: Manifest, report: ValidationReport) -> None:
    aoi = manifest.aoi
    if manifest.root:
        try:
            source_ids = {c.chip_id for cat in discover(manifest.root, [aoi]) for c in cat.chips}
        except Sn5daskError as exc:
            report.problems.append(f"{aoi}: cannot list the source chips ({exc})")
            source_ids = set()
        for chip_id in sorted(source_ids - set(manifest.chips)):
            report.problems.append(
                f"{aoi} {chip_id}: missing chip: in {manifest.root} but not in the manifest"
            )
    zarr_entries: dict[str, tuple[ZarrRef, ChipHeader | None]] = {}
    n_rgb_bands = len(manifest.params.get("bands", []))
    for chip_id, entry in manifest.chips.items():
        if not entry.done:
            continue
        report.checked_chips += 1
        label = f"{aoi} {chip_id}"
        header = _source_header(entry, label, report)
        try:
            ref = entry.zarr_ref()
        except ManifestError as exc:
            report.problems.append(f"{label}: {exc}")
            ref = None
        if ref is not None:
            zarr_entries[chip_id] = (ref, header)
        for kind, relpath in entry.file_outputs().items():
            try:
                url = layout.url(relpath)
            except ValueError:
                report.problems.append(
                    f"{label}: output path {relpath!r} escapes the output folder {layout.folder}"
                )
                continue
            bands = n_rgb_bands if kind == RGB_OUTPUT else EXPECTED_BANDS.get(kind, 1)
            _check_geotiff(url, bands, header, label, report)
    if zarr_entries:
        _check_zarr(layout, zarr_entries, aoi, report)


def _source_header(entry: ChipEntry, label: str, report: ValidationReport) -> ChipHeader | None:
    if not entry.image:
        return None
    try:
        return read_header(entry.image)
    except ChipError as exc:
        report.problems.append(f"{label}: source image unreadable, georef not checked ({exc})")
        return None


def _check_geotiff(
    url: str, bands: int, header: ChipHeader | None, label: str, report: ValidationReport
) -> None:
    report.checked_files += 1
    if not files.exists(url):
        report.problems.append(f"{label}: {url}: missing output file")
        return
    try:
        with gdal_env(url), rasterio.open(gdal_path(url)) as src:
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
    layout: AoiLayout,
    entries: dict[str, tuple[ZarrRef, ChipHeader | None]],
    aoi: str,
    report: ValidationReport,
) -> None:
    import xarray as xr

    from sn5dask.io import zarrstore

    report.checked_files += 1
    url = layout.zarr_url
    try:
        ds = xr.open_zarr(url, **_zarr_options(url))
        arrays = zarrstore.data_arrays(url)
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
    for chip_id, (ref, header) in entries.items():
        label = f"{aoi} {chip_id}"
        index = ref.index
        if ref.store != layout.zarr_relpath:
            report.problems.append(f"{label}: Zarr reference {ref} names another store than {layout.zarr_relpath}")
            continue
        if index >= len(ids) or ids[index] != chip_id:
            report.problems.append(f"{label}: {url}: chip missing at index {index}")
            continue
        # A chunk never written reads as zeros: check that each variable's chunk exists.
        for name, array in arrays.items():
            if not files.exists(files.join(url, zarrstore.chunk_relpath(name, array, index))):
                report.problems.append(f"{label}: {url}: {name} chunk of chip {index} is missing")
        if header is None:
            continue
        if tuple(transforms[index]) != tuple(header.transform):
            report.problems.append(f"{label}: {url}: georeferencing mismatch (transform)")
        wkt = crs_list[crs_index[index]] if 0 <= crs_index[index] < len(crs_list) else None
        if wkt is None or rasterio.crs.CRS.from_wkt(wkt) != rasterio.crs.CRS.from_wkt(header.crs_wkt):
            report.problems.append(f"{label}: {url}: georeferencing mismatch (crs)")
        try:
            ds["rgb"][index].values  # decode the chip's chunk
        except Exception as exc:  # a corrupted chunk is a finding
            report.problems.append(f"{label}: {url}: chunk unreadable ({exc})")


def _zarr_options(url: str) -> dict[str, Any]:
    options = files.storage_options(url)
    return {"storage_options": options} if options else {}
