"""An AOI's `stats.json` (what the scan found and the run's parameters) and
`histograms.npz` (the AOI's band histograms, for an AOI stretch; the dashboard plots
them). Their paths are `layout.AoiLayout`'s."""

from __future__ import annotations

import io
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from sn5dask.io.chipio import OutputWriter, write_json
from sn5dask.outputs.layout import AoiLayout


def write_stats(
    layout: AoiLayout,
    writer: OutputWriter,
    *,
    root: str,
    scan: Mapping[str, Any],
    stretch: str,
    n_chips: int,
    unreadable_chips: Mapping[str, str],
    footprints: Mapping[str, tuple[float, float, float, float]],
    params: Mapping[str, Any],
    versions: Mapping[str, Any],
    worker_versions: Mapping[str, Any],
    histogram: np.ndarray | None,
    bands: Sequence[int],
) -> None:
    """`scan`: the scan's percentiles and counts (`AoiStats.as_json`); `footprints`: each
    read chip's (west, south, east, north) in WGS84; `versions`: the installation's;
    `worker_versions`: each worker's, as checked before the chips' pass. `histogram`
    (band, value) goes to `histograms.npz`, when the stretch is the AOI's."""
    document = {
        "aoi": layout.aoi,
        "root": root,
        **scan,
        "stretch": stretch,
        "n_chips": n_chips,
        "unreadable_chips": dict(unreadable_chips),
        "chip_bboxes": {chip_id: list(box) for chip_id, box in footprints.items()},
        "params": dict(params),
        "versions": dict(versions),
        "worker_versions": dict(worker_versions),
        "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_json(writer, layout.stats_url, document)
    if histogram is not None:
        buffer = io.BytesIO()
        np.savez_compressed(buffer, bands=np.array(bands), histogram=histogram)
        writer.write_bytes(layout.histograms_url, buffer.getvalue())
