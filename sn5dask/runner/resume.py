"""The resume record of one AOI: the previous manifest read, the chips a re-run may skip
(verified against what is on disk, never trusted), the new manifest started and written.

The rules themselves live with the manifest model (`outputs.manifest`); here they meet the
run's parameters, catalog and files.
"""

from __future__ import annotations

import logging
from typing import Any

from sn5dask.config import RunConfig
from sn5dask.errors import ConfigError, ManifestError, ParamsChangedError, Sn5daskError
from sn5dask.io.catalog import AoiCatalog
from sn5dask.io.chipio import OutputWriter, read_json, write_json
from sn5dask.outputs.layout import AoiLayout
from sn5dask.outputs.manifest import ChipEntry, Manifest, OutputState
from sn5dask.runner.aoistats import AoiStats
from sn5dask.runner.chiptask import ChipResult

log = logging.getLogger("sn5dask")


def read_previous_manifest(layout: AoiLayout, writer: OutputWriter) -> Manifest | ManifestError | None:
    """The previous run's manifest; None when there is none; the `ManifestError` when one
    exists but cannot be read or parsed (what that means is decided with the params)."""
    try:
        document = read_json(writer, layout.manifest_url)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        return ManifestError(f"{layout.manifest_url}: unreadable ({exc})")
    try:
        return Manifest.parse(document, layout.manifest_url)
    except ManifestError as exc:
        return exc


def resumable_chips(
    previous: Manifest | ManifestError | None,
    params: dict[str, Any],
    config: RunConfig,
    catalog: AoiCatalog,
    layout: AoiLayout,
    writer: OutputWriter,
) -> dict[str, ChipEntry]:
    """The chips a re-run may skip, verified against what is on disk; raises when the
    previous outputs were made with other params (or cannot be told apart from such)."""
    if previous is None or config.overwrite:
        return {}
    if isinstance(previous, ManifestError):
        check_damaged_manifest(previous, params, layout, writer)
        return {}
    previous.check_params(params, layout.manifest_url)
    state = OutputState(
        file_sizes=writer.file_sizes(layout.folder, skip=layout.zarr_url),
        zarr_chips=writer.zarr_written_chips(layout.zarr_url) if "zarr" in config.formats else frozenset(),
    )
    return previous.done_entries(params, {c.chip_id: c for c in catalog.chips}, layout, state)


def check_damaged_manifest(
    damage: ManifestError, params: dict[str, Any], layout: AoiLayout, writer: OutputWriter
) -> None:
    """A damaged manifest is not "no previous run": stats.json, or outputs on disk, may say
    a run with other parameters happened. Stop unless they show the same parameters."""
    try:
        stats = read_json(writer, layout.stats_url)
        old_params = stats["params"]
        if not isinstance(old_params, dict):
            raise ValueError("params is not a mapping")
    except (OSError, ValueError, KeyError, TypeError):
        ours = {layout.manifest_url, layout.stats_url, layout.lock_url}
        outputs = [url for url in writer.file_sizes(layout.folder) if url not in ours]
        if outputs:
            raise ConfigError(
                f"{damage}; with no readable {layout.stats_url} nothing tells how the "
                f"{len(outputs)} file(s) in {layout.folder} were made. Re-run with --overwrite "
                "to redo them, or choose another --out"
            ) from None
        log.warning("%s; no outputs found: every chip will be made", damage)
        return
    try:
        Manifest(aoi=layout.aoi, params=old_params).check_params(params, layout.stats_url)
    except ParamsChangedError as exc:
        raise ParamsChangedError(f"{damage}; {exc}") from None
    log.warning("%s; stats.json shows the same parameters: every chip will be redone", damage)


def start_manifest(
    config: RunConfig,
    catalog: AoiCatalog,
    params: dict[str, Any],
    stats: AoiStats,
    done: dict[str, ChipEntry],
) -> Manifest:
    """The new manifest: done chips carried over, chips the scan could not read failed."""
    manifest = Manifest(
        aoi=catalog.aoi, params=params, root=config.root, orphan_labels=catalog.orphan_labels
    )
    for chip in catalog.chips:
        if chip.chip_id in done:
            manifest.chips[chip.chip_id] = done[chip.chip_id]
        elif chip.chip_id in stats.errors:
            manifest.chips[chip.chip_id] = ChipResult.failed(chip, stats.errors[chip.chip_id]).entry
    return manifest


def write_manifest(
    manifest: Manifest, layout: AoiLayout, writer: OutputWriter, *, final: bool
) -> None:
    """Interim writes may fail (a full disk, a flaky bucket): the run goes on and the next
    write retries. The final write must succeed, else the run stops with a clear error."""
    try:
        write_json(writer, layout.manifest_url, manifest.as_json())
    except OSError as exc:
        if final:
            raise Sn5daskError(
                f"{layout.manifest_url}: cannot write the run manifest ({exc}); outputs written "
                "so far are complete, but a re-run cannot know which: free space and re-run"
            ) from None
        log.warning("%s: cannot write the manifest yet (%s); will retry", layout.manifest_url, exc)
