"""What the dashboard shows, read from an output folder (no UI code here).

Everything comes from the files a run writes: `manifest.json` (status per chip, live while
a run goes), `stats.json` (percentiles, chip footprints, the chip count), `histograms.npz`
(the AOI's histograms: the AOI is never read again for them), `folds.csv`, and the
GeoTIFFs and label files of one chip for the inspector. Local folders and `s3://` work.
"""

from __future__ import annotations

import glob
import io
import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sn5dask.core.encodings import SPEED_BINS
from sn5dask.core.speed import BIN_VALUE_STEP, N_SPEED_CHANNELS, speed_bin
from sn5dask.core.stretch import (
    band_cut,
    band_histograms,
    percentiles_from_histogram,
    stretch_to_uint8,
)
from sn5dask.errors import ManifestError
from sn5dask.io import files
from sn5dask.outputs.layout import STATS_NAME, AoiLayout, layouts_under
from sn5dask.outputs.manifest import Manifest

STATUS_COLOURS = {"ok": "#2ca02c", "skipped": "#ff7f0e", "failed": "#d62728", "pending": "#9e9e9e"}


def aois(out: str) -> list[str]:
    """The AOIs with run output under `out` (a manifest, or the stats.json a run writes
    before its first chip), sorted."""
    found = {layout.aoi for layout in layouts_under(out)}
    try:
        fs, base = files.filesystem(out)
        for path in fs.glob(f"{glob.escape(base.rstrip('/'))}/*/{STATS_NAME}"):
            found.add(path.rstrip("/").split("/")[-2])
    except (OSError, ValueError):
        pass
    return sorted(found)


def read_json(url: str) -> Any | None:
    try:
        return json.loads(files.read_bytes(url))
    except (OSError, ValueError):
        return None


@dataclass
class Progress:
    """A run's progress, from its manifest (and stats.json for the chip count)."""

    total: int = 0
    ok: int = 0
    skipped: int = 0
    failed: int = 0
    chips_per_second: float | None = None
    eta_seconds: float | None = None
    running: bool = False

    @property
    def done(self) -> int:
        return self.ok + self.skipped + self.failed


@dataclass
class ProgressWatch:
    """Progress of one AOI, watched by re-reading its manifest (a run started anywhere:
    the CLI, a notebook, this dashboard). Rates come from successive readings."""

    layout: AoiLayout
    history: list[tuple[float, int]] = field(default_factory=list)

    def read(self) -> Progress:
        manifest = read_json(self.layout.manifest_url) or {}
        stats = read_json(self.layout.stats_url) or {}
        counts = manifest.get("counts") or {}
        progress = Progress(
            total=int(stats.get("n_chips") or len(manifest.get("chips") or {})),
            ok=int(counts.get("ok", 0)),
            skipped=int(counts.get("skipped", 0)),
            failed=int(counts.get("failed", 0)),
            running=files.exists(self.layout.lock_url),
        )
        now = time.monotonic()
        if not self.history or self.history[-1][1] != progress.done:
            self.history.append((now, progress.done))
        self.history = [(t, n) for t, n in self.history if now - t <= 60][-30:]
        if progress.running and len(self.history) >= 2:
            (t0, n0), (t1, n1) = self.history[0], self.history[-1]
            if t1 > t0 and n1 > n0:
                progress.chips_per_second = (n1 - n0) / (t1 - t0)
                progress.eta_seconds = (progress.total - progress.done) / progress.chips_per_second
        return progress


def manifest_of(layout: AoiLayout) -> Manifest | None:
    document = read_json(layout.manifest_url)
    if document is None:
        return None
    try:
        return Manifest.parse(document, layout.manifest_url)
    except ManifestError:
        return None


