"""One exception base for sn5dask, with a few precise subclasses, and the one place where
a chip's error becomes a recorded reason (`guard_chip`).

Every message names the file (or option) at fault and says what to do about it.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

log = logging.getLogger("sn5dask")
T = TypeVar("T")


class Sn5daskError(Exception):
    """Base class of every error sn5dask raises on purpose."""


class ConfigError(Sn5daskError):
    """Bad arguments or configuration (the CLI exits 2)."""


class NoChipsError(ConfigError):
    """A dataset root holds no PS-MS chips (the CLI exits 2)."""


class AccessDeniedError(ConfigError):
    """S3 refused access to the dataset root or output (the CLI exits 2)."""


class ChipError(Sn5daskError):
    """One chip cannot be processed: recorded as `failed` in the manifest, the run goes on."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class ImageError(ChipError):
    """The chip image is unreadable or unsuitable (dtype, bands, CRS, transform)."""


class TooFewBandsError(ImageError):
    """The chip has fewer bands than `--bands` asks for (`count`: how many it has)."""

    def __init__(self, path: str, count: int, needed: int) -> None:
        self.count = count
        super().__init__(path, f"has {count} band(s) but --bands asks for band {needed}")


class LabelError(ChipError):
    """The label file exists but cannot be read, parsed or bounded."""


class VersionSkewError(ConfigError):
    """A worker runs another sn5dask, or another version of a library that decides pixels,
    than the client (the CLI exits 2)."""


class LockError(Sn5daskError):
    """Another run holds the output lock (the CLI exits 2)."""


class ParamsChangedError(Sn5daskError):
    """A re-run with different parameters over existing outputs (the CLI exits 2)."""


class SchedulerLostError(Sn5daskError):
    """The scheduler went away mid-run: the chips still queued were never tried (the CLI
    exits 1 and says to run again, which resumes)."""


class ManifestError(Sn5daskError):
    """A run manifest that cannot be read, does not parse or has the wrong shape."""


@dataclass(frozen=True)
class ChipOutcome(Generic[T]):
    """What `guard_chip` returns: the work's value, or why it failed (and, for an
    unexpected error, its traceback text)."""

    value: T | None
    reason: str | None = None
    traceback: str | None = None


def guard_chip(path: str, work: Callable[[], T]) -> ChipOutcome[T]:
    """Run one chip's `work`; the single place where a per-chip failure is caught.

    A `ChipError` is an expected failure: its message is the reason. Any other exception
    is unexpected: the reason names the file and the error, and the traceback is returned
    for the chip's log file. One bad chip never kills the run. (`BaseException`s such as
    `KeyboardInterrupt` are not caught.)
    """
    try:
        return ChipOutcome(work())
    except ChipError as exc:
        return ChipOutcome(None, str(exc))
    except Exception as exc:  # one bad chip never kills the run: recorded, reported
        log.debug("chip %s failed", path, exc_info=True)
        reason = f"{path}: unexpected error {type(exc).__name__}: {exc}"
        return ChipOutcome(None, reason, traceback.format_exc())
