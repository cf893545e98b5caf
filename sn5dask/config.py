"""The one run configuration: CLI flags and `--config run.yaml` fill the same model.

Cluster tunables (worker memory, timeouts, retries) stay in dask's own config
(`dask.config`, `DASK_*` environment variables), not here. The option vocabulary (mask
kinds, formats, compressions) is defined here, so importing the config imports no GDAL,
GEOS or PROJ bindings.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from sn5dask.core.encodings import COMPRESSIONS, MASK_KINDS  # noqa: F401  (the option vocabulary, importable from here)
from sn5dask.core.profiles import Profile, get_profile
from sn5dask.errors import ConfigError

FORMATS = ("geotiff", "zarr")


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
    buffer_m: float = Field(default=2.0, gt=0, allow_inf_nan=False)
    default_speed: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    speed_field: str | None = None
    formats: tuple[str, ...] = FORMATS
    compress: Literal["deflate", "zstd", "lzw", "none"] = "deflate"
    max_label_mb: float = Field(default=64.0, gt=0, allow_inf_nan=False)
    folds: int = Field(default=5, ge=1)
    overwrite: bool = False
    #: take an S3 lock left by a run whose client is gone (not an output parameter)
    break_lock: bool = False

    @field_validator("aois", "bands", "percentiles", "masks", "formats", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        return _split(value)

    @field_validator("root", "out")
    @classmethod
    def _normalised(cls, value: str) -> str:
        from sn5dask.io.files import normalise_location

        return normalise_location(value)

    @field_validator("out")
    @classmethod
    def _out_is_a_folder(cls, value: str) -> str:
        if "://" not in value and os.path.exists(value) and not os.path.isdir(value):
            raise ValueError(f"{value} is a file, not a folder: choose a folder for the outputs")
        return value

    @field_validator("scheduler")
    @classmethod
    def _scheduler_address(cls, value: str | None) -> str | None:
        if value is not None:
            check_scheduler_address(value, "--scheduler")
        return value

    @field_validator("aois")
    @classmethod
    def _aoi_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from sn5dask.core.names import sanitise

        for name in value:
            if sanitise(name) != name:
                raise ValueError(f"AOI name {name!r} has characters other than A-Z a-z 0-9 _ -")
        return value

    @field_validator("bands")
    @classmethod
    def _bands(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value:
            raise ValueError("needs at least one band number")
        if any(b < 1 for b in value):
            raise ValueError("takes 1-based band numbers")
        return value

    @field_validator("percentiles")
    @classmethod
    def _percentiles(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not (0 <= low <= 100 and 0 <= high <= 100) or low > high:
            raise ValueError("needs low,high with 0 <= low <= high <= 100")
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


_SCHEDULER_ADDRESS_RE = re.compile(
    r"^(?:(?:tcp|tls|ucx|inproc|ws|wss)://)?"  # distributed's protocols
    r"(?:[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\])"  # host name, IPv4, or [IPv6]
    r"(?::(?P<port>\d{1,5}))?/?$"
)


def check_scheduler_address(address: str, source: str) -> None:
    """`ConfigError` naming `source` unless `address` looks like a scheduler address
    (`tcp://host:8786`, `host:8786`, `tls://...`)."""
    match = _SCHEDULER_ADDRESS_RE.match(address.strip())
    if match is None or (match.group("port") and not 0 < int(match.group("port")) < 65536):
        raise ConfigError(
            f"{source} {address!r} is not a scheduler address: give one like tcp://host:8786"
        )


#: How each field is named to the user (flag names; ROOT is the argument).
_FLAG_NAMES = {"root": "ROOT", "aois": "--aoi"}
_PLAIN_MESSAGES = (
    ("Field required", "is required"),
    ("Input should be a finite number", "must be a finite number"),
    ("Input should be greater than or equal to", "must be at least"),
    ("Input should be greater than", "must be greater than"),
    ("Input should be a valid integer", "must be a whole number"),
    ("Input should be a valid number", "must be a number"),
    ("Input should be a valid boolean", "must be true or false"),
    ("Extra inputs are not permitted", "is not an option of sn5dask run"),
    ("Input should be", "must be"),
)


def flag_name(field: str) -> str:
    return _FLAG_NAMES.get(field, "--" + field.replace("_", "-"))


def plain_problems(exc: ValidationError, file_keys: frozenset[str] = frozenset()) -> str:
    """pydantic's findings in plain words, each naming the flag (`--buffer-m must be a
    finite number (got inf)`), or the key for values that came from a config file."""
    problems = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else "config"
        name = field if field in file_keys else flag_name(field)
        message = str(error["msg"]).removeprefix("Value error, ")
        for technical, plain in _PLAIN_MESSAGES:
            if message.startswith(technical):
                message = plain + message[len(technical) :]
                break
        message = message.split(", unable to parse")[0]
        if field == "percentiles" and error["type"] in ("missing", "too_long", "too_short"):
            message = "takes exactly two values low,high, e.g. 2,98"
        given = error.get("input")
        shown = f" (got {given!r})"
        if error["type"] == "missing" or isinstance(given, dict) or str(given) in message:
            shown = ""
        problems.append(f"{name} {message}{shown}")
    return "; ".join(dict.fromkeys(problems))


def load_config(path: str | Path | None = None, **overrides: Any) -> RunConfig:
    """Build the config from an optional YAML file, then flags (`None` = not given)."""
    values: dict[str, Any] = {}
    if path is not None:
        path = os.path.expanduser(path)
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: cannot read the run config ({exc})") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the run config must be a mapping of option: value")
        values.update({k.replace("-", "_"): v for k, v in loaded.items()})
    flags = {k: v for k, v in overrides.items() if v is not None}
    file_keys = frozenset(values) - frozenset(flags)
    values.update(flags)
    try:
        return RunConfig(**values)
    except ValidationError as exc:
        source = f"{path}: " if path else ""
        raise ConfigError(f"{source}{plain_problems(exc, file_keys)}") from None
