"""The one run configuration: CLI flags and `--config run.yaml` fill the same model.

Cluster tunables (worker memory, timeouts, retries) stay in dask's own config
(`dask.config`, `DASK_*` environment variables), not here. The option vocabulary (mask
kinds, formats, compressions) is defined here, so importing the config imports no GDAL,
GEOS or PROJ bindings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sn5dask.errors import ConfigError
from sn5dask.profiles import Profile, get_profile

MASK_KINDS = ("binary", "continuous", "binned", "multichannel")
FORMATS = ("geotiff", "zarr")
COMPRESSIONS = ("deflate", "zstd", "lzw", "none")


def _split(value: Any) -> Any:
    """'5,3,2' -> ['5', '3', '2']; lists and tuples pass through."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class RunConfig(BaseModel):
    """Everything that defines a run (frozen; picklable; sent to workers)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    root: str
    out: str
    aois: tuple[str, ...] = ()
    scheduler: str | None = None
    workers: int | None = Field(default=None, ge=1)
    profile: Literal["sn5dask", "cresi"] = "sn5dask"
    stretch: Literal["aoi", "chip"] | None = None
    percentiles: tuple[float, float] = (2.0, 98.0)
    bands: tuple[int, ...] = (5, 3, 2)
    masks: tuple[str, ...] = MASK_KINDS
    buffer_m: float = Field(default=2.0, gt=0)
    default_speed: float | None = Field(default=None, gt=0)
    speed_field: str | None = None
    formats: tuple[str, ...] = FORMATS
    compress: Literal["deflate", "zstd", "lzw", "none"] = "deflate"
    max_label_mb: float = Field(default=64.0, gt=0)
    overwrite: bool = False

    @field_validator("aois", "bands", "percentiles", "masks", "formats", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        return _split(value)

    @field_validator("aois")
    @classmethod
    def _aoi_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from sn5dask.layout import sanitise

        for name in value:
            if sanitise(name) != name:
                raise ValueError(f"AOI name {name!r} has characters other than A-Z a-z 0-9 _ -")
        return value

    @field_validator("bands")
    @classmethod
    def _bands(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value:
            raise ValueError("--bands needs at least one band number")
        if any(b < 1 for b in value):
            raise ValueError(f"band numbers are 1-based: {value}")
        return value

    @field_validator("percentiles")
    @classmethod
    def _percentiles(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not (0 <= low <= 100 and 0 <= high <= 100) or low > high:
            raise ValueError(f"--percentiles needs low,high with 0 <= low <= high <= 100: {value}")
        return value

    @field_validator("masks")
    @classmethod
    def _masks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if tuple(value) == ("none",):
            return ()
        unknown = [m for m in value if m not in MASK_KINDS]
        if unknown:
            raise ValueError(f"unknown mask kind(s) {unknown}; choose from {', '.join(MASK_KINDS)} or none")
        return tuple(dict.fromkeys(value))

    @field_validator("formats")
    @classmethod
    def _formats(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [f for f in value if f not in FORMATS]
        if unknown or not value:
            raise ValueError(f"--formats takes {', '.join(FORMATS)} (got {list(value)})")
        return tuple(dict.fromkeys(value))

    @model_validator(mode="after")
    def _profile_rules(self) -> RunConfig:
        if self.rules.percentile_scope == "chip" and self.stretch == "aoi":
            raise ValueError(
                "--profile cresi stretches per chip as CRESI does; --stretch aoi is refused "
                "(use the default profile for AOI-wide percentiles)"
            )
        return self

    @property
    def rules(self) -> Profile:
        """The profile's rules (DESIGN.md §3)."""
        return get_profile(self.profile)

    @property
    def stretch_scope(self) -> str:
        """The effective stretch scope: the profile's own unless `--stretch` says."""
        if self.stretch is not None:
            return self.stretch
        return self.rules.percentile_scope

    def output_params(self) -> dict[str, Any]:
        """The parameters that determine output pixels and files (the resume key)."""
        return {
            "profile": self.profile,
            "stretch": self.stretch_scope,
            "percentiles": list(self.percentiles),
            "bands": list(self.bands),
            "masks": list(self.masks),
            "buffer_m": self.buffer_m,
            "default_speed": self.default_speed,
            "speed_field": self.speed_field,
            "formats": list(self.formats),
            "compress": self.compress,
        }


def load_config(path: str | Path | None = None, **overrides: Any) -> RunConfig:
    """Build the config from an optional YAML file, then flags (`None` = not given)."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: cannot read the run config ({exc})") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the run config must be a mapping of option: value")
        values.update({k.replace("-", "_"): v for k, v in loaded.items()})
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return RunConfig(**values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'config'}: {err['msg']}"
            for err in exc.errors()
        )
        source = f"{path}: " if path else ""
        raise ConfigError(f"{source}invalid run configuration: {problems}") from None
