"""A STAC catalog of the outputs (DESIGN.md §5.1): Catalog -> one Collection per AOI ->
per chip an image Item and, for chips with masks, a label Item.

```
OUT/catalog.json
OUT/<AOI>/collection.json
OUT/<AOI>/stac/<chip_id>.json          image Item: the RGB (projection + raster extensions)
OUT/<AOI>/stac/<chip_id>-label.json    label Item: the masks (label extension), source -> image
```

Every link is relative and there are no `self` links (a self-contained catalog: the tree
can be moved or synced to S3 and still resolves). The documents depend only on the
manifest and the chips' headers, never on the time they are written, so a resumed run
writes the same catalog. Pure: dicts in, dicts out; each chip task writes its chip's
Items, the client the Collection and the Catalog.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sn5dask.core.encodings import (
    MASK_ENCODINGS,
    RGB_NODATA,
    RGB_VALUES,
    rgb_descriptions,
)
from sn5dask.core.grid import ChipHeader
from sn5dask.outputs.layout import FOLDS_NAME
from sn5dask.outputs.manifest import ChipEntry, Manifest

STAC_VERSION = "1.1.0"
PROJECTION = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
RASTER = "https://stac-extensions.github.io/raster/v1.1.0/schema.json"
LABEL = "https://stac-extensions.github.io/label/v1.0.1/schema.json"
GEOTIFF = "image/tiff; application=geotiff"
CATALOG_NAME = "catalog.json"
COLLECTION_NAME = "collection.json"
ITEMS_FOLDER = "stac"
#: SpaceNet's licence, which derived training data keeps.
LICENSE = "CC-BY-SA-4.0"
# SpaceNet chips carry no acquisition time: the items say "unknown" as STAC allows, with
# an open range instead of a made-up date.
UNKNOWN_TIME = {"datetime": None, "start_datetime": "0001-01-01T00:00:00Z",
                "end_datetime": "9999-12-31T23:59:59Z"}  # fmt: skip


def item_relpath(chip_id: str, label: bool = False) -> str:
    """An item's path relative to the AOI folder."""
    return f"{ITEMS_FOLDER}/{chip_id}{'-label' if label else ''}.json"


def chip_items(
    aoi: str,
    chip_id: str,
    entry: ChipEntry,
    header: ChipHeader,
    bbox: tuple[float, float, float, float],
    bands: Sequence[int],
) -> list[tuple[str, dict[str, Any]]]:
    """A done chip's Items as (path relative to the AOI folder, document): its image Item,
    and its label Item when it has masks. Written by the chip's own task.

    `bbox`: the chip's footprint as (west, south, east, north) in WGS84.
    """
    items = [(item_relpath(chip_id), image_item(aoi, chip_id, entry, header, bbox, bands))]
    masks = mask_outputs(entry)
    if masks:
        items.append((item_relpath(chip_id, label=True), label_item(aoi, chip_id, entry, header, bbox, masks)))
    return items


def mask_outputs(entry: ChipEntry) -> dict[str, str]:
    """The chip's mask GeoTIFFs, kind -> path (its label Item's assets)."""
    return {kind: path for kind, path in entry.outputs.items() if kind in MASK_ENCODINGS}


def has_items(entry: ChipEntry, bbox: tuple[float, float, float, float] | None) -> bool:
    """Whether a chip has STAC Items: done, with an RGB GeoTIFF and a footprint."""
    return entry.done and bbox is not None and "rgb" in entry.outputs


def aoi_collection(
    manifest: Manifest, lonlat_bboxes: Mapping[str, tuple[float, float, float, float]]
) -> dict[str, Any]:
    """The AOI's Collection, linking the Items of every chip that has them (`has_items`).

    `lonlat_bboxes`: each chip's footprint as (west, south, east, north) in WGS84.
    """
    item_links = []
    for chip_id, entry in manifest.chips.items():
        if not has_items(entry, lonlat_bboxes.get(chip_id)):
            continue
        item_links.append(_link("item", f"./{item_relpath(chip_id)}", "application/geo+json"))
        if mask_outputs(entry):
            item_links.append(_link("item", f"./{item_relpath(chip_id, label=True)}", "application/geo+json"))
    return collection(manifest.aoi, list(lonlat_bboxes.values()), item_links)


