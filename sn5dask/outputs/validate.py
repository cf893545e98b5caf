"""`sn5dask validate OUT`: check every output against the manifest and the source chips.

For each AOI under OUT (a folder with `manifest.json`): every chip of the source AOI is in
the manifest; every output a done chip lists exists, decodes completely (a truncated or
corrupted file fails to decode), is uint8 with the expected band count, and has the
source image's size, CRS and transform; the Zarr store has the chip ids, per-chip
georeferencing and uint8 arrays the manifest implies. Each problem names the file.

The per-chip checks read every output, so with a cluster (`sn5dask validate --scheduler`)
they run on its workers in batches; the client lists the AOI and sums the findings.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
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


#: Chips per validation task on a cluster (each task opens its chips' outputs in turn).
CHIPS_PER_TASK = 64

#: How the per-chip checks are run: `map(function, batches)` in order (the builtin `map`
#: here; `validate_output(client=...)` maps them over the cluster's workers).
BatchMapper = Callable[[Callable[[Any], Any], list[Any]], Iterable[Any]]


@dataclass
class ChipCheck:
    """What the checks of one chip found (run wherever the batch runs)."""

    chip_id: str
    problems: list[str]
    checked_files: int
    header: ChipHeader | None
    zarr_ref: ZarrRef | None


def validate_output(out: str, client: Any = None) -> ValidationReport:
    """Validate every AOI output folder under `out` (or `out` itself being one). With a
    dask `client`, the per-chip checks (reading every output) run on its workers, in
    batches of `CHIPS_PER_TASK` chips; the client only lists and sums."""
    out = files.normalise_location(out)
    layouts = layouts_under(out)
    if not layouts:
        raise Sn5daskError(f"{out}: no manifest.json found (not an sn5dask output folder)")
    mapper: BatchMapper = map
    if client is not None:
        def mapper(function: Callable[[Any], Any], batches: list[Any]) -> Iterable[Any]:
            return client.gather(client.map(function, batches, pure=False))  # type: ignore[no-any-return]
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
        _validate_aoi(layout, manifest, report, mapper)
    return report


def _validate_aoi(layout: AoiLayout, manifest: Manifest, report: ValidationReport, mapper: BatchMapper) -> None:
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
    n_rgb_bands = len(manifest.params.get("bands", []))
    done = [(chip_id, entry) for chip_id, entry in manifest.chips.items() if entry.done]
    batches = [
        (layout, done[i : i + CHIPS_PER_TASK], n_rgb_bands) for i in range(0, len(done), CHIPS_PER_TASK)
    ]
    zarr_entries: dict[str, tuple[ZarrRef, ChipHeader | None]] = {}
    for checks in mapper(check_chip_batch, batches):
        for check in checks:
            report.checked_chips += 1
            report.checked_files += check.checked_files
            report.problems.extend(check.problems)
            if check.zarr_ref is not None:
                zarr_entries[check.chip_id] = (check.zarr_ref, check.header)
    if zarr_entries:
        report.checked_files += 1
        report.problems.extend(_zarr_store_problems(layout, aoi))
        items = list(zarr_entries.items())
        zarr_batches = [(layout, aoi, items[i : i + CHIPS_PER_TASK]) for i in range(0, len(items), CHIPS_PER_TASK)]
        for problems in mapper(check_zarr_batch, zarr_batches):
            report.problems.extend(problems)


def check_chip_batch(batch: tuple[AoiLayout, list[tuple[str, ChipEntry]], int]) -> list[ChipCheck]:
    """The checks of a batch of done chips: (layout, [(chip id, entry)], RGB band count)."""
    layout, entries, n_rgb_bands = batch
    return [check_chip(layout, chip_id, entry, n_rgb_bands) for chip_id, entry in entries]


def check_chip(layout: AoiLayout, chip_id: str, entry: ChipEntry, n_rgb_bands: int) -> ChipCheck:
    """One done chip: its source's header, and each GeoTIFF it lists."""
    label = f"{layout.aoi} {chip_id}"
    found = ValidationReport()
    header = _source_header(entry, label, found)
    ref = None
    try:
        ref = entry.zarr_ref()
    except ManifestError as exc:
        found.problems.append(f"{label}: {exc}")
    for kind, relpath in entry.file_outputs().items():
        try:
            url = layout.url(relpath)
        except ValueError:
            found.problems.append(
                f"{label}: output path {relpath!r} escapes the output folder {layout.folder}"
            )
            continue
        bands = n_rgb_bands if kind == RGB_OUTPUT else EXPECTED_BANDS.get(kind, 1)
        _check_geotiff(url, bands, header, label, found)
    return ChipCheck(chip_id, found.problems, found.checked_files, header, ref)


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


