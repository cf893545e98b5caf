"""Workers that do not run the client's versions (slow: a real `dask scheduler` and
`dask worker` processes, each in a folder and environment of its own).

A worker without sn5dask, or with another version, must stop the run with one line that
names the worker and both versions: before the first task, and for a worker that joins
mid-run; never a silent hang, never "ok" outputs from another version."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

import sn5dask
from tests.procs import (
    python_with_sn5dask_version,
    python_without_sn5dask,
    real_cluster,
    sn5dask_cli,
    start_worker,
    stop,
)

pytestmark = pytest.mark.slow
AOI = "AOI_99_Synthetic"
N_LATE = 30  # full-size chips: a write pass long enough (~10 s on one worker) to join


def one_line_error(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert "Traceback" not in output, output
    return " ".join(" ".join(lines).split())  # rich may wrap the line


def test_a_worker_with_another_sn5dask_stops_the_run_before_any_task(small_aoi, tmp_path) -> None:
    envs = [{"SN5DASK_TEST_CWD": str(tmp_path)}, python_with_sn5dask_version(tmp_path / "w2", "9.9.9")]
    with real_cluster(2, worker_envs=envs) as cluster:
        started = time.monotonic()
        process = sn5dask_cli("run", small_aoi.root, "--out", tmp_path / "out", "--scheduler", cluster.address)
        output, _ = process.communicate(timeout=120)
        elapsed = time.monotonic() - started
    message = one_line_error(output)
    assert process.returncode == 2, output
    assert f"sn5dask 9.9.9 there, {sn5dask.__version__} here" in message, output
    assert "error: worker tcp://127.0.0.1:" in message and "install the same versions" in message
    assert not list((tmp_path / "out").rglob("*.tif")) and elapsed < 60


def test_workers_without_sn5dask_are_one_line_not_a_hang(small_aoi, tmp_path) -> None:
    envs = [python_without_sn5dask(tmp_path / "bare")] * 2
    with real_cluster(2, worker_envs=envs) as cluster:
        process = sn5dask_cli("run", small_aoi.root, "--out", tmp_path / "out", "--scheduler", cluster.address)
        output, _ = process.communicate(timeout=120)
    message = one_line_error(output)
    assert process.returncode == 2, output
    assert f"sn5dask not installed there, {sn5dask.__version__} here" in message, output
    assert not list((tmp_path / "out").rglob("*.tif"))


def run_with_a_late_worker(tmp_path: Path, late_env: dict[str, str]) -> tuple[int, str, Path]:
    """A run of N_LATE full-size chips on one worker; a worker with `late_env` joins as the
    write pass starts. Returns the exit code, the output and OUT."""
    from sn5dask.synthetic import make_synthetic_aoi

    aoi = make_synthetic_aoi(tmp_path / "in", n_chips=N_LATE, size=1300, seed=5)
    out = tmp_path / "out"
    with real_cluster(1, worker_envs=[{"SN5DASK_TEST_CWD": str(tmp_path)}]) as cluster:
        process = sn5dask_cli("run", aoi.root, "--out", out, "--scheduler", cluster.address)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (out / AOI / "manifest.json").exists():
            time.sleep(0.05)
        late = start_worker(cluster.address, late_env)
        try:
            output, _ = process.communicate(timeout=180)
        finally:
            stop(late)
    return process.returncode, output, out


def test_a_worker_without_sn5dask_joining_mid_run_is_said(tmp_path) -> None:
    """A bare worker dies unpickling the first task it is sent (distributed runs it
    elsewhere): the run completes, and says so instead of staying silent."""
    code, output, out = run_with_a_late_worker(tmp_path, python_without_sn5dask(tmp_path / "bare"))
    message = one_line_error(output)
    assert code == 0, output
    assert "warning: worker tcp://127.0.0.1:" in message and "joined and was lost at once" in message, output
    assert len(list((out / AOI / "PS-RGB").glob("*.tif"))) == N_LATE
    stats = json.loads((out / AOI / "stats.json").read_text())
    (worker, found), = stats["worker_versions"].items()  # the worker checked before the scan
    assert worker.startswith("tcp://127.0.0.1:") and found["sn5dask"] == sn5dask.__version__
    assert found["gdal"] == stats["versions"]["gdal"]


def test_a_worker_with_another_version_joining_mid_run_stops_it(tmp_path) -> None:
    """A worker whose sn5dask says 9.9.9 joins mid-run: one line naming it and both
    versions, exit 2; only chips of matching workers are recorded."""
    code, output, out = run_with_a_late_worker(tmp_path, python_with_sn5dask_version(tmp_path / "v9", "9.9.9"))
    message = one_line_error(output)
    assert code == 2, output
    assert "error: worker tcp://127.0.0.1:" in message and f"sn5dask 9.9.9 there, {sn5dask.__version__} here" in message
    chips = json.loads((out / AOI / "manifest.json").read_text())["chips"]
    assert len(chips) < N_LATE and all(entry["status"] == "ok" for entry in chips.values())


def test_a_chip_task_on_a_worker_with_other_versions_writes_nothing(small_aoi, tmp_path) -> None:
    """The chip task's own check (for a worker that joined between two watches)."""
    from sn5dask.config import load_config
    from sn5dask.errors import VersionSkewError
    from sn5dask.io.catalog import discover
    from sn5dask.outputs.layout import AoiLayout
    from sn5dask.runner.chiptask import ChipJob, process_chip_batch

    config = load_config(None, root=str(small_aoi.root), out=str(tmp_path))
    catalog = discover(config.root)[0]
    job = ChipJob(config=config, layout=AoiLayout(config.out, catalog.aoi), aoi_cuts=None,
                  expected_versions={"sn5dask": "9.9.9", "numpy": "0.0"})
    with pytest.raises(VersionSkewError, match=r"this worker runs other versions than this client "
                                                 r"\(sn5dask .* there, 9.9.9 here; numpy"):
        process_chip_batch([(catalog.chips[0], None)], job)
    assert not list(Path(tmp_path).rglob("*.tif"))
