"""One single-threaded dask worker process per CPU of a VM, as one `dask spec` server.

dask-cloudprovider's `EC2Cluster` starts each worker VM as `python -m
distributed.cli.dask_spec <scheduler> --spec '{"cls": <worker_class>, "opts": {...}}'`:
one server per VM, so with distributed's `Nanny` a c6i.xlarge runs one process and leaves
three of its four vCPUs idle (sn5dask's chip work wants processes, not threads). Given as
`worker_class`, `NannyPerCPU` starts one `Nanny` per CPU the VM has, each with the
options given (e.g. `nthreads: 1`), named `<name>-<i>`; `deploy/aws/launch.py` uses it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Generator
from typing import Any

from distributed import Nanny


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class NannyPerCPU:
    """`cpu_count()` Nannies for the scheduler at `scheduler`, awaited, finished and closed
    together (what `dask spec` asks of a server)."""

    def __init__(self, scheduler: str, *, name: str = "vm", **options: Any) -> None:
        self.nannies = [Nanny(scheduler, name=f"{name}-{i}", **options) for i in range(cpu_count())]

    def __await__(self) -> Generator[Any, None, NannyPerCPU]:
        async def start() -> NannyPerCPU:
            await asyncio.gather(*self.nannies)
            return self

        return start().__await__()

    async def finished(self) -> None:
        await asyncio.gather(*(nanny.finished() for nanny in self.nannies))

    async def close(self) -> None:
        await asyncio.gather(*(nanny.close() for nanny in self.nannies))
