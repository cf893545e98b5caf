"""Where every output lives: the one owner of paths under `OUT/<AOI>/` (DESIGN.md §5).

```
OUT/<AOI>/PS-RGB/<name>.tif          the 8-bit RGB of a chip
OUT/<AOI>/masks/<kind>/<name>.tif    one folder per mask kind, same file name
OUT/<AOI>/<AOI>.zarr                 the Zarr store; a chip's place in it is "<AOI>.zarr#<i>"
OUT/<AOI>/stats.json                 percentiles, counts, params, versions
OUT/<AOI>/manifest.json              the resume record
OUT/<AOI>/folds.csv                  spatial folds of the chips with masks (CRESI's format)
OUT/<AOI>/histograms.npz             the AOI's per-band histograms (AOI stretch), for plots
OUT/<AOI>/.sn5dask.lock              held while a run writes here
OUT/<AOI>/logs/<chip_id>.log         the traceback of a chip's unexpected error
```

Every output folder uses the same file name per chip (`output_name`: the input name with
`PS-MS` -> `PS-RGB`, sanitised), so trainers pair images and masks by name. Manifest
entries hold paths relative to the AOI folder; `AoiLayout.url` turns them back into URLs
and refuses any that would leave it. No other module builds or parses an output path.
Pure string work: no file is touched here.
"""

from __future__ import annotations

import glob
import os
import posixpath
import re
from collections.abc import Iterable
from dataclasses import dataclass

# Output names are made in the core (discovery needs them too); they are part of the
# layout's vocabulary, so they are importable from here as well.
from sn5dask.core.names import (  # noqa: F401
    MAX_OUTPUT_NAME_BYTES,
    RGB_FOLDER,
    file_stem,
    output_name,
    sanitise,
)
from sn5dask.io import files

MASKS_FOLDER = "masks"
LOGS_FOLDER = "logs"
STATS_NAME = "stats.json"
FOLDS_NAME = "folds.csv"
HISTOGRAMS_NAME = "histograms.npz"
MANIFEST_NAME = "manifest.json"
LOCK_NAME = ".sn5dask.lock"
ZARR_SUFFIX = ".zarr"
#: The manifest's `outputs` key of a chip's Zarr region.
ZARR_OUTPUT = "zarr"
RGB_OUTPUT = "rgb"

_ZARR_REF_RE = re.compile(r"^(?P<store>[A-Za-z0-9_-]+\.zarr)#(?P<index>\d+)$")


def output_overlaps_input(out: str, aoi: str, input_folders: Iterable[str]) -> str | None:
    """Why writing `OUT/<aoi>` could destroy inputs, or None when it cannot.

    Refused: the output AOI folder is an input AOI folder (real SpaceNet AOI folders hold
    `PS-RGB/` files with the very names sn5dask writes), lies inside a folder holding
    inputs, or holds inputs itself. Local paths are compared after resolving symlinks.
    """
    target = _comparable(files.join(out, aoi))
    for folder in sorted(set(input_folders)):
        source = _comparable(folder)
        if target == source:
            return f"the output folder {files.join(out, aoi)} is the input folder {folder}"
        if target.startswith(source + "/") and _holds_inputs(folder):
            return f"the output folder {files.join(out, aoi)} lies inside the input folder {folder}"
        if source.startswith(target + "/"):
            return f"the output folder {files.join(out, aoi)} holds the input folder {folder}"
    return None


def _holds_inputs(folder: str) -> bool:
    """Image and label folders hold inputs; an AOI folder above them does not itself."""
    name = posixpath.basename(folder.rstrip("/"))
    return name in ("PS-MS", "geojson_roads_speed", "geojson_roads")


def _comparable(url: str) -> str:
    if "://" in url:
        return posixpath.normpath(url.split("://", 1)[1])
    return os.path.realpath(url)


@dataclass(frozen=True)
class ZarrRef:
    """A chip's place in the AOI's Zarr store, written in the manifest as `"<store>#<i>"`."""

    store: str
    index: int

    def __str__(self) -> str:
        return f"{self.store}#{self.index}"

    @classmethod
    def parse(cls, text: str) -> ZarrRef:
        """Raises `ValueError` for anything but `<name>.zarr#<non-negative integer>`."""
        match = _ZARR_REF_RE.match(text) if isinstance(text, str) else None
        if match is None:
            raise ValueError(f"{text!r} is not a Zarr reference of the form <name>.zarr#<index>")
        return cls(match.group("store"), int(match.group("index")))


@dataclass(frozen=True)
class AoiLayout:
    """The output folder of one AOI. Small and picklable (sent to workers in `ChipJob`)."""

    out: str
    aoi: str

    @property
    def folder(self) -> str:
        return files.join(self.out, self.aoi)

    def url(self, relpath: str) -> str:
        """URL of a path relative to the AOI folder; `ValueError` if it would leave it."""
        if not isinstance(relpath, str) or not relpath:
            raise ValueError(f"{relpath!r} is not a relative output path")
        return files.join(self.folder, relpath)

    # -- per-chip outputs (relative paths, as the manifest records them) ---------------
    @staticmethod
    def rgb_relpath(name: str) -> str:
        return f"{RGB_FOLDER}/{name}"

    @staticmethod
    def mask_relpath(kind: str, name: str) -> str:
        return f"{MASKS_FOLDER}/{kind}/{name}"

    @property
    def zarr_relpath(self) -> str:
        return f"{self.aoi}{ZARR_SUFFIX}"

    def zarr_ref(self, index: int) -> ZarrRef:
        return ZarrRef(self.zarr_relpath, index)

    # -- per-AOI files -----------------------------------------------------------------
    @property
    def zarr_url(self) -> str:
        return self.url(self.zarr_relpath)

    @property
    def stats_url(self) -> str:
        return self.url(STATS_NAME)

    @property
    def histograms_url(self) -> str:
        return self.url(HISTOGRAMS_NAME)

    @property
    def folds_url(self) -> str:
        return self.url(FOLDS_NAME)

    @property
    def manifest_url(self) -> str:
        return self.url(MANIFEST_NAME)

    @property
    def lock_url(self) -> str:
        return self.url(LOCK_NAME)

    def chip_log_url(self, chip_id: str) -> str:
        return self.url(f"{LOGS_FOLDER}/{sanitise(chip_id)}.log")


def layouts_under(out: str) -> list[AoiLayout]:
    """The layout of every AOI output folder (one holding a manifest) under `out`, or of
    `out` itself when it is one."""
    fs, base = files.filesystem(out)
    base = glob.escape(base.rstrip("/"))  # `[`, `*`, `?` in a folder name are plain text
    found = sorted(
        set(fs.glob(f"{base}/*/{MANIFEST_NAME}")) | set(fs.glob(f"{base}/{MANIFEST_NAME}"))
    )
    layouts = []
    for path in found:
        folder = posixpath.dirname(path)
        parent = files.full_url(fs, posixpath.dirname(folder) or "/")
        layouts.append(AoiLayout(parent, posixpath.basename(folder)))
    return layouts