def chip_table(manifest: Manifest) -> list[dict[str, Any]]:
    """One row per chip: status, reason, warnings, zero fractions, fold."""
    rows = []
    for chip_id, entry in manifest.chips.items():
        rows.append({
            "chip": chip_id,
            "status": entry.status,
            "fold": -1 if entry.fold is None else entry.fold,
            "warnings": len(entry.warnings),
            "max zero fraction": max(entry.zero_fraction.values(), default=0.0),
            "reason": entry.reason or "",
            "first warning": entry.warnings[0] if entry.warnings else "",
        })  # fmt: skip
    return rows


@dataclass(frozen=True)
class BandHistogram:
    band: int
    counts: np.ndarray  # (65536,) int64, valid pixels only
    low: float | None
    high: float | None

    @property
    def clipped_low(self) -> float:
        """Share of valid pixels at or below the low cut (they become the darkest value)."""
        total = self.counts.sum()
        if not total or self.low is None:
            return 0.0
        return float(self.counts[: int(np.floor(self.low)) + 1].sum() / total)

    @property
    def clipped_high(self) -> float:
        """Share of valid pixels at or above the high cut (they become 255)."""
        total = self.counts.sum()
        if not total or self.high is None:
            return 0.0
        return float(self.counts[int(np.ceil(self.high)) :].sum() / total)


def band_histograms_of(layout: AoiLayout) -> list[BandHistogram]:
    """The AOI's histograms as the run saved them (AOI stretch only; [] otherwise)."""
    try:
        saved = np.load(io.BytesIO(files.read_bytes(layout.histograms_url)))
    except (OSError, ValueError):
        return []
    stats = read_json(layout.stats_url) or {}
    values = stats.get("values") or {}
    out = []
    for band, counts in zip(saved["bands"].tolist(), saved["histogram"], strict=True):
        low, high = values.get(str(band), [None, None])
        out.append(BandHistogram(int(band), counts, low, high))
    return out


def footprints(layout: AoiLayout, manifest: Manifest | None) -> list[dict[str, Any]]:
    """Each chip's footprint (lon/lat box) with its status, from stats.json."""
    stats = read_json(layout.stats_url) or {}
    boxes = stats.get("chip_bboxes") or {}
    status = {cid: e.status for cid, e in manifest.chips.items()} if manifest else {}
    return [
        {"chip": cid, "west": b[0], "south": b[1], "east": b[2], "north": b[3],
         "status": status.get(cid, "pending")}  # fmt: skip
        for cid, b in sorted(boxes.items())
    ]


@dataclass
class ChipView:
    """What the inspector shows for one chip: an RGB (the output, or for a chip without
    one a per-chip stretch of its source), masks, and label centrelines in pixel
    coordinates (x = column, y = row)."""

    chip_id: str
    status: str
    rgb: np.ndarray | None
    masks: dict[str, np.ndarray]
    lines: list[np.ndarray]
    note: str = ""


def chip_view(layout: AoiLayout, manifest: Manifest, chip_id: str, *, with_source: bool = True) -> ChipView:
    import rasterio

    from sn5dask.io.raster import gdal_env, gdal_path

    entry = manifest.chips[chip_id]
    masks: dict[str, np.ndarray] = {}
    rgb = None
    transform = crs = None
    note = entry.reason or ""
    for kind, relpath in entry.file_outputs().items():
        url = layout.url(relpath)
        try:
            with gdal_env(url), rasterio.open(gdal_path(url)) as src:
                data = src.read()
                transform, crs = src.transform, src.crs
        except Exception as exc:  # a damaged output is shown as such, not a crash
            note += f" {kind}: unreadable ({exc})"
            continue
        if kind == "rgb":
            rgb = data
        else:
            masks[kind] = data
    if rgb is None and with_source and entry.image:
        rgb, transform, crs = _source_preview(entry.image, manifest.params.get("bands") or [5, 3, 2])
        note = (note + " (image: the source, stretched per chip for display)").strip()
    lines = _label_lines(entry.label, transform, crs) if entry.label and transform is not None else []
    return ChipView(chip_id, entry.status, rgb, masks, lines, note)