def _zarr_store_problems(layout: AoiLayout, aoi: str) -> list[str]:
    """The store as a whole: it opens, and every data variable is uint8."""
    import xarray as xr

    url = layout.zarr_url
    try:
        ds = xr.open_zarr(url, **_zarr_options(url))
    except Exception as exc:  # any failure to open is a finding, not a crash
        return [f"{aoi}: {url}: cannot open the Zarr store ({exc})"]
    return [
        f"{aoi}: {url}: {name} is {variable.dtype}, expected uint8"
        for name, variable in ds.data_vars.items()
        if name != "spatial_ref" and variable.dtype != np.uint8
    ]


def check_zarr_batch(
    batch: tuple[AoiLayout, str, list[tuple[str, tuple[ZarrRef, ChipHeader | None]]]],
) -> list[str]:
    """The store's region of each chip of a batch: (layout, AOI, [(chip id, (reference,
    source header))]): the chip is at its index, each variable's chunk exists and
    decodes, and its georeferencing is the source's."""
    import xarray as xr

    from sn5dask.io import zarrstore

    layout, aoi, entries = batch
    url = layout.zarr_url
    try:
        ds = xr.open_zarr(url, **_zarr_options(url))
        arrays = zarrstore.data_arrays(url)
    except Exception:  # said once by `_zarr_store_problems`
        return []
    problems: list[str] = []
    ids = [str(v) for v in ds["chip_id"].values]
    transforms = ds["transform"].values
    crs_list = ds.attrs.get("crs_wkt", [])
    crs_index = ds["crs"].values
    for chip_id, (ref, header) in entries:
        label = f"{aoi} {chip_id}"
        index = ref.index
        if ref.store != layout.zarr_relpath:
            problems.append(f"{label}: Zarr reference {ref} names another store than {layout.zarr_relpath}")
            continue
        if index >= len(ids) or ids[index] != chip_id:
            problems.append(f"{label}: {url}: chip missing at index {index}")
            continue
        # A chunk never written reads as zeros: check that each variable's chunk exists.
        for name, array in arrays.items():
            if not files.exists(files.join(url, zarrstore.chunk_relpath(name, array, index))):
                problems.append(f"{label}: {url}: {name} chunk of chip {index} is missing")
        if header is None:
            continue
        if tuple(transforms[index]) != tuple(header.transform):
            problems.append(f"{label}: {url}: georeferencing mismatch (transform)")
        wkt = crs_list[crs_index[index]] if 0 <= crs_index[index] < len(crs_list) else None
        if wkt is None or rasterio.crs.CRS.from_wkt(wkt) != rasterio.crs.CRS.from_wkt(header.crs_wkt):
            problems.append(f"{label}: {url}: georeferencing mismatch (crs)")
        try:
            ds["rgb"][index].values  # decode the chip's chunk
        except Exception as exc:  # a corrupted chunk is a finding
            problems.append(f"{label}: {url}: chunk unreadable ({exc})")
    return problems


def _zarr_options(url: str) -> dict[str, Any]:
    options = files.storage_options(url)
    return {"storage_options": options} if options else {}