def catalog(aois: Sequence[str]) -> dict[str, Any]:
    """`OUT/catalog.json`, linking each AOI's collection."""
    return {
        "type": "Catalog",
        "stac_version": STAC_VERSION,
        "id": "sn5dask",
        "title": "sn5dask training data",
        "description": (
            "SpaceNet road-network training data made by sn5dask: 8-bit RGB chips and road "
            "masks (binary, speed-continuous, speed-binned, 8-channel), one collection per AOI"
        ),
        "links": [_link("root", f"./{CATALOG_NAME}", "application/json")]
        + [_link("child", f"./{aoi}/{COLLECTION_NAME}", "application/json") for aoi in sorted(aois)],
    }


def collection(aoi: str, bboxes: Sequence[tuple[float, float, float, float]], item_links: list[dict[str, Any]]) -> dict[str, Any]:
    extent = list(spatial_extent(bboxes)) if bboxes else [-180.0, -90.0, 180.0, 90.0]
    return {
        "type": "Collection",
        "stac_version": STAC_VERSION,
        "id": aoi,
        "title": aoi,
        "description": f"Training chips of {aoi}: RGB images and road masks; folds in {FOLDS_NAME}",
        "license": LICENSE,
        "extent": {"spatial": {"bbox": [extent]}, "temporal": {"interval": [[None, None]]}},
        "links": [
            _link("root", f"../{CATALOG_NAME}", "application/json"),
            _link("parent", f"../{CATALOG_NAME}", "application/json"),
            _link("describedby", f"./{FOLDS_NAME}", "text/csv", title="spatial folds (CRESI's format)"),
            *item_links,
        ],
    }


def image_item(
    aoi: str,
    chip_id: str,
    entry: ChipEntry,
    header: ChipHeader,
    bbox: tuple[float, float, float, float],
    bands: Sequence[int],
) -> dict[str, Any]:
    return _item(
        aoi,
        f"{aoi}-{chip_id}",
        header,
        bbox,
        extensions=[PROJECTION, RASTER],
        properties={},
        assets={
            "image": {
                "href": f"../{entry.outputs['rgb']}",
                "type": GEOTIFF,
                "title": "8-bit image",
                "description": RGB_VALUES,
                "roles": ["data"],
                "raster:bands": [
                    {"nodata": RGB_NODATA, "data_type": "uint8", "name": name}
                    for name in rgb_descriptions(tuple(bands))
                ],
            }
        },
        links=[],
    )


def label_item(
    aoi: str,
    chip_id: str,
    entry: ChipEntry,
    header: ChipHeader,
    bbox: tuple[float, float, float, float],
    masks: Mapping[str, str],
) -> dict[str, Any]:
    # Raster labels name no property (name: null). Each asset lists the pixel values it
    # holds as its classes (binary 0/255, binned 0 and 36 k, multichannel 0/255 in every
    # band, whose names say the class); the continuous mask is a regression target.
    description = "; ".join(f"{kind}: {MASK_ENCODINGS[kind].values}" for kind in masks)
    tasks = ["segmentation"] + (["regression"] if "continuous" in masks else [])
    return _item(
        aoi,
        f"{aoi}-{chip_id}-label",
        header,
        bbox,
        extensions=[LABEL, PROJECTION, RASTER],
        properties={
            "label:type": "raster",
            "label:properties": None,
            "label:tasks": tasks,
            "label:description": description,
            "sn5dask:fold": entry.fold,
        },
        assets={
            kind: {
                "href": f"../{path}",
                "type": GEOTIFF,
                "title": f"{kind} road mask",
                "description": MASK_ENCODINGS[kind].values,
                "roles": ["data", "labels"],
                "raster:bands": [
                    {"data_type": "uint8", "name": name} for name in MASK_ENCODINGS[kind].bands
                ],
                **_asset_classes(kind),
            }
            for kind, path in masks.items()
        },
        links=[_link("source", f"./{chip_id}.json", "application/geo+json", title="the image")],
    )


