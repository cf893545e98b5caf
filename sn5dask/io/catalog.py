"""Discover the chips of each AOI under a dataset root and pair them with their labels.

The naming rules (`aoi_from_name`, `chip_id_from_name`) are pure; only `discover` lists
files, through fsspec, so ROOT may be a local folder or an `s3://` URL. AOI names and chip
ids are validated or sanitised here and never used as raw paths; a chip's output file name
comes from `layout.output_name`.
"""

from __future__ import annotations

import glob
import hashlib
import os
import posixpath
import re
import stat
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from fsspec import AbstractFileSystem

from sn5dask.core.names import file_stem, output_name, sanitise
from sn5dask.errors import AccessDeniedError, ConfigError, NoChipsError
from sn5dask.io import files

__all__ = ["AoiCatalog", "ChipRecord", "aoi_for_image", "aoi_from_name", "chip_id_from_name",
           "discover", "output_name", "sanitise"]

AOI_NAME_RE = re.compile(r"^AOI_\d+_[A-Za-z0-9_]+$")
CHIP_ID_RE = re.compile(r"^(chip|img)\d+$")
# The AOI is "AOI_<n>_..." up to the next marker that SpaceNet puts after the city name.
_AOI_IN_NAME_RE = re.compile(
    r"(AOI_\d+_[A-Za-z0-9_]+?)(?=_PS-MS|_PS-RGB|_geojson_roads|_chip\d+|_img\d+)"
)
_CHIP_ID_IN_NAME_RE = re.compile(r"(?:^|_)((?:chip|img)\d+)(?=$|[_.])")
IMAGE_FOLDER = "PS-MS"
LABEL_FOLDERS = ("geojson_roads_speed", "geojson_roads")  # in order of preference
_IMAGE_SUFFIXES = (".tif", ".tiff", ".TIF", ".TIFF")


@dataclass(frozen=True)
class ChipRecord:
    """One chip: its image, its label file (or None) and where its outputs go.

    `problem` is set when discovery already knows the chip must fail (a duplicate chip id,
    two images sharing an output name, an input that is not a regular file). The stamps
    (size and modification time, or ETag on S3) let a resume notice a changed input.
    Small and picklable: this is what is sent to workers.
    """

    aoi: str
    chip_id: str
    image: str
    label: str | None
    output_name: str
    problem: str | None = None
    image_stamp: str | None = None
    label_stamp: str | None = None

    @property
    def image_bytes(self) -> int | None:
        """The image's size in bytes as discovery recorded it (the stamp's "size:" part)."""
        try:
            return int(str(self.image_stamp).split(":", 1)[0])
        except ValueError:
            return None


@dataclass
class AoiCatalog:
    """The chips of one AOI (natural order of chip ids) and its unpaired labels."""

    aoi: str
    chips: list[ChipRecord] = field(default_factory=list)
    orphan_labels: list[str] = field(default_factory=list)

    @property
    def images_without_labels(self) -> list[ChipRecord]:
        return [c for c in self.chips if c.label is None]


def aoi_from_name(file_name: str) -> str | None:
    """AOI name in a SpaceNet file name (`..._AOI_7_Moscow_PS-MS_chip0.tif` -> AOI_7_Moscow)."""
    match = _AOI_IN_NAME_RE.search(file_name)
    if match and AOI_NAME_RE.match(match.group(1)):
        return match.group(1)
    return None


def chip_id_from_name(file_name: str) -> str:
    """Chip id (`chip0`, `img990`) in a file name; else the sanitised file stem."""
    stem = file_stem(file_name)
    matches = _CHIP_ID_IN_NAME_RE.findall(stem)
    if matches:
        return matches[-1]
    return sanitise(stem)


def aoi_for_image(image_path: str) -> str:
    """AOI of an image: from its file name, else the folder above `PS-MS/` (sanitised)."""
    name = posixpath.basename(image_path)
    from_name = aoi_from_name(name)
    if from_name:
        return from_name
    return sanitise(_aoi_folder_name(image_path))


@dataclass(frozen=True)
class _Listed:
    """A file found by discovery: its URL, whether it is a regular file, its stamp."""

    url: str
    regular: bool
    stamp: str


