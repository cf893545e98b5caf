"""sn5dask: SpaceNet 5 road-network training data at city scale on a Dask cluster.

Public API: `run`, `open_aoi`, `open_store`, `chip_dataarray`, `aoi_percentiles`, `aoi_histograms`, `burn_masks`,
`stretch_to_uint8`, `show_versions`, the config model `RunConfig` (+ `load_config`) and the
exception base `Sn5daskError`.

The names are imported on first use (PEP 562): a dask worker that unpickles a task from
`sn5dask.runner.chiptask` then imports only what that task needs, not xarray and the whole API
(imports every worker would otherwise make on the critical path of every run).
"""

from __future__ import annotations

from importlib import import_module, metadata
from typing import TYPE_CHECKING, Any

try:
    __version__ = metadata.version("sn5dask")
except metadata.PackageNotFoundError:  # pragma: no cover - a source tree that is not installed
    __version__ = "unknown"

_EXPORTS = {
    "RunConfig": "sn5dask.config",
    "load_config": "sn5dask.config",
    "Sn5daskError": "sn5dask.errors",
    "aoi_histograms": "sn5dask.api",
    "aoi_percentiles": "sn5dask.api",
    "burn_masks": "sn5dask.api",
    "chip_dataarray": "sn5dask.runner.aoiarray",
    "open_aoi": "sn5dask.runner.aoiarray",
    "open_store": "sn5dask.runner.aoiarray",
    "run": "sn5dask.runner.pipeline",
    "band_cut": "sn5dask.core.stretch",
    "stretch_to_uint8": "sn5dask.core.stretch",
    "show_versions": "sn5dask.versions",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from sn5dask.api import aoi_histograms, aoi_percentiles, burn_masks
    from sn5dask.config import RunConfig, load_config
    from sn5dask.core.stretch import band_cut, stretch_to_uint8
    from sn5dask.errors import Sn5daskError
    from sn5dask.runner.aoiarray import chip_dataarray, open_aoi, open_store
    from sn5dask.runner.pipeline import run
    from sn5dask.versions import show_versions


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sn5dask' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
