"""Real distributed runs (slow): a `dask scheduler` + `dask worker` processes, a worker
killed mid-run, the whole run killed (SIGKILL) or interrupted (SIGINT) and resumed.
Every recovered output must equal an uninterrupted run's."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import rasterio

import sn5dask
from sn5dask.config import load_config
from sn5dask.io.lock import RunLock
from tests.procs import kill_group, real_cluster, sn5dask_cli

pytestmark = pytest.mark.slow
AOI = "AOI_99_Synthetic"
N_CHIPS = 16


def snapshot(out: Path) -> dict[str, bytes]:
    files = {}
    for path in sorted(out.rglob("*.tif")):
        with rasterio.open(path) as src:
            files[str(path.relative_to(out))] = (
                src.read().tobytes() + repr((src.transform, src.crs, src.nodatavals)).encode()
            )
    for path in sorted(out.rglob("*.zarr/*/c.*")):  # the data arrays' chunks
        if path.is_file():
            files[str(path.relative_to(out))] = path.read_bytes()
    return files


@pytest.fixture(scope="module")
def big_aoi(tmp_path_factory):
    from sn5dask.synthetic import make_synthetic_aoi

    return make_synthetic_aoi(tmp_path_factory.mktemp("big"), n_chips=N_CHIPS, size=1000, seed=7)


@pytest.fixture(scope="module")
def clean_run(big_aoi, client, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean")
    summary = sn5dask.run(load_config(None, root=str(big_aoi.root), out=str(out)), client=client)
    assert summary.exit_code == 0
    return snapshot(out)


def test_real_scheduler_and_workers_through_the_cli(big_aoi, clean_run, tmp_path) -> None:
    with real_cluster(2) as cluster:
        process = sn5dask_cli("run", big_aoi.root, "--out", tmp_path, "--scheduler", cluster.address)
        output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    assert "dask dashboard: http://127.0.0.1:" in output and "16/16" in output
    assert "(your cluster's; it stays up)" in output and "until this run ends" not in output
    assert snapshot(tmp_path) == clean_run


def test_a_worker_killed_mid_run_loses_nothing(big_aoi, clean_run, tmp_path) -> None:
    from distributed import Client

    rgb_dir = tmp_path / AOI / "PS-RGB"
    killed = threading.Event()

    def kill_when_busy(victim) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if rgb_dir.exists() and len(list(rgb_dir.glob("*.tif"))) >= 2:
                os.kill(victim.pid, signal.SIGKILL)
                killed.set()
                return
            time.sleep(0.02)

    with real_cluster(2) as cluster, Client(cluster.address) as client:
        watcher = threading.Thread(target=kill_when_busy, args=(cluster.workers[0],))
        watcher.start()
        summary = sn5dask.run(load_config(None, root=str(big_aoi.root), out=str(tmp_path)), client=client)
        watcher.join()
        assert killed.is_set() and cluster.workers[0].poll() is not None
    assert summary.exit_code == 0 and summary.aois[0].counts["ok"] == N_CHIPS
    assert not list(tmp_path.rglob("*.partial"))
    assert snapshot(tmp_path) == clean_run


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_the_whole_run_killed_then_resumed(big_aoi, clean_run, tmp_path, sig) -> None:
    rgb_dir = tmp_path / AOI / "PS-RGB"
    process = sn5dask_cli("run", big_aoi.root, "--out", tmp_path, "--workers", "2")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if rgb_dir.exists() and len(list(rgb_dir.glob("*.tif"))) >= 4:
            break
        time.sleep(0.02)
    assert process.poll() is None, "the run finished before it could be interrupted"
    if sig == signal.SIGINT:
        os.kill(process.pid, signal.SIGINT)  # Ctrl-C reaches the client process
        process.communicate(timeout=60)
        kill_group(process)  # and nothing of that run may linger
    else:
        kill_group(process, signal.SIGKILL)
    manifest = tmp_path / AOI / "manifest.json"
    done_before = set()
    if manifest.exists():
        chips = json.loads(manifest.read_text())["chips"]
        done_before = {c for c, e in chips.items() if e["status"] == "ok"}
    # The run was cut short: its last manifest records fewer than all chips (chips that a
    # worker was finishing meanwhile may have files, which the re-run rewrites identically).
    assert len(done_before) < N_CHIPS

    resumed = sn5dask_cli("run", big_aoi.root, "--out", tmp_path, "--workers", "2")
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output
    assert not list(tmp_path.rglob("*.partial"))
    RunLock(str(tmp_path / AOI / ".sn5dask.lock")).check_free()  # the killed run's lock died with it
    assert snapshot(tmp_path) == clean_run
    if sig == signal.SIGINT:
        assert manifest.exists(), "Ctrl-C must leave a manifest of the chips already done"


def test_local_paths_the_workers_do_not_see_are_one_line_before_any_chip(small_aoi, tmp_path) -> None:
    """Workers on hosts of their own (a mount namespace each, where the client's folder is
    an empty tmpfs): a local ROOT or OUT is refused with one line, exit 2, and nothing is
    written on the workers' side or the client's."""
    import shutil

    from tests.procs import real_cluster, sn5dask_cli

    client_only = tmp_path / "client-only"
    shutil.copytree(small_aoi.root, client_only / "in")
    with real_cluster(1, hidden=client_only) as cluster:
        for root, out, flag in ((client_only / "in", tmp_path / "shared-out", "ROOT"),
                                (small_aoi.root, client_only / "out", "--out")):
            process = sn5dask_cli("run", root, "--out", out, "--scheduler", cluster.address)
            output, _ = process.communicate(timeout=120)
            lines = [line for line in output.splitlines() if line.strip()]
            assert process.returncode == 2, output
            assert len(lines) == 1 and lines[0].startswith(f"error: {flag} "), output
            assert "do not see: give an s3:// URL, or a folder every worker mounts" in " ".join(output.split())
            assert not list(Path(out).rglob("*.tif"))
    assert not list((client_only / "out").glob(".sn5dask-probe-*"))


def test_a_scheduler_without_workers_is_said_at_once_and_given_up_clearly(small_aoi, tmp_path) -> None:
    """A scheduler with no worker: "waiting for workers at ..." within seconds, then, after
    `sn5dask.worker-wait-timeout`, exit 2 with one line (never a silent hang)."""
    import time as _time

    with real_cluster(0) as cluster:
        started = _time.monotonic()
        process = sn5dask_cli("run", small_aoi.root, "--out", tmp_path / "out", "--scheduler", cluster.address,
                              env={"DASK_SN5DASK__WORKER_WAIT_TIMEOUT": "4s"})
        output, _ = process.communicate(timeout=120)
        elapsed = _time.monotonic() - started
    lines = [line for line in output.splitlines() if line.strip()]
    assert process.returncode == 2, output
    assert lines[0] == f"waiting for workers at {cluster.address} (up to 4 s, sn5dask.worker-wait-timeout)"
    assert lines[-1].startswith(f"error: --scheduler {cluster.address}: no worker joined within 4 s")
    assert "Traceback" not in output and elapsed < 60


def test_a_lost_scheduler_is_one_line_and_the_rerun_resumes(big_aoi, clean_run, tmp_path) -> None:
    """The scheduler SIGKILLed mid-run: chips still queued are not recorded as failed (they
    were never tried); one line says the scheduler was lost and to run again, which
    resumes and gives the outputs of an uninterrupted run."""
    env = {"DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "5s"}  # how long the client tries to reconnect
    rgb = tmp_path / AOI / "PS-RGB"
    with real_cluster(2) as cluster:
        process = sn5dask_cli("run", big_aoi.root, "--out", tmp_path, "--scheduler", cluster.address, env=env)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (rgb.is_dir() and len(list(rgb.glob("*.tif"))) >= 2):
            time.sleep(0.05)
        os.kill(cluster.scheduler.pid, signal.SIGKILL)
        output, _ = process.communicate(timeout=180)
    lines = [line for line in output.splitlines() if line.strip()]
    assert process.returncode == 1, output
    assert lines[-1].startswith(f"error: the scheduler {cluster.address} was lost after "), output
    assert lines[-1].endswith("run the same command again to resume") and "Traceback" not in output
    chips = json.loads((tmp_path / AOI / "manifest.json").read_text())["chips"]
    assert chips and all(entry["status"] == "ok" for entry in chips.values())  # none "failed"
    assert len(chips) < N_CHIPS
    with real_cluster(2) as cluster:
        resumed = sn5dask_cli("run", big_aoi.root, "--out", tmp_path, "--scheduler", cluster.address)
        output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output
    assert snapshot(tmp_path) == clean_run


def test_validate_on_a_cluster_that_does_not_see_a_local_out_is_one_line(small_aoi, tmp_path) -> None:
    client_only = tmp_path / "client-only"
    made = sn5dask_cli("run", small_aoi.root, "--out", client_only / "out", "--workers", "1")
    assert made.wait(300) == 0
    with real_cluster(1, hidden=client_only) as cluster:
        process = sn5dask_cli("validate", client_only / "out", "--scheduler", cluster.address)
        output, _ = process.communicate(timeout=120)
    lines = [line for line in output.splitlines() if line.strip()]
    assert process.returncode == 2 and len(lines) == 1 and "Traceback" not in output, output
    assert "do not see: validate an s3:// URL, or a folder every worker mounts" in " ".join(output.split())
