"""Discover the chips of each AOI under a dataset root and pair them with their labels.

The naming rules (`aoi_from_name`, `chip_id_from_name`) are pure; only `discover` lists
files, through fsspec, so ROOT may be a local folder or an `s3://` URL. AOI names and chip
ids are validated or sanitised here and never used as raw paths; a chip's output file name
comes from `layout.output_name`.
"""

from __future__ import annotations

import posixpath
import re
from collections import defaultdict
from dataclasses import dataclass, field

from fsspec import AbstractFileSystem

from sn5dask import files
from sn5dask.errors import NoChipsError
from sn5dask.layout import file_stem, output_name, sanitise

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

    `problem` is set when discovery already knows the chip must fail (duplicate id).
    Small and picklable: this is what is sent to workers.
    """

    aoi: str
    chip_id: str
    image: str
    label: str | None
    output_name: str
    problem: str | None = None


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
    parent = posixpath.basename(posixpath.dirname(posixpath.dirname(image_path)))
    return sanitise(parent)


def discover(root: str, aois: list[str] | None = None) -> list[AoiCatalog]:
    """Find `*/PS-MS/*.tif` (or `PS-MS/*.tif` when ROOT is one AOI folder) and pair labels.

    Raises `NoChipsError` when nothing is found (or none of the requested `aois`).
    """
    fs, base = files.filesystem(root)
    base = base.rstrip("/")
    image_paths = _glob_many(fs, base, IMAGE_FOLDER, _IMAGE_SUFFIXES)
    label_paths = {
        folder: _glob_many(fs, base, folder, (".geojson", ".json")) for folder in LABEL_FOLDERS
    }
    if not image_paths:
        raise NoChipsError(
            f"{root}: no chips found (expected <ROOT>/<AOI>/PS-MS/*.tif or <ROOT>/PS-MS/*.tif)"
        )

    labels_by_key: dict[tuple[str, str], str] = {}
    for folder in reversed(LABEL_FOLDERS):  # preferred folder written last, so it wins
        for path in label_paths[folder]:
            name = posixpath.basename(path)
            aoi = aoi_from_name(name) or sanitise(
                posixpath.basename(posixpath.dirname(posixpath.dirname(path)))
            )
            labels_by_key[(aoi, chip_id_from_name(name))] = files.full_url(fs, path)

    by_key: dict[tuple[str, str], list[str]] = defaultdict(list)
    for path in image_paths:
        by_key[(aoi_for_image(path), chip_id_from_name(posixpath.basename(path)))].append(
            files.full_url(fs, path)
        )

    catalogs: dict[str, AoiCatalog] = {}
    for (aoi, chip_id), paths in by_key.items():
        catalog = catalogs.setdefault(aoi, AoiCatalog(aoi))
        label = labels_by_key.get((aoi, chip_id))
        problem = None
        if len(paths) > 1:
            problem = f"duplicate chip id {chip_id} in {aoi}: " + " and ".join(sorted(paths))
        for path in sorted(paths):
            catalog.chips.append(
                ChipRecord(
                    aoi=aoi,
                    chip_id=chip_id,
                    image=path,
                    label=label,
                    output_name=output_name(posixpath.basename(path)),
                    problem=problem,
                )
            )
    paired = {(c.aoi, c.chip_id) for cat in catalogs.values() for c in cat.chips}
    for key, path in sorted(labels_by_key.items()):
        if key not in paired:
            catalogs.setdefault(key[0], AoiCatalog(key[0])).orphan_labels.append(path)

    for catalog in catalogs.values():
        catalog.chips.sort(key=lambda c: (_natural_key(c.chip_id), c.image))
    selected = [catalogs[name] for name in sorted(catalogs) if catalogs[name].chips]
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


def _glob_many(fs: AbstractFileSystem, base: str, folder: str, suffixes: tuple[str, ...]) -> list[str]:
    found: set[str] = set()
    for pattern in (f"{base}/*/{folder}/*", f"{base}/{folder}/*"):
        for path in fs.glob(pattern):
            if path.endswith(suffixes):
                found.add(path)
    return sorted(found)


def _natural_key(chip_id: str) -> tuple[str, int, str]:
    match = re.match(r"^([A-Za-z_]+)(\d+)$", chip_id)
    if match:
        return (match.group(1), int(match.group(2)), "")
    return (chip_id, -1, chip_id)
