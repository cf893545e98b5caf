"""The STAC files the client writes when an AOI ends: the AOI's Collection and the
Catalog under OUT that links every AOI's (the documents are `stac`'s; each chip task
writes its own chip's Items)."""

from __future__ import annotations

from collections.abc import Mapping

from sn5dask.io import files
from sn5dask.io.chipio import OutputWriter, read_json, write_json
from sn5dask.outputs import stac
from sn5dask.outputs.layout import AoiLayout, layouts_under
from sn5dask.outputs.manifest import Manifest


def write_collection(
    manifest: Manifest,
    footprints: Mapping[str, tuple[float, float, float, float]],
    layout: AoiLayout,
    writer: OutputWriter,
) -> None:
    """The AOI's Collection (`OUT/<AOI>/collection.json`)."""
    write_json(writer, layout.url(stac.COLLECTION_NAME), stac.aoi_collection(manifest, footprints))


def write_root_catalog(out: str, writer: OutputWriter) -> None:
    """`OUT/catalog.json`, linking every AOI collection under OUT (this run's and earlier).
    With none left, a catalog sn5dask wrote is removed (it would link what is gone); a
    file of another tool under that name is left alone."""
    aois = [layout.aoi for layout in layouts_under(out) if writer.exists(layout.url(stac.COLLECTION_NAME))]
    url = files.join(out, stac.CATALOG_NAME)
    if aois:
        write_json(writer, url, stac.catalog(aois))
        return
    try:
        ours = read_json(writer, url).get("id") == stac.catalog([])["id"]
    except (OSError, ValueError, AttributeError):
        ours = False
    if ours:
        writer.remove(url)
