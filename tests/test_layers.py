"""The package's layers (docs/design.md): each imports only from the layers beneath it, and
the core none of the libraries that touch files, GDAL or the cluster."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sn5dask"
UI = ("sn5dask.cli", "sn5dask.dashboard", "sn5dask.api", "sn5dask.training")
#: The run's options and the installation's versions: for the runner and the UI only.
RUN_LEVEL = ("sn5dask.config", "sn5dask.versions")
#: layer folder -> names its modules must never import (at the top or inside a function)
FORBIDDEN = {
    "core": ("rasterio", "fsspec", "s3fs", "zarr", "dask", "distributed",
             "sn5dask.io", "sn5dask.outputs", "sn5dask.runner", *RUN_LEVEL, *UI),
    "io": ("sn5dask.outputs", "sn5dask.runner", *RUN_LEVEL, *UI),
    "outputs": ("sn5dask.runner", *RUN_LEVEL, *UI),
    "runner": UI,
}  # fmt: skip


def imported_names(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import statement of a file, relative ones resolved; for
    `from package import name`, `package.name` too (the name may be a module)."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            names.append((node.lineno, module))
            names += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return names


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_a_layer_imports_nothing_above_it(layer: str) -> None:
    upward = [
        f"{path.relative_to(PACKAGE.parent)}:{line}: {module}"
        for path in sorted((PACKAGE / layer).glob("*.py"))
        for line, module in imported_names(path)
        if any(module == name or module.startswith(name + ".") for name in FORBIDDEN[layer])
    ]  # fmt: skip
    assert upward == []


def test_importing_the_core_loads_no_gdal_files_or_cluster_library() -> None:
    # In a fresh interpreter: dask itself may come in with odc-geo's GeoBox (odc-geo's own
    # import), but no GDAL, no file system layer, no Zarr and no distributed.
    modules = sorted(f"sn5dask.core.{path.stem}" for path in (PACKAGE / "core").glob("*.py") if path.stem != "__init__")
    code = (f"import sys, importlib; [importlib.import_module(m) for m in {modules!r}]; "
            "print(sorted(m for m in ('rasterio', 'fsspec', 's3fs', 'zarr', 'distributed') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert loaded.strip() == "[]"
