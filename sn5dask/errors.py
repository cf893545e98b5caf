"""One exception base for sn5dask, with a few precise subclasses.

Every message names the file (or option) at fault and says what to do about it.
"""

from __future__ import annotations


class Sn5daskError(Exception):
    """Base class of every error sn5dask raises on purpose."""


class ConfigError(Sn5daskError):
    """Bad arguments or configuration (the CLI exits 2)."""


class NoChipsError(ConfigError):
    """A dataset root holds no PS-MS chips (the CLI exits 2)."""


class ChipError(Sn5daskError):
    """One chip cannot be processed: recorded as `failed` in the manifest, the run goes on."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class ImageError(ChipError):
    """The chip image is unreadable or unsuitable (dtype, bands, CRS, transform)."""


class LabelError(ChipError):
    """The label file exists but cannot be read, parsed or bounded."""


class LockError(Sn5daskError):
    """Another run holds the output lock (the CLI exits 2)."""


class ParamsChangedError(Sn5daskError):
    """A re-run with different parameters over existing outputs (the CLI exits 2)."""