def discover(root: str, aois: list[str] | None = None, *, exclude: str | None = None) -> list[AoiCatalog]:
    """Find `*/PS-MS/*.tif` (or `PS-MS/*.tif` when ROOT is one AOI folder) and pair labels.

    Nothing found is dropped silently: labels without an image are each AOI's
    `orphan_labels` (an AOI with labels only is returned with no chips), and chips that
    cannot be processed carry their `problem`. Symlinked AOI folders are followed (the
    fixed-depth patterns cannot loop). Files under `exclude` (the run's OUT) are never
    inputs. AOI folder names that sanitise to one name are kept apart by a suffix.
    Raises `NoChipsError` when no image is found (or none of the requested `aois`).
    """
    fs, base = files.filesystem(root)
    base = base.rstrip("/") or "/"
    excluded = _normalised(exclude) if exclude else None
    if excluded is not None and (_under(root, excluded) or _in_input_folder(excluded)):
        excluded = None  # OUT holds ROOT or lies among inputs: the run refuses such an OUT
    images = _list(fs, base, IMAGE_FOLDER, _IMAGE_SUFFIXES, excluded)
    labels_found = {
        folder: _list(fs, base, folder, (".geojson", ".json"), excluded) for folder in LABEL_FOLDERS
    }
    if not images:
        raise NoChipsError(
            f"{root}: no chips found (expected <ROOT>/<AOI>/PS-MS/*.tif or <ROOT>/PS-MS/*.tif)"
        )
    folder_aoi = _folder_aoi_names(
        [listed.url for listed in images] + [l.url for found in labels_found.values() for l in found]
    )

    def aoi_of(url: str) -> str:
        return aoi_from_name(posixpath.basename(url)) or folder_aoi[_aoi_folder_name(url)]

    labels_by_key: dict[tuple[str, str], _Listed] = {}
    for folder in reversed(LABEL_FOLDERS):  # preferred folder written last, so it wins
        for listed in labels_found[folder]:
            key = (aoi_of(listed.url), chip_id_from_name(posixpath.basename(listed.url)))
            labels_by_key[key] = listed

    by_key: dict[tuple[str, str], list[_Listed]] = defaultdict(list)
    for listed in images:
        by_key[(aoi_of(listed.url), chip_id_from_name(posixpath.basename(listed.url)))].append(listed)

    catalogs: dict[str, AoiCatalog] = {}
    for (aoi, chip_id), found in by_key.items():
        catalog = catalogs.setdefault(aoi, AoiCatalog(aoi))
        label = labels_by_key.get((aoi, chip_id))
        urls = sorted(listed.url for listed in found)
        for listed in sorted(found, key=lambda item: item.url):
            problem = None
            if len(found) > 1:
                problem = f"duplicate chip id {chip_id} in {aoi}: " + " and ".join(urls)
            elif not listed.regular:
                problem = f"{listed.url}: not a regular file (a FIFO, device or socket): not read"
            elif label is not None and not label.regular:
                problem = f"{label.url}: label is not a regular file (a FIFO, device or socket): not read"
            catalog.chips.append(
                ChipRecord(
                    aoi=aoi,
                    chip_id=chip_id,
                    image=listed.url,
                    label=label.url if label else None,
                    output_name=output_name(posixpath.basename(listed.url)),
                    problem=problem,
                    image_stamp=listed.stamp,
                    label_stamp=label.stamp if label else None,
                )
            )
    paired = {(c.aoi, c.chip_id) for cat in catalogs.values() for c in cat.chips}
    for key, listed in sorted(labels_by_key.items()):
        if key not in paired:
            catalogs.setdefault(key[0], AoiCatalog(key[0])).orphan_labels.append(listed.url)

    for catalog in catalogs.values():
        catalog.chips = _shared_output_names_fail(catalog.chips)
        catalog.chips.sort(key=lambda c: (_natural_key(c.chip_id), c.image))
    selected = [catalogs[name] for name in sorted(catalogs)]
    if aois:
        missing = [a for a in aois if a not in catalogs]
        if missing:
            raise NoChipsError(
                f"{root}: AOI(s) {', '.join(missing)} not found; found "
                f"{', '.join(sorted(catalogs)) or 'none'}"
            )
        selected = [catalogs[a] for a in aois if catalogs[a].chips]
        if not selected:
            raise NoChipsError(f"{root}: AOI(s) {', '.join(aois)} have no PS-MS chips")
    return selected


def input_folders(catalog: AoiCatalog) -> set[str]:
    """The folders a catalog's inputs live in: each image's and label's folder, and the AOI
    folder above them."""
    folders: set[str] = set()
    for path in [c.image for c in catalog.chips] + [c.label for c in catalog.chips if c.label]:
        folders.add(posixpath.dirname(path))
        folders.add(posixpath.dirname(posixpath.dirname(path)))
    for path in catalog.orphan_labels:
        folders.add(posixpath.dirname(path))
    return folders


