"""Checks before any chip task: the mistakes a run refuses while nothing is written yet
(one line, exit 2), instead of failing chip after chip.

A cluster sn5dask did not start shares no filesystem and no environment with the client:
its workers must see a local ROOT and OUT, and reach an `s3://` one with their own
settings. OUT must not overlap the inputs, and `--bands` must exist in the chips.
"""

from __future__ import annotations

import os
import uuid

from distributed import Client

from sn5dask.config import RunConfig
from sn5dask.errors import ConfigError
from sn5dask.io import files
from sn5dask.io.catalog import AoiCatalog, input_folders
from sn5dask.outputs.layout import output_overlaps_input
from sn5dask.runner.aoistats import AoiStats


def check_workers_see_local_paths(
    client: Client, config: RunConfig, catalogs: list[AoiCatalog]
) -> None:
    """Refuse, before any chip task, a local ROOT or OUT that the workers of a cluster
    sn5dask did not start cannot see (a real cluster shares no filesystem with the
    client: chips would fail one by one with "No such file", and outputs would land on
    the workers' own disks where nobody looks). The client writes a probe file into OUT
    and every worker looks for it; every worker looks for the first chip of ROOT."""
    checks: list[tuple[str, str, str]] = []  # (flag, the client's path, a file in it)
    probe = None
    if files.is_local(config.out):
        files.makedirs(config.out)
        probe = os.path.join(config.out, f".sn5dask-probe-{uuid.uuid4().hex}")
        with open(probe, "wb"):
            pass
        checks.append(("--out", config.out, probe))
    chips = [chip for catalog in catalogs for chip in catalog.chips[:1]]
    if files.is_local(config.root) and chips:
        checks.append(("ROOT", config.root, chips[0].image))
    try:
        for flag, path, marker in checks:
            blind, total = workers_not_seeing(client, marker)
            if blind:
                raise ConfigError(
                    f"{flag} {path} is a folder on this machine that {len(blind)} of "
                    f"{total} workers (e.g. {blind[0]}) do not see: give an s3:// URL, "
                    "or a folder every worker mounts at the same path"
                )
    finally:
        if probe is not None:
            os.remove(probe)


def check_workers_reach_s3(client: Client, config: RunConfig, catalogs: list[AoiCatalog]) -> None:
    """Refuse, before any chip task, an `s3://` ROOT or OUT that a worker of a cluster
    sn5dask did not start cannot reach with its own settings (its environment may lack
    the AWS_ENDPOINT_URL of a MinIO or moto server, a region or credentials: every chip
    would then fail after botocore's retries). Settings are not sent to workers (they may
    hold secrets, and a cluster is configured where it runs): one line names the worker,
    the problem, and the settings that differ from the client's."""
    checks: list[tuple[str, str, str | None]] = []  # (flag, URL, probe object name or None)
    if config.out.startswith("s3://"):
        checks.append(("--out", config.out, f".sn5dask-probe-{uuid.uuid4().hex}"))
    chips = [chip for catalog in catalogs for chip in catalog.chips[:1]]
    if config.root.startswith("s3://") and chips:
        checks.append(("ROOT", chips[0].image, None))
    if not checks:
        return
    mine = files.s3_settings()
    for flag, url, probe in checks:
        problems = client.run(files.s3_reach_problem, url, probe, on_error="return")
        failing = sorted((w, p) for w, p in problems.items() if p is not None)
        if not failing:
            continue
        worker, problem = failing[0]
        theirs = client.run(files.s3_settings, workers=[worker], on_error="return").get(worker)
        differ = ""
        if isinstance(theirs, dict):
            names = [name for name in mine if theirs.get(name) != mine[name]]
            differ = "; ".join(
                f"{name} is {mine[name] or 'not set'} here, {theirs.get(name) or 'not set'} there"
                if name != "credentials"
                else f"credentials {'found (' + str(mine[name]) + ')' if mine[name] else 'none'} here, "
                f"{'found (' + str(theirs.get(name)) + ')' if theirs.get(name) else 'none'} there"
                for name in names
            )
        raise ConfigError(
            f"{flag} {url}: {len(failing)} of {len(problems)} workers (e.g. {worker}) cannot "
            f"reach it ({str(problem)[:200]})"
            + (f"; {differ}" if differ else "")
            + ". Set the same S3 settings in the workers' environment (README: Clusters and S3)"
        )


def workers_not_seeing(client: Client, path: str) -> tuple[list[str], int]:
    """The workers on which a local `path` does not exist (sorted), and how many there are."""
    seen = client.run(os.path.exists, path, on_error="return")
    return sorted(worker for worker, found in seen.items() if found is not True), len(seen)


def check_outputs_apart_from_inputs(config: RunConfig, catalogs: list[AoiCatalog]) -> None:
    """Refuse (before any cluster starts) an OUT whose outputs could overwrite inputs."""
    for catalog in catalogs:
        problem = output_overlaps_input(config.out, catalog.aoi, input_folders(catalog))
        if problem:
            raise ConfigError(
                f"--out {config.out}: {problem}; outputs there could overwrite inputs. "
                "Choose an --out outside the dataset's AOI folders"
            )


def check_bands_exist(config: RunConfig, catalog: AoiCatalog, stats: AoiStats) -> None:
    """When no chip of the AOI has the bands `--bands` asks for, that is the user's choice
    to fix (one line, exit 2), not a failure of every chip."""
    if stats.headers or not stats.band_counts:
        return
    counts = sorted(set(stats.band_counts.values()))
    raise ConfigError(
        f"--bands {','.join(map(str, config.bands))}: the chips of {catalog.aoi} have "
        f"{' or '.join(map(str, counts))} band(s) (e.g. {catalog.chips[0].image}); "
        f"choose bands between 1 and {max(counts)}"
    )