def _asset_classes(kind: str) -> dict[str, Any]:
    """A mask asset's `label:classes`: the pixel values it holds (none for a regression
    target such as the continuous mask)."""
    if kind == "continuous":
        return {}
    values = sorted({value for value, _ in MASK_ENCODINGS[kind].classes})
    return {"label:classes": [{"name": None, "classes": values}]}


def _item(
    aoi: str,
    item_id: str,
    header: ChipHeader,
    bbox: tuple[float, float, float, float],
    *,
    extensions: list[str],
    properties: dict[str, Any],
    assets: dict[str, Any],
    links: list[dict[str, Any]],
) -> dict[str, Any]:
    west, south, east, north = bbox
    return {
        "type": "Feature",
        "stac_version": STAC_VERSION,
        "stac_extensions": sorted(extensions),
        "id": item_id,
        "collection": aoi,
        "bbox": [west, south, east, north],
        "geometry": footprint_geometry(bbox),
        "properties": {**UNKNOWN_TIME, **_projection(header), **properties},
        "assets": assets,
        # items live in OUT/<AOI>/stac/
        "links": [
            _link("root", f"../../{CATALOG_NAME}", "application/json"),
            _link("parent", f"../{COLLECTION_NAME}", "application/json"),
            _link("collection", f"../{COLLECTION_NAME}", "application/json"),
            *links,
        ],
    }


def footprint_geometry(bbox: tuple[float, float, float, float]) -> dict[str, Any]:
    """A footprint's GeoJSON geometry. A bbox with west > east crosses the antimeridian
    (RFC 7946 §5.2): its geometry is cut there into two polygons (§3.1.9), one each side,
    instead of one polygon around the rest of the Earth."""
    west, south, east, north = bbox

    def box(w: float, e: float) -> list[list[list[float]]]:
        return [[[w, south], [e, south], [e, north], [w, north], [w, south]]]

    if west <= east:
        return {"type": "Polygon", "coordinates": box(west, east)}
    return {"type": "MultiPolygon", "coordinates": [box(west, 180.0), box(-180.0, east)]}


def spatial_extent(bboxes: Sequence[tuple[float, float, float, float]]) -> tuple[float, float, float, float]:
    """The smallest bbox covering `bboxes`, crossing the antimeridian (west > east) when
    that is narrower than going round (the longitudes covered are found on the circle:
    the widest stretch no bbox covers is what the extent leaves out)."""
    south, north = min(b[1] for b in bboxes), max(b[3] for b in bboxes)
    spans = []  # covered longitude spans on [-180, 180], a crossing bbox as two
    for west, _, east, _ in bboxes:
        spans.extend([(west, 180.0), (-180.0, east)] if west > east else [(west, east)])
    spans.sort()
    merged = [list(spans[0])]
    for start, stop in spans[1:]:
        if start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], stop)
        else:
            merged.append([start, stop])
    # gaps between covered spans, and the one across ±180° (from the last to the first)
    gaps = [(b[0] - a[1], b[0], a[1]) for a, b in zip(merged, merged[1:])]
    gaps.append((merged[0][0] + 360.0 - merged[-1][1], merged[0][0], merged[-1][1]))
    width, west, east = max(gaps)
    if width <= 0:  # every longitude is covered
        return (-180.0, south, 180.0, north)
    # The extent is what the widest gap leaves: west > east when that gap is not the one
    # across ±180°, i.e. when the extent crosses the antimeridian.
    return (west, south, east, north)


def _projection(header: ChipHeader) -> dict[str, Any]:
    from pyproj import CRS

    crs = CRS.from_wkt(header.crs_wkt)
    authority = crs.to_authority()
    return {
        "proj:code": f"{authority[0]}:{authority[1]}" if authority else None,
        "proj:wkt2": crs.to_wkt(),
        "proj:shape": [header.height, header.width],
        "proj:transform": list(header.transform),
    }


def _link(rel: str, href: str, media_type: str, title: str | None = None) -> dict[str, Any]:
    link = {"rel": rel, "href": href, "type": media_type}
    if title:
        link["title"] = title
    return link
