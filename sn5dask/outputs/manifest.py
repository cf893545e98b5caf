"""`manifest.json`: the per-AOI resume record, a typed model, and the resume rules.

The run, resume, `validate` and the API all read and write it through `Manifest` and
`ChipEntry`; a file that does not parse or has the wrong shape raises `ManifestError`
(never an `AttributeError` or `IndexError` further down).

Resume rules (DESIGN.md §5), verified rather than trusted: a chip is done when its
status is `ok` or `skipped` under identical params, its image and label are the same files
as when it was done (path, and size + modification time or ETag), every file it records is
there under its final name with the size it was written with (a truncated file is redone),
and its Zarr region's chunks all exist (a region is recorded only after its write
returned). A re-run whose params differ stops unless `--overwrite` is given.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sn5dask.errors import ManifestError, ParamsChangedError
from sn5dask.outputs.layout import ZARR_OUTPUT, AoiLayout, ZarrRef

if TYPE_CHECKING:
    from sn5dask.io.catalog import ChipRecord

ChipStatus = Literal["ok", "skipped", "failed"]
STATUSES: tuple[ChipStatus, ...] = ("ok", "skipped", "failed")
DONE_STATUSES: tuple[ChipStatus, ...] = ("ok", "skipped")


class ChipEntry(BaseModel):
    """One chip's record. `outputs` maps an output kind (`rgb`, a mask kind, `zarr`) to a
    path relative to the AOI folder (`zarr`: a `ZarrRef` string). Unknown fields are kept."""

    model_config = ConfigDict(extra="allow")

    status: ChipStatus
    image: str | None = None
    label: str | None = None
    reason: str | None = None
    warnings: list[str] = Field(default_factory=list)
    zero_fraction: dict[str, float] = Field(default_factory=dict)
    outputs: dict[str, str] = Field(default_factory=dict)
    percentiles: dict[str, list[float | None]] | None = None
    #: Size in bytes of each file output as written (a resume redoes a file of another size).
    output_bytes: dict[str, int] = Field(default_factory=dict)
    #: The inputs as they were when the chip was done ("size:mtime", or "size:ETag" on S3).
    image_stamp: str | None = None
    label_stamp: str | None = None
    #: The chip's spatial fold (chips with labels only; `folds.csv`).
    fold: int | None = None

    @property
    def done(self) -> bool:
        return self.status in DONE_STATUSES

    def zarr_ref(self) -> ZarrRef | None:
        """The chip's Zarr region, or None when it has none; `ManifestError` when the
        recorded reference is malformed."""
        text = self.outputs.get(ZARR_OUTPUT)
        if text is None:
            return None
        try:
            return ZarrRef.parse(text)
        except ValueError as exc:
            raise ManifestError(f"{self.image or 'a chip'}: {exc}") from None

    def file_outputs(self) -> dict[str, str]:
        """The outputs that are files (every kind but the Zarr region)."""
        return {kind: path for kind, path in self.outputs.items() if kind != ZARR_OUTPUT}

    def as_json(self) -> dict[str, Any]:
        document = self.model_dump(mode="json")
        if document.get("percentiles") is None:
            document.pop("percentiles", None)
        return document

    def is_done_for(self, chip: ChipRecord, layout: AoiLayout, state: OutputState) -> bool:
        """The resume rule for one chip under unchanged params (module docstring)."""
        if not self.done or self.image_stamp is None:
            return False
        if (self.image, self.label) != (chip.image, chip.label):
            return False
        if (self.image_stamp, self.label_stamp) != (chip.image_stamp, chip.label_stamp):
            return False
        for kind, relpath in self.outputs.items():
            try:
                if kind == ZARR_OUTPUT:
                    ref = ZarrRef.parse(relpath)
                    if ref.store != layout.zarr_relpath or ref.index not in state.zarr_chips:
                        return False
                elif state.file_sizes.get(layout.url(relpath)) != self.output_bytes.get(kind):
                    return False
            except ValueError:  # a malformed or escaping path in a tampered manifest
                return False
        return True


@dataclass(frozen=True)
class OutputState:
    """What exists under an AOI's output folder, listed once per resume: every file's size
    (URL -> bytes) and the chips whose Zarr chunks all exist."""

    file_sizes: Mapping[str, int]
    zarr_chips: frozenset[int] = frozenset()


class Manifest(BaseModel):
    """The whole record of one AOI's run. Chip keys are chip ids, in the AOI's order."""

    model_config = ConfigDict(extra="allow")

    aoi: str
    params: dict[str, Any]
    root: str = ""
    orphan_labels: list[str] = Field(default_factory=list)
    chips: dict[str, ChipEntry] = Field(default_factory=dict)
    #: What earlier runs made here that this run has not yet kept or removed (paths
    #: relative to the AOI folder): removed, unless this run lists them, when it finishes.
    #: A run that stops before carries them on to its resume, so an interrupted run with
    #: other parameters never leaves files that no record lists.
    superseded: list[str] = Field(default_factory=list)

    @field_validator("superseded", mode="before")
    @classmethod
    def _paths_only(cls, value: Any) -> list[str]:
        """A damaged list loses its entries, not the whole manifest: what it names is only
        ever removed after a check of its shape (stale.earlier_outputs)."""
        return [path for path in value if isinstance(path, str)] if isinstance(value, list) else []

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = dict.fromkeys(STATUSES, 0)
        for entry in self.chips.values():
            counts[entry.status] += 1
        return counts

    def as_json(self) -> dict[str, Any]:
        return {
            "aoi": self.aoi,
            "root": self.root,
            "params": self.params,
            "orphan_labels": self.orphan_labels,
            "counts": self.counts(),
            "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "chips": {chip_id: entry.as_json() for chip_id, entry in self.chips.items()},
            **({"superseded": self.superseded} if self.superseded else {}),
        }

    @classmethod
    def parse(cls, document: Any, source: str) -> Manifest:
        """The model of a decoded manifest document; `ManifestError` naming `source` when
        it has the wrong shape."""
        if not isinstance(document, dict):
            raise ManifestError(f"{source}: not a manifest (a JSON object was expected)")
        fields = {k: v for k, v in document.items() if k not in ("counts", "updated")}
        try:
            return cls.model_validate(fields)
        except ValidationError as exc:
            raise ManifestError(f"{source}: not a valid sn5dask manifest ({_plain(exc)})") from None

    # -- resume rules ------------------------------------------------------------------
    def done_entries(
        self,
        params: Mapping[str, Any],
        chips: Mapping[str, ChipRecord],
        layout: AoiLayout,
        state: OutputState,
    ) -> dict[str, ChipEntry]:
        """Entries of the chips (by id, of this run's catalog) that need no work."""
        if self.params != dict(params):
            return {}
        return {
            chip_id: entry
            for chip_id, entry in self.chips.items()
            if chip_id in chips and entry.is_done_for(chips[chip_id], layout, state)
        }

    def check_params(self, params: Mapping[str, Any], source: str | None = None) -> None:
        """`ParamsChangedError` naming each parameter that differs, with old and new value
        (`source`: the file the old params come from, named in the message)."""
        old, new = self.params, dict(params)
        if old == new:
            return
        changes = [
            f"{key}: {old.get(key)!r} -> {new.get(key)!r}"
            for key in sorted(set(old) | set(new))
            if old.get(key) != new.get(key)
        ]
        changed = {key.split(":", 1)[0] for key in changes}
        hint = ""
        if changed and changed <= {"aoi_percentiles", "zarr_chip_ids_sha256"}:
            hint = " (the AOI's chips changed since that run)"
        raise ParamsChangedError(
            f"{source or self.aoi}: outputs were made with other parameters{hint}: {'; '.join(changes)}. "
            "Re-run with --overwrite to replace them, or choose another --out"
        )


def _plain(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors()[:3]:
        where = ".".join(str(p) for p in error["loc"]) or "document"
        problems.append(f"{where}: {error['msg']}")
    more = len(exc.errors()) - 3
    return "; ".join(problems) + (f"; and {more} more" if more > 0 else "")
