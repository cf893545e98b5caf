"""`manifest.json`: the per-AOI resume record, rewritten atomically by the client.

A chip is done when its status is `ok` or `skipped` under identical params and every
path in its `outputs` exists under its final name (a Zarr output is recorded only after
its region write returned, and counts while the store exists).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from sn5dask import storage

MANIFEST_NAME = "manifest.json"
STATS_NAME = "stats.json"
DONE_STATUSES = ("ok", "skipped")


@dataclass
class Manifest:
    aoi: str
    params: dict[str, Any]
    root: str = ""
    chips: dict[str, dict[str, Any]] = field(default_factory=dict)
    orphan_labels: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.time)

    def as_json(self) -> dict[str, Any]:
        counts = {s: 0 for s in ("ok", "skipped", "failed")}
        for entry in self.chips.values():
            counts[entry["status"]] = counts.get(entry["status"], 0) + 1
        return {
            "aoi": self.aoi,
            "root": self.root,
            "params": self.params,
            "orphan_labels": self.orphan_labels,
            "counts": counts,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "chips": self.chips,
        }

    def write(self, out_aoi: str) -> None:
        storage.write_json_atomic(storage.join(out_aoi, MANIFEST_NAME), self.as_json())


def read_manifest(out_aoi: str) -> dict[str, Any] | None:
    """The previous run's manifest, or None (also when it is unreadable: nothing is done)."""
    url = storage.join(out_aoi, MANIFEST_NAME)
    try:
        if not storage.exists(url):
            return None
        document = storage.read_json(url)
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None


def done_chips(previous: dict[str, Any] | None, params: dict[str, Any], out_aoi: str) -> dict[str, dict]:
    """Entries of chips that need no work: done under `params` with every output present."""
    if not previous or previous.get("params") != params:
        return {}
    done: dict[str, dict] = {}
    for chip_id, entry in (previous.get("chips") or {}).items():
        if not isinstance(entry, dict) or entry.get("status") not in DONE_STATUSES:
            continue
        outputs = entry.get("outputs") or {}
        if all(_output_exists(out_aoi, path) for path in outputs.values()):
            done[chip_id] = entry
    return done


def _output_exists(out_aoi: str, relpath: str) -> bool:
    if not isinstance(relpath, str):
        return False
    if "#" in relpath:  # "<AOI>.zarr#<index>": the region was written into this store
        relpath = relpath.split("#", 1)[0]
    try:
        return storage.exists(storage.join(out_aoi, relpath))
    except ValueError:  # an unsafe path in a tampered manifest is simply "not there"
        return False
