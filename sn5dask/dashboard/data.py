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
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from sn5dask.core.encodings import MASK_KINDS, SPEED_BINS
from sn5dask.core.speed import BIN_VALUE_STEP, N_SPEED_CHANNELS, speed_bin
from sn5dask.core.stretch import (
    band_cut,
    band_histograms,
    percentiles_from_histogram,
    stretch_to_uint8,
)
from sn5dask.errors import ManifestError
from sn5dask.io import files
from sn5dask.io.lock import pid_alive
from sn5dask.outputs.layout import STATS_NAME, ZARR_OUTPUT, AoiLayout, layouts_under
from sn5dask.outputs.manifest import STATUSES, Manifest

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


#: How often each file was read (URL -> reads), for the tests and for anyone asking what
#: an idle dashboard costs: an unchanged file is never read again.
READS: Counter[str] = Counter()

T = TypeVar("T")


def file_stamp(url: str) -> tuple[Any, ...] | None:
    """What changes when the file at `url` is rewritten: (size, mtime) locally, (size,
    ETag or mtime) on S3; None when it does not exist. One stat, never a read."""
    try:
        fs, path = files.filesystem(url)
        info = fs.info(path)
    except (OSError, ValueError):
        return None
    return (info.get("size"), info.get("mtime") or info.get("ETag") or info.get("LastModified"), info.get("ino"))


