"""sn5dask.runner.cluster: scheduler address resolution and the worker environment sn5dask sets."""

from __future__ import annotations

import dask
import distributed  # noqa: F401  # its defaults in dask config before any dask.config.set below
import pytest

from sn5dask.runner.forkserver import scheduler_address, worker_environment_overrides

KEY = "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"


def test_malloc_trim_unset_only_over_distributeds_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    with dask.config.set({KEY: 65536}):
        assert worker_environment_overrides() == {KEY: None}
    with dask.config.set({KEY: 1048576}):  # the user's own dask config wins
        assert worker_environment_overrides() == {}
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "100000")  # and so does the variable itself
    with dask.config.set({KEY: 65536}):
        assert worker_environment_overrides() == {}


def test_scheduler_address_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    assert scheduler_address("tcp://a:1") == "tcp://a:1"
    with dask.config.set({"scheduler-address": "tcp://c:3"}):
        assert scheduler_address() == "tcp://c:3"
        monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", "tcp://b:2")
        assert scheduler_address() == "tcp://b:2"


def _worker_state() -> dict[str, bool]:
    import sys

    utm_table = False
    if "sn5dask.core.crs" in sys.modules:
        # (an import statement, not sys.modules: it waits while the warm-up task is still
        # importing the module in the worker's task thread)
        import sn5dask.core.crs

        utm_table = sn5dask.core.crs._utm_area_of_use.cache_info().currsize >= 1
    return {
        "chiptask": "sn5dask.runner.chiptask" in sys.modules,
        "aoistats": "sn5dask.runner.aoistats" in sys.modules,
        "utm_table": utm_table,
        "zarr": "zarr" in sys.modules,
    }


def _wait_for_utm_table(client, timeout_s: float = 60) -> dict:  # noqa: ANN001
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        states = client.run(_worker_state)
        if all(s["utm_table"] for s in states.values()) or time.monotonic() > deadline:
            return states
        time.sleep(0.1)


@pytest.mark.slow
def test_warm_up_prepares_every_spawned_worker_without_zarr() -> None:
    from sn5dask.runner.cluster import get_client, warm_up_workers
    from sn5dask.runner.forkserver import START_METHOD_KEY

    with dask.config.set({START_METHOD_KEY: "spawn"}), get_client(workers=2) as client:
        assert not any(s["chiptask"] for s in client.run(_worker_state).values())
        warm_up_workers(client)
        states = _wait_for_utm_table(client)
    assert len(states) == 2
    for state in states.values():
        assert state == {"chiptask": True, "aoistats": True, "utm_table": True, "zarr": False}


def _process_facts() -> dict:
    import gc
    import os
    import sys

    return {
        "ppid": os.getppid(),
        "chiptask": "sn5dask.runner.chiptask" in sys.modules,
        "rasterio": "rasterio" in sys.modules,
        "masks": "sn5dask.io.burn" in sys.modules,
        "trim": os.environ.get("MALLOC_TRIM_THRESHOLD_"),
        "gc_enabled": gc.isenabled(),
        "frozen": gc.get_freeze_count(),
    }