def _shared_output_names_fail(chips: list[ChipRecord]) -> list[ChipRecord]:
    """Chips whose images map to one output file name (names that differ only in
    characters sanitising replaces) all fail, naming every image: one would overwrite
    the other."""
    by_name: dict[str, list[ChipRecord]] = defaultdict(list)
    for chip in chips:
        by_name[chip.output_name.lower()].append(chip)
    out = []
    for chip in chips:
        sharing = by_name[chip.output_name.lower()]
        if len(sharing) > 1 and chip.problem is None:
            images = " and ".join(sorted(c.image for c in sharing))
            problem = f"output name {chip.output_name} is shared by {images}: rename one of them"
            chip = ChipRecord(**{**chip.__dict__, "problem": problem})
        out.append(chip)
    return out


def _aoi_folder_name(path: str) -> str:
    """The raw name of the AOI folder of an input (the folder above PS-MS/ or labels/)."""
    return posixpath.basename(posixpath.dirname(posixpath.dirname(path)))


def _folder_aoi_names(paths: Iterable[str]) -> dict[str, str]:
    """AOI name for each raw AOI folder name: sanitised, and where two different folder
    names sanitise to the same text (non-Latin names), each gets a short hash of its raw
    name so that they stay apart (never merged under one set of percentiles)."""
    raw_names = {_aoi_folder_name(path) for path in paths}
    by_sanitised: dict[str, set[str]] = defaultdict(set)
    for raw in raw_names:
        by_sanitised[sanitise(raw)].add(raw)
    names = {}
    for clean, raws in by_sanitised.items():
        for raw in raws:
            names[raw] = clean if len(raws) == 1 else f"{clean}_{hashlib.sha1(raw.encode()).hexdigest()[:8]}"
    return names


def _list(
    fs: AbstractFileSystem, base: str, folder: str, suffixes: tuple[str, ...], excluded: str | None
) -> list[_Listed]:
    """Files `<base>/*/<folder>/*` and `<base>/<folder>/*` ending in `suffixes`."""
    found: dict[str, _Listed] = {}
    if files.is_local_fs(fs):
        for pattern in (os.path.join(glob.escape(base), "*", folder, "*"), os.path.join(glob.escape(base), folder, "*")):
            # The standard library follows symlinked folders (fsspec's local glob does not)
            # and, with include_hidden, lists names starting with a dot too.
            for path in glob.glob(pattern, include_hidden=True):
                if path.endswith(suffixes) and not _under(path, excluded):
                    found[path] = _listed_local(path)
    else:
        # `[`, `*` and `?` are legal in keys: the base is matched as it is written
        for pattern in (f"{glob.escape(base)}/*/{folder}/*", f"{glob.escape(base)}/{folder}/*"):
            try:
                listed = fs.glob(pattern, detail=True)
            except PermissionError as exc:
                raise AccessDeniedError(files.access_denied_message(files.full_url(fs, base), exc)) from None
            except Exception as exc:
                unreachable = files.unreachable_endpoint_message(files.full_url(fs, base), exc)
                if unreachable is None:
                    raise
                raise ConfigError(unreachable) from None
            for path, info in listed.items():
                url = files.full_url(fs, path)
                if path.endswith(suffixes) and not _under(url, excluded):
                    found[url] = _listed_remote(url, info)
    return [found[url] for url in sorted(found)]


def _listed_local(path: str) -> _Listed:
    try:
        info = os.stat(path)
    except OSError:  # a dangling link: reading it will fail with the reason
        return _Listed(path, True, "missing")
    return _Listed(path, stat.S_ISREG(info.st_mode), f"{info.st_size}:{info.st_mtime_ns}")


def _listed_remote(url: str, info: dict[str, Any]) -> _Listed:
    version = info.get("ETag") or info.get("LastModified") or info.get("mtime") or ""
    return _Listed(url, info.get("type", "file") == "file", f"{info.get('size')}:{version}")


def _in_input_folder(path: str) -> bool:
    parts = path.replace("\\", "/").split("/")
    return any(part in (IMAGE_FOLDER, *LABEL_FOLDERS) for part in parts)


def _normalised(url: str) -> str:
    if "://" in url:
        return url.rstrip("/")
    return os.path.realpath(url)


def _under(path: str, folder: str | None) -> bool:
    if folder is None:
        return False
    normalised = _normalised(path)
    return normalised == folder or normalised.startswith(folder.rstrip("/") + "/")


def _natural_key(chip_id: str) -> tuple[str, int, str]:
    match = re.match(r"^([A-Za-z_]+)(\d+)$", chip_id)
    if match:
        return (match.group(1), int(match.group(2)), "")
    return (chip_id, -1, chip_id)
