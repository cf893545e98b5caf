"""What a run tells its caller as it goes (`Reporter`: the CLI draws it with rich, the
API logs it) and what it returns (`RunSummary`, one `AoiSummary` per AOI)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Protocol

from sn5dask.runner.chiptask import ChipResult

log = logging.getLogger("sn5dask")


class Reporter(Protocol):
    """What the run tells its caller (the CLI draws it with rich; the API logs it)."""

    def cluster(self, dashboard_link: str | None, closes_with_run: bool) -> None: ...
    def waiting(self, message: str) -> None: ...
    def notice(self, message: str) -> None: ...
    def aoi_started(self, aoi: str, total: int, already_done: int, already_failed: int) -> None: ...
    def chip_finished(self, aoi: str, result: ChipResult) -> None: ...
    def aoi_finished(self, summary: AoiSummary) -> None: ...


class LogReporter:
    """Default reporter: one log line per AOI and per failed chip."""

    def cluster(self, dashboard_link: str | None, closes_with_run: bool) -> None:
        log.info("dask dashboard: %s", dashboard_link)

    def waiting(self, message: str) -> None:
        log.warning(message)

    def notice(self, message: str) -> None:
        log.warning(message)

    def aoi_started(self, aoi: str, total: int, already_done: int, already_failed: int) -> None:
        log.info("%s: %d chips (%d already done, %d unreadable)", aoi, total, already_done, already_failed)

    def chip_finished(self, aoi: str, result: ChipResult) -> None:
        if result.status == "failed":
            log.warning("%s %s failed: %s", aoi, result.chip_id, result.reason)

    def aoi_finished(self, summary: AoiSummary) -> None:
        log.info("%s: %s", summary.aoi, summary.counts)


@dataclass
class AoiSummary:
    aoi: str
    manifest: str
    counts: dict[str, int]
    seconds: float
    processed: int
    scan_seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)
    orphan_labels: list[str] = field(default_factory=list)
    timings: list[dict[str, float]] = field(default_factory=list)

    @property
    def chips_per_second(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0


@dataclass
class RunSummary:
    aois: list[AoiSummary]
    dashboard_link: str | None = None

    @property
    def failed(self) -> int:
        return sum(a.counts.get("failed", 0) for a in self.aois)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0
