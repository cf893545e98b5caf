"""sn5dask.cluster: scheduler address resolution and the worker environment sn5dask sets."""

from __future__ import annotations

import dask
import pytest

from sn5dask.forkserver import scheduler_address, worker_environment_overrides

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
    if "sn5dask.masks" in sys.modules:
        # (an import statement, not sys.modules: it waits while the warm-up task is still
        # importing the module in the worker's task thread)
        import sn5dask.masks

        utm_table = sn5dask.masks._wgs84_utm_zones.cache_info().currsize == 1
    return {
        "chiptask": "sn5dask.chiptask" in sys.modules,
        "aoistats": "sn5dask.aoistats" in sys.modules,
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
    from sn5dask.cluster import get_client, warm_up_workers
    from sn5dask.forkserver import START_METHOD_KEY

    with dask.config.set({START_METHOD_KEY: "spawn"}), get_client(workers=2) as client:
        assert not any(s["chiptask"] for s in client.run(_worker_state).values())
        warm_up_workers(client)
        states = _wait_for_utm_table(client)
    assert len(states) == 2
    for state in states.values():
        assert state == {"chiptask": True, "aoistats": True, "utm_table": True, "zarr": False}


def _process_facts() -> dict:
    import os
    import sys

    return {
        "ppid": os.getppid(),
        "chiptask": "sn5dask.chiptask" in sys.modules,
        "trim": os.environ.get("MALLOC_TRIM_THRESHOLD_"),
    }


@pytest.mark.slow
def test_local_workers_fork_from_a_single_threaded_server_with_the_task_code(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import os

    from sn5dask.cluster import get_client, warm_up_workers
    from sn5dask.forkserver import worker_start_method

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
        assert fact["chiptask"]  # imported by the server before forking, not per worker
        assert fact["trim"] is None
    # zarr too (the default formats write the store); spawned workers import it only in a
    # run that writes the store (test_warm_up_prepares_every_spawned_worker_without_zarr)
    assert all(s["utm_table"] and s["zarr"] for s in states.values())


def test_worker_start_method_config() -> None:
    from sn5dask.forkserver import START_METHOD_KEY, worker_start_method

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
    from sn5dask.cluster import get_client
    from sn5dask.forkserver import start_worker_server

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

    from sn5dask.cluster import get_client

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

    from sn5dask.cluster import get_client

    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    before = dict(os.environ)
    with get_client(workers=1) as client:
        during = dict(os.environ)
        seen = client.run(_environ_value, "MKL_NUM_THREADS")
        seen_omp = client.run(_environ_value, "OMP_NUM_THREADS")
    assert dict(os.environ) == before and during == before
    assert list(seen.values()) == ["1"] and list(seen_omp.values()) == ["4"]


def test_importing_the_config_imports_no_gdal_geos_or_proj() -> None:
    import subprocess
    import sys

    code = ("import sys, sn5dask.config, sn5dask.profiles, sn5dask.layout; "
            "print(sorted(m for m in ('rasterio', 'shapely', 'pyproj', 'osgeo', 'odc.geo', 'zarr') "
            "if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_worker_environment_is_known_before_distributed_is_imported() -> None:
    """The CLI starts the fork server before the client imports distributed: the workers'
    variables then come from distributed's defaults file, under the user's dask config,
    exactly as they do once distributed is imported."""
    import os
    import subprocess
    import sys

    code = (
        "import sys, sn5dask.forkserver as f\n"
        "before = (f.worker_process_environ(), f.worker_environment_overrides())\n"
        "assert 'distributed' not in sys.modules, 'imported distributed'\n"
        "import distributed\n"
        "after = (f.worker_process_environ(), f.worker_environment_overrides())\n"
        "print(before == after, sorted(before[0].items()))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DASK_", "OMP_", "MKL_", "MALLOC_"))}
    env["DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON"] = "{'MKL_NUM_THREADS': 3}"  # the user's config
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        "True [('MKL_NUM_THREADS', '3'), ('OMP_NUM_THREADS', '1'), ('OPENBLAS_NUM_THREADS', '1')]"
    )


@pytest.mark.slow
def test_forked_workers_do_not_run_the_main_script_again(tmp_path) -> None:  # noqa: ANN001
    """The fork server imports the client's script once; the workers forked from it don't
    each run it again (Python 3.11 and 3.12 would: CPython gh-126631)."""
    import subprocess
    import sys

    log = tmp_path / "runs.log"
    script = tmp_path / "client_script.py"
    script.write_text(
        "import os\n"
        f"open({str(log)!r}, 'a').write(f'{{__name__}} {{os.getpid()}}\\n')\n"
        "from sn5dask.cluster import get_client\n"
        "if __name__ == '__main__':\n"
        "    with get_client(workers=2) as client:\n"
        "        print(sorted(client.run(os.getpid).values()), os.getpid())\n"
    )
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    runs = log.read_text().split()
    names, pids = runs[0::2], [int(p) for p in runs[1::2]]
    assert names == ["__main__", "__mp_main__"]  # the client, then the fork server, once
    worker_pids = eval(result.stdout.split("]")[0] + "]")
    assert len(worker_pids) == 2 and not set(worker_pids) & set(pids)


@pytest.mark.slow
def test_dask_dashboard_is_imported_when_first_asked_for() -> None:
    """A run starts without importing bokeh (≈0.65 s); the printed link still opens the
    dask dashboard: its first request attaches the bokeh pages."""
    import json
    import subprocess
    import sys
    import urllib.request

    code = (
        "import sys, json\n"
        "from sn5dask.cluster import get_client\n"
        "if __name__ == '__main__':\n"
        "    with get_client(workers=1) as client:\n"
        "        print(json.dumps([client.dashboard_link, 'bokeh' in sys.modules]), flush=True)\n"
        "        sys.stdin.readline()\n"
    )
    with subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          text=True) as proc:  # fmt: skip
        assert proc.stdout is not None and proc.stdin is not None
        link, bokeh_imported = json.loads(proc.stdout.readline())
        try:
            assert not bokeh_imported
            with urllib.request.urlopen(link, timeout=60) as response:
                page = response.read().decode()
                assert response.status == 200 and response.geturl() == link
            assert "Bokeh" in page and "Dask" in page
            root = link.rsplit("/", 1)[0]
            with urllib.request.urlopen(f"{root}/individual-plots.json", timeout=60) as response:
                assert "Individual Task Stream" in json.loads(response.read())
            with urllib.request.urlopen(f"{root}/health", timeout=60) as response:
                assert response.read() == b"ok"
            with pytest.raises(urllib.error.HTTPError, match="404"):
                urllib.request.urlopen(f"{root}/no-such-page", timeout=60)
        finally:
            proc.stdin.write("\n")
            proc.stdin.flush()
        assert proc.wait(timeout=60) == 0