@pytest.mark.slow
def test_local_workers_fork_from_a_single_threaded_server_with_the_task_code(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import os

    from sn5dask.runner.cluster import get_client, warm_up_workers
    from sn5dask.runner.forkserver import worker_start_method

    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    assert worker_start_method() == "forkserver"
    with get_client(workers=2) as client:
        facts = client.run(_process_facts)
        warm_up_workers(client)
        states = _wait_for_utm_table(client)
    assert len(facts) == 2
    (server,) = {f["ppid"] for f in facts.values()}
    assert server != os.getpid()  # workers are children of the fork server, not the client
    # the server's own environment is what glibc and BLAS saw in every worker
    server_environ = dict(
        item.split("=", 1) for item in open(f"/proc/{server}/environ").read().split("\0") if "=" in item
    )
    assert "MALLOC_TRIM_THRESHOLD_" not in server_environ
    assert server_environ["OMP_NUM_THREADS"] == "1"
    assert len(os.listdir(f"/proc/{server}/task")) == 1  # one thread: safe to fork
    for fact in facts.values():
        # imported by the server before forking, not per worker: the tasks, GDAL and the
        # mask burner (zarr too when the server was started for a run that writes Zarr)
        assert fact["chiptask"] and fact["rasterio"] and fact["masks"]
        assert fact["trim"] is None
        # the collector, paused while the server imported, is on again in every worker,
        # and what the server imported is frozen (no worker's collection walks it)
        assert fact["gc_enabled"] and fact["frozen"] > 10_000
    assert all(s["utm_table"] for s in states.values())


def test_worker_start_method_config() -> None:
    from sn5dask.runner.forkserver import START_METHOD_KEY, worker_start_method

    with dask.config.set({START_METHOD_KEY: "spawn"}):
        assert worker_start_method() == "spawn"
    with dask.config.set({START_METHOD_KEY: "fork"}), pytest.raises(ValueError, match="forkserver or spawn"):
        worker_start_method()


def _environ_value(name: str) -> str | None:
    import os

    return os.environ.get(name)


@pytest.mark.slow
def test_forked_workers_see_variables_set_after_the_fork_server_started(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sn5dask.runner.cluster import get_client
    from sn5dask.runner.forkserver import start_worker_server

    start_worker_server()  # already running in this process, or started now
    monkeypatch.setenv("SN5DASK_TEST_LATE_VARIABLE", "set-after-the-server")
    with get_client(workers=1) as client:
        seen = client.run(_environ_value, "SN5DASK_TEST_LATE_VARIABLE")
    assert list(seen.values()) == ["set-after-the-server"]


@pytest.mark.slow
def test_a_killed_local_worker_is_forked_again_from_the_server() -> None:
    import os
    import signal
    import time

    from sn5dask.runner.cluster import get_client

    with get_client(workers=1) as client:
        ((first_address, first),) = client.run(_process_facts).items()
        os.kill(client.run(os.getpid)[first_address], signal.SIGKILL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            workers = client.scheduler_info(n_workers=-1)["workers"]
            if workers and first_address not in workers:
                break
            time.sleep(0.1)
        client.wait_for_workers(1, timeout=60)
        ((_, again),) = client.run(_process_facts).items()
        assert client.submit(sum, [1, 2, 3], pure=False).result(timeout=60) == 6
    assert again["ppid"] == first["ppid"]  # the nanny forked the new worker from the server
    assert again["chiptask"]


@pytest.mark.slow
def test_starting_local_workers_leaves_the_callers_environment_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A notebook that calls sn5dask.run() keeps its own OMP_NUM_THREADS (and gains no
    variable it did not have), while the workers still get one thread each."""
    import os

    from sn5dask.runner.cluster import get_client

    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    before = dict(os.environ)
    with get_client(workers=1) as client:
        during = dict(os.environ)
        seen = client.run(_environ_value, "MKL_NUM_THREADS")
        seen_omp = client.run(_environ_value, "OMP_NUM_THREADS")
    assert dict(os.environ) == before  # exactly as it was once the cluster is gone
    # while it runs, only what distributed's nanny writes there itself
    assert {k for k in during.keys() | before.keys() if during.get(k) != before.get(k)} <= {
        "PYTHONHASHSEED", "__DASK_PARENT_PID"}
    assert list(seen.values()) == ["1"] and list(seen_omp.values()) == ["4"]


def test_importing_the_config_imports_no_gdal_geos_or_proj() -> None:
    import subprocess
    import sys

    code = ("import sys, sn5dask.config, sn5dask.core.profiles, sn5dask.outputs.layout; "
            "print(sorted(m for m in ('rasterio', 'shapely', 'pyproj', 'osgeo', 'odc.geo', 'zarr') "
            "if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_the_client_of_a_run_imports_no_gdal_geos_or_proj() -> None:
    """The client's start is the run's critical path: the CLI and the run loop import none
    of what only the workers use (the fork server preloads it for them)."""
    import subprocess
    import sys

    code = ("import sys, sn5dask.cli, sn5dask.runner.pipeline; "
            "print(sorted(m for m in ('rasterio', 'shapely', 'pyproj', 'osgeo', 'odc.geo', 'zarr') "
            "if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_python_dash_m_runs_without_runpy_warnings(tmp_path) -> None:
    """`python -m sn5dask.cli run` (the form benchmarks use): each worker runs the main
    module again, which the fork server has imported already; runpy's warning about that
    is not shown to the user."""
    import subprocess
    import sys

    from sn5dask.synthetic import make_synthetic_aoi

    aoi = make_synthetic_aoi(tmp_path / "in", n_chips=2, size=32, seed=3, with_edge_cases=False)
    result = subprocess.run(
        [sys.executable, "-m", "sn5dask.cli", "run", str(aoi.root), "--out", str(tmp_path / "out"),
         "--workers", "2", "--formats", "geotiff"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr, result.stderr
    assert len(list((tmp_path / "out").rglob("PS-RGB/*.tif"))) == 2


def test_worker_environment_follows_the_users_dask_config() -> None:
    """The variables the fork server (and so every worker) starts with: distributed's
    pre-spawn environment under the user's own dask config, MALLOC_TRIM_THRESHOLD_ unset."""
    import os
    import subprocess
    import sys

    code = "import sn5dask.runner.forkserver as f\nprint(sorted(f.worker_process_environ().items()))\n"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DASK_", "OMP_", "MKL_", "MALLOC_"))}
    env["DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON"] = "{'MKL_NUM_THREADS': 3}"  # the user's config
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        "[('MKL_NUM_THREADS', '3'), ('OMP_NUM_THREADS', '1'), ('OPENBLAS_NUM_THREADS', '1')]"
    )


@pytest.mark.slow
def test_the_dask_dashboard_of_a_local_cluster_answers_on_loopback() -> None:
    import json
    import subprocess
    import sys
    import urllib.request

    code = (
        "import sys, json\n"
        "from sn5dask.runner.cluster import get_client\n"
        "if __name__ == '__main__':\n"
        "    with get_client(workers=1) as client:\n"
        "        print(json.dumps(client.dashboard_link), flush=True)\n"
        "        sys.stdin.readline()\n"
    )
    with subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          text=True) as proc:  # fmt: skip
        assert proc.stdout is not None and proc.stdin is not None
        link = json.loads(proc.stdout.readline())
        try:
            assert link.startswith("http://127.0.0.1:")
            with urllib.request.urlopen(link, timeout=60) as response:
                page = response.read().decode()
                assert response.status == 200 and "Bokeh" in page and "Dask" in page
        finally:
            proc.stdin.write("\n")
            proc.stdin.flush()
        assert proc.wait(timeout=60) == 0
