"""Versions of sn5dask and the libraries that decide its output (for stats.json, bug reports)."""

from __future__ import annotations

import platform
import sys
from importlib import metadata

_LIBRARIES = (
    "numpy", "rasterio", "shapely", "pyproj", "geopandas", "odc-geo", "xarray",
    "rioxarray", "zarr", "numcodecs", "dask", "distributed", "fsspec", "s3fs",
)  # fmt: skip


def versions() -> dict[str, str]:
    """sn5dask, Python, GDAL/GEOS/PROJ and the key libraries' versions."""
    found = {"sn5dask": _version("sn5dask"), "python": platform.python_version()}
    for name in _LIBRARIES:
        found[name] = _version(name)
    try:
        import rasterio
        import shapely

        found["gdal"] = rasterio.__gdal_version__
        found["geos"] = shapely.geos_version_string
        import pyproj

        found["proj"] = pyproj.proj_version_str
    except ImportError:  # pragma: no cover - all are dependencies
        pass
    return found


def show_versions() -> None:
    """Write the versions to stdout, one per line (paste them into a bug report)."""
    for name, version in versions().items():
        sys.stdout.write(f"{name:>12}: {version}\n")


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


if __name__ == "__main__":  # `python -m sn5dask.versions`
    show_versions()
