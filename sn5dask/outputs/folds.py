"""An AOI's `folds.csv`: which chips a trainer may list, with their spatial fold (the
folds themselves are `core.folds`'s)."""

from __future__ import annotations

from collections.abc import Sequence

from sn5dask.core.folds import folds_csv
from sn5dask.io.catalog import AoiCatalog
from sn5dask.io.chipio import OutputWriter
from sn5dask.outputs.layout import AoiLayout
from sn5dask.outputs.manifest import Manifest


def write_folds(
    manifest: Manifest,
    catalog: AoiCatalog,
    masks: Sequence[str],
    formats: Sequence[str],
    layout: AoiLayout,
    writer: OutputWriter,
) -> bool:
    """`folds.csv`: the chips whose masks were written (and RGB, for GeoTIFF runs), by
    RGB file name, so a trainer listing it never asks for a missing file. With no such
    chip there is no file (a header-only CSV crashes CRESI's `get_csv_folds`) and an old
    one is removed; returns whether one was written."""
    rows = {}
    for chip in catalog.chips:
        entry = manifest.chips[chip.chip_id]
        has_masks = any(kind in entry.outputs for kind in masks) or (
            "zarr" in entry.outputs and bool(masks) and chip.label is not None
        )
        has_rgb = "rgb" in entry.outputs or "geotiff" not in formats
        if entry.done and entry.fold is not None and has_masks and has_rgb:
            rows[chip.output_name] = entry.fold
    if not rows:
        writer.remove(layout.folds_url)
        return False
    writer.write_bytes(layout.folds_url, folds_csv(rows).encode())
    return True
