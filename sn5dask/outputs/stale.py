"""What earlier runs left in an AOI's output folder, and what of it a run removes.

OUT, the manifest, folds.csv and the STAC catalog agree after every run: what an earlier
manifest recorded (its chips' GeoTIFFs and Items, its collection, its Zarr store) and the
new run does not list is removed when the new run finishes. Until then the new manifest
carries those paths (`Manifest.superseded`), so a run that stops hands them to its resume.
Only paths of the shapes sn5dask gives its outputs are ever taken from a manifest.
"""

from __future__ import annotations

import posixpath
from collections.abc import Collection

from sn5dask.core.encodings import MASK_KINDS
from sn5dask.errors import ManifestError
from sn5dask.io import files
from sn5dask.io.chipio import OutputWriter
from sn5dask.outputs import stac
from sn5dask.outputs.layout import RGB_OUTPUT, ZARR_OUTPUT, AoiLayout
from sn5dask.outputs.manifest import Manifest


def earlier_outputs(previous: Manifest | ManifestError | None, layout: AoiLayout) -> list[str]:
    """What earlier runs made in this AOI's folder as the previous manifest records it
    (paths relative to the folder): its chips' GeoTIFFs and STAC Items, its collection, its
    Zarr store, and what that run had itself taken over (`Manifest.superseded`). Only
    paths of the shapes sn5dask gives its outputs: never the manifest, the lock, a store's
    chunk, a folder or a path leaving the AOI's folder, whatever a manifest says."""
    if not isinstance(previous, Manifest):
        return []
    listed = set(previous.superseded)
    for chip_id, entry in previous.chips.items():
        listed.update(path for kind, path in entry.file_outputs().items() if kind in (RGB_OUTPUT, *MASK_KINDS))
        if ZARR_OUTPUT in entry.outputs:
            listed.add(layout.zarr_relpath)
        if RGB_OUTPUT in entry.outputs:
            listed.update((stac.item_relpath(chip_id), stac.item_relpath(chip_id, label=True), stac.COLLECTION_NAME))
    return sorted(path for path in listed if _is_output_path(path, layout))


def _is_output_path(relpath: str, layout: AoiLayout) -> bool:
    if posixpath.normpath(relpath) != relpath:
        return False
    if relpath in (stac.COLLECTION_NAME, layout.zarr_relpath):
        return True
    name = posixpath.basename(relpath)
    if name in ("", ".", ".."):
        return False
    shapes = {layout.rgb_relpath(name), stac.item_relpath(name.removesuffix(".json"))}
    shapes.update(layout.mask_relpath(kind, name) for kind in MASK_KINDS)
    return relpath in shapes


def listed_outputs(
    manifest: Manifest,
    footprints: dict[str, tuple[float, float, float, float]],
    formats: Collection[str],
    layout: AoiLayout,
) -> set[str]:
    """What this run's `manifest` lists or makes besides its chips' files (paths relative
    to the AOI folder): the chips' GeoTIFFs, their STAC Items, the collection, the store."""
    listed: set[str] = set()
    for chip_id, entry in manifest.chips.items():
        listed.update(posixpath.normpath(path) for path in entry.file_outputs().values())
        if "geotiff" in formats and stac.has_items(entry, footprints.get(chip_id)):
            listed.add(stac.item_relpath(chip_id))
            if stac.mask_outputs(entry):
                listed.add(stac.item_relpath(chip_id, label=True))
    if "geotiff" in formats:
        listed.add(stac.COLLECTION_NAME)
    if "zarr" in formats:
        listed.add(layout.zarr_relpath)
    return listed


def not_listed_yet(
    earlier: list[str],
    manifest: Manifest,
    footprints: dict[str, tuple[float, float, float, float]],
    formats: Collection[str],
    layout: AoiLayout,
) -> list[str]:
    """What earlier runs made that a run's starting `manifest` does not list: removed at
    its end unless listed by then, and carried on by its resume if it stops before. The
    collection and the Zarr store are always carried: until a chip lists them, the
    manifest saved says nothing of them."""
    listed = listed_outputs(manifest, footprints, formats, layout) - {stac.COLLECTION_NAME, layout.zarr_relpath}
    return [path for path in earlier if path not in listed]


def remove_stale_outputs(
    earlier: list[str],
    manifest: Manifest,
    footprints: dict[str, tuple[float, float, float, float]],
    formats: Collection[str],
    layout: AoiLayout,
    writer: OutputWriter,
) -> list[str]:
    """Delete what earlier runs made (`earlier_outputs`) that this run's final manifest
    does not list, so that OUT, the manifest, folds.csv and the catalog agree; returns the
    URLs removed. Only what an sn5dask manifest recorded is touched: never an input, never
    a file nobody listed."""
    keep = listed_outputs(manifest, footprints, formats, layout)
    stale = sorted(set(earlier) - keep)
    present = writer.file_sizes(layout.folder, skip=layout.zarr_url) if stale else {}  # files only, one listing
    removed = []
    for relpath in stale:
        url = layout.url(relpath)
        if relpath == layout.zarr_relpath:
            if files.exists(url):
                files.remove_tree(url)
                removed.append(url)
        elif url in present:
            writer.remove(url)
            removed.append(url)
    return removed
