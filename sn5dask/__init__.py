"""sn5dask: SpaceNet 5 road-network training data at city scale on a Dask cluster.

Public API: `run`, `open_aoi`, `aoi_percentiles`, `burn_masks`, `stretch_to_uint8`,
`show_versions`, the config model `RunConfig` and the exception base `Sn5daskError`.
"""

from __future__ import annotations

from sn5dask.api import aoi_histograms, aoi_percentiles, burn_masks, open_aoi
from sn5dask.config import RunConfig, load_config
from sn5dask.errors import Sn5daskError
from sn5dask.pipeline import run
from sn5dask.stretch import stretch_to_uint8
from sn5dask.versions import show_versions

__all__ = [
    "RunConfig",
    "aoi_histograms",
    "Sn5daskError",
    "aoi_percentiles",
    "burn_masks",
    "load_config",
    "open_aoi",
    "run",
    "show_versions",
    "stretch_to_uint8",
]