def _source_preview(path: str, bands: list[int]) -> tuple[np.ndarray | None, Any, Any]:
    from sn5dask.io.raster import read_chip

    try:
        header, data = read_chip(path, bands)
    except Exception:  # an unreadable source is why the chip failed: nothing to show
        return None, None, None
    hist = band_histograms(data)
    cuts = [band_cut(*percentiles_from_histogram(h, (2, 98), data.dtype)) for h in hist]
    from affine import Affine
    from rasterio.crs import CRS

    return stretch_to_uint8(data, cuts, floor=1), Affine(*header.transform), CRS.from_wkt(header.crs_wkt)


def _label_lines(label: str, transform: Any, crs: Any) -> list[np.ndarray]:
    import shapely
    from pyproj import CRS

    from sn5dask.core.labels import parse_road_labels
    from sn5dask.core.crs import reproject_geometries

    try:
        roads = parse_road_labels(files.read_bytes(label), label)
    except Exception:  # an unparseable label is the chip's failure reason; draw nothing
        return []
    lines = reproject_geometries(roads.lines, roads.crs, CRS.from_user_input(crs.to_wkt()))
    inverse = ~transform
    out = []
    for line in lines:
        for part in shapely.get_parts(line):
            xy = shapely.get_coordinates(part)
            cols, rows = inverse * (xy[:, 0], xy[:, 1])
            out.append(np.column_stack([cols, rows]))
    return out


@dataclass(frozen=True)
class SpeedDistribution:
    """Road length (km) and mask pixels per speed bin (the masks' own bins), over the
    chips counted, with the class balance of the pixels."""

    bins: tuple[str, ...]
    road_km: np.ndarray
    pixels: np.ndarray
    background_pixels: int
    chips_counted: int
    chips_total: int


def speed_distribution(layout: AoiLayout, manifest: Manifest, max_chips: int = 200) -> SpeedDistribution:
    """Over up to `max_chips` labelled chips (evenly spread over the AOI's order)."""
    import rasterio
    import shapely
    from pyproj import CRS

    from sn5dask.core.labels import parse_road_labels
    from sn5dask.core.crs import metric_crs_containing, reproject_geometries
    from sn5dask.io.raster import gdal_env, gdal_path

    done = [cid for cid, e in manifest.chips.items() if e.done and "binned" in e.outputs and e.label]
    step = max(1, int(np.ceil(len(done) / max_chips)))
    chosen = done[::step]
    road_km = np.zeros(N_SPEED_CHANNELS)
    pixels = np.zeros(N_SPEED_CHANNELS, dtype=np.int64)
    background = 0
    for chip_id in chosen:
        entry = manifest.chips[chip_id]
        url = layout.url(entry.outputs["binned"])
        with gdal_env(url), rasterio.open(gdal_path(url)) as src:
            binned = src.read(1)
        counts = np.bincount(np.minimum(binned // BIN_VALUE_STEP, N_SPEED_CHANNELS).ravel(),
                             minlength=N_SPEED_CHANNELS + 1)  # fmt: skip
        background += int(counts[0])
        pixels += counts[1:]
        try:
            roads = parse_road_labels(files.read_bytes(str(entry.label)), str(entry.label))
        except Exception:  # counted in pixels only
            continue
        if not len(roads):
            continue
        centre = shapely.centroid(shapely.union_all(roads.lines))
        lonlat = reproject_geometries(np.array([centre]), roads.crs, CRS.from_epsg(4326))[0]
        metric = metric_crs_containing(lonlat.x, lonlat.y)
        lengths = shapely.length(reproject_geometries(roads.lines, roads.crs, metric)) / 1000.0
        bins = speed_bin(np.nan_to_num(roads.speed_mph, nan=0.0))
        for k, km in zip(bins, lengths, strict=True):
            if k > 0:
                road_km[k - 1] += km
    return SpeedDistribution(SPEED_BINS, road_km, pixels, background, len(chosen), len(done))