class StampedCache:
    """Parsed files, re-read only when their stamp changed (shared by every browser
    session of the process: ten open tabs cost one stat per file and refresh, and one
    read per change). Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str], tuple[tuple[Any, ...] | None, Any]] = {}

    def get(self, url: str, parse: Callable[[bytes | None], T]) -> T:
        """`parse(content)` of the file (content None: it does not exist or can't be read)."""
        stamp = file_stamp(url)
        key = (url, getattr(parse, "__qualname__", repr(parse)))
        with self._lock:
            cached = self._entries.get(key)
            if cached is not None and stamp is not None and cached[0] == stamp:
                return cached[1]  # type: ignore[no-any-return]
        content: bytes | None = None
        if stamp is not None:
            try:
                content = files.read_bytes(url)
                READS[url] += 1
            except (OSError, ValueError):
                content = None
        value = parse(content)
        with self._lock:
            self._entries[key] = (stamp, value)
        return value


CACHE = StampedCache()


def _json_or_none(content: bytes | None) -> Any | None:
    if content is None:
        return None
    try:
        return json.loads(content)
    except ValueError:
        return None


def read_json(url: str) -> Any | None:
    """The decoded JSON file, or None when it is missing or does not parse (cached)."""
    return CACHE.get(url, _json_or_none)


def lock_held(layout: AoiLayout) -> bool:
    """Whether a run holds the AOI's lock now. Locally the lock file stays after a run
    (unlocked), so its existence says nothing: the kernel's lock table does (read, never
    probed by locking: a probe could make a starting run fail). On S3 the lock object
    exists only while a run holds it."""
    url = layout.lock_url
    if not files.is_local(url):
        return files.exists(url)
    try:
        info = os.stat(url)
    except OSError:
        return False
    device = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    try:
        with open("/proc/locks") as table:
            return any(line.split()[5] == device for line in table if len(line.split()) > 5)
    except OSError:  # not Linux: trust the holder named in the file, if its process lives
        holder = read_json(url) or {}
        pid = holder.get("pid") if isinstance(holder, dict) else None
        return isinstance(pid, int) and pid_alive(pid)


@dataclass(frozen=True)
class ManifestReading:
    """An AOI's manifest as read: the model, or why it can't be used (`problem`: the
    file is damaged or was tampered with; the dashboard shows that AOI as damaged)."""

    manifest: Manifest | None
    problem: str | None = None


def _parse_manifest(layout: AoiLayout) -> Callable[[bytes | None], ManifestReading]:
    def parse(content: bytes | None) -> ManifestReading:
        return check_manifest(layout, content)

    parse.__qualname__ = "manifest"
    return parse


def check_manifest(layout: AoiLayout, content: bytes | None) -> ManifestReading:
    """Parse and check a manifest's bytes: valid JSON of the manifest's shape, counts that
    are numbers, and every output path inside the AOI's folder (a tampered path would make
    the inspector read files outside OUT)."""
    if content is None:
        return ManifestReading(None)  # not written yet
    source = layout.manifest_url
    try:
        document = json.loads(content)
    except ValueError as exc:
        return ManifestReading(None, f"{source}: not valid JSON ({exc})")
    try:
        manifest = Manifest.parse(document, source)
    except ManifestError as exc:
        return ManifestReading(None, str(exc))
    counts = document.get("counts")
    if counts is not None and not (
        isinstance(counts, dict)
        and all(isinstance(counts.get(s, 0), int) and not isinstance(counts.get(s, 0), bool) for s in STATUSES)
    ):
        return ManifestReading(None, f"{source}: its counts are not numbers ({str(counts)[:80]})")
    for chip_id, entry in manifest.chips.items():
        for kind, relpath in entry.file_outputs().items():
            try:
                layout.url(relpath)
            except ValueError:
                return ManifestReading(None, f"{source}: chip {chip_id}'s {kind} output {relpath!r} lies outside the output folder")
    return ManifestReading(manifest)


def read_manifest(layout: AoiLayout) -> ManifestReading:
    """The AOI's manifest, read again only when the file changed (see `StampedCache`)."""
    return CACHE.get(layout.manifest_url, _parse_manifest(layout))


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
    damaged: str | None = None  # why the AOI's manifest can't be used

    @property
    def done(self) -> int:
        return self.ok + self.skipped + self.failed


@dataclass
class ProgressWatch:
    """Progress of one AOI, watched through its manifest (a run started anywhere: the
    CLI, a notebook, this dashboard). Rates come from successive readings: only chips
    finished while watched count, never those of earlier runs."""

    layout: AoiLayout
    history: list[tuple[float, int]] = field(default_factory=list)

    def read(self) -> Progress:
        reading = read_manifest(self.layout)
        stats = read_json(self.layout.stats_url)
        stats = stats if isinstance(stats, dict) else {}
        counts = reading.manifest.counts() if reading.manifest else {}
        n_chips = stats.get("n_chips")
        listed = len(reading.manifest.chips) if reading.manifest else 0
        progress = Progress(
            total=n_chips if isinstance(n_chips, int) and n_chips >= listed else listed,
            ok=counts.get("ok", 0),
            skipped=counts.get("skipped", 0),
            failed=counts.get("failed", 0),
            running=lock_held(self.layout),
            damaged=reading.problem,
        )
        now = time.monotonic()
        if not progress.running:
            self.history = []
        elif not self.history or self.history[-1][1] != progress.done:
            self.history.append((now, progress.done))
        self.history = [(t, n) for t, n in self.history if now - t <= 60][-30:]
        if progress.running and len(self.history) >= 2:
            (t0, n0), (t1, n1) = self.history[0], self.history[-1]
            if t1 > t0 and n1 > n0:
                progress.chips_per_second = (n1 - n0) / (t1 - t0)
                progress.eta_seconds = (progress.total - progress.done) / progress.chips_per_second
        return progress


def manifest_of(layout: AoiLayout) -> Manifest | None:
    return read_manifest(layout).manifest


def shown_fold(entry: Any) -> int | None:
    """The chip's fold as `folds.csv` lists it: only done chips with masks are there
    (a failed chip or one without a label has none; during a run it is not known yet)."""
    has_masks = any(kind in entry.outputs for kind in MASK_KINDS) or (
        ZARR_OUTPUT in entry.outputs and entry.label is not None
    )
    return entry.fold if entry.done and entry.fold is not None and has_masks else None


def split_reason(reason: str) -> tuple[str, str]:
    """(file name, problem) of a failure reason `"<path>: <problem>"`, so the table's
    narrow column shows the problem rather than the start of a long path."""
    path, sep, problem = reason.partition(": ")
    if sep and ("/" in path or "\\" in path) and " " not in path.strip():
        return path.replace("\\", "/").rsplit("/", 1)[-1], problem
    return "", reason


TABLE_COLUMNS = ["chip", "status", "reason", "file", "fold", "warnings", "max zero fraction", "first warning"]


def chip_table(manifest: Manifest, live_status: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """One row per chip: status (a run's per-chip news first: the manifest is rewritten
    only every few seconds), reason (without its file), the file, fold, warnings, zero
    fraction. A chip the run reported but the manifest does not list yet is included."""
    rows = []
    live_status = live_status or {}
    for chip_id, entry in manifest.chips.items():
        file_name, problem = split_reason(entry.reason or "")
        rows.append({
            "chip": chip_id,
            "status": live_status.get(chip_id, entry.status),
            "reason": problem,
            "file": file_name,
            "fold": shown_fold(entry),
            "warnings": len(entry.warnings),
            "max zero fraction": round(max(entry.zero_fraction.values(), default=0.0), 4),
            "first warning": entry.warnings[0] if entry.warnings else "",
        })  # fmt: skip
    for chip_id, status in live_status.items():
        if chip_id not in manifest.chips:
            rows.append({"chip": chip_id, "status": status, "reason": "", "file": "", "fold": None,
                         "warnings": 0, "max zero fraction": 0.0, "first warning": ""})  # fmt: skip
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
    stats = read_json(layout.stats_url)
    values = (stats.get("values") if isinstance(stats, dict) else None) or {}
    try:
        saved = np.load(io.BytesIO(files.read_bytes(layout.histograms_url)))
        out = []
        for band, counts in zip(saved["bands"].tolist(), saved["histogram"], strict=True):
            low, high = values.get(str(band), [None, None])
            out.append(BandHistogram(int(band), counts, _cut(low), _cut(high)))
    except (OSError, ValueError, KeyError, TypeError):  # missing or damaged: no histogram shown
        return []
    return out


def _cut(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class Footprints:
    """Chip footprints (lon/lat boxes from stats.json) with their status, and the chips
    that have none (their image could not be read: no place to draw them)."""

    boxes: list[dict[str, Any]]
    without_footprint: dict[str, str]  # chip id -> status


def footprints(layout: AoiLayout, manifest: Manifest | None, live_status: dict[str, str] | None = None) -> Footprints:
    stats = read_json(layout.stats_url)
    boxes = (stats.get("chip_bboxes") if isinstance(stats, dict) else None) or {}
    status: dict[str, str] = {cid: e.status for cid, e in manifest.chips.items()} if manifest else {}
    status.update(live_status or {})
    drawn = []
    for cid, box in sorted(boxes.items()):
        if isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box):
            drawn.append({"chip": cid, "west": box[0], "south": box[1], "east": box[2], "north": box[3],
                          "status": status.get(cid, "pending")})  # fmt: skip
    placed = {row["chip"] for row in drawn}
    missing = {cid: st for cid, st in status.items() if cid not in placed}
    return Footprints(drawn, missing)


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
        try:
            url = layout.url(relpath)
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
        if rgb is not None:
            note = (note + " (image: the source, stretched per chip for display)").strip()
        else:
            note = (note + " (no image to show: neither an RGB output nor a readable source)").strip()
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
            cols, rows = inverse @ (xy[:, 0], xy[:, 1])
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
    import rasterio.errors
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
        try:
            url = layout.url(entry.outputs["binned"])
            with gdal_env(url), rasterio.open(gdal_path(url)) as src:
                binned = src.read(1)
        except (ValueError, OSError, rasterio.errors.RasterioError):  # an unreadable mask counts nothing
            continue
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
