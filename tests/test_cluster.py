"""sn5dask.cluster: scheduler address resolution and the worker environment sn5dask sets."""

from __future__ import annotations

import dask
import pytest

from sn5dask.cluster import scheduler_address, worker_environment_overrides

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

    masks = sys.modules.get("sn5dask.masks")
    return {
        "chiptask": "sn5dask.chiptask" in sys.modules,
        "aoistats": "sn5dask.aoistats" in sys.modules,
        "utm_table": masks is not None and masks._wgs84_utm_zones.cache_info().currsize == 1,
        "zarr": "zarr" in sys.modules,  # only runs that write the store import it
    }


@pytest.mark.slow
def test_warm_up_prepares_every_worker_without_zarr() -> None:
    import time

    from sn5dask.cluster import get_client, warm_up_workers

    with get_client(workers=2) as client:
        assert not any(s["chiptask"] for s in client.run(_worker_state).values())
        warm_up_workers(client)
        deadline = time.monotonic() + 60
        while True:
            states = client.run(_worker_state)
            if all(s["utm_table"] for s in states.values()) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    assert len(states) == 2
    for state in states.values():
        assert state == {"chiptask": True, "aoistats": True, "utm_table": True, "zarr": False}
