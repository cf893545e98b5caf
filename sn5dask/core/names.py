"""Output names: sanitised AOI names and chip ids, and the one file name every output folder
uses for a chip (pure string work, shared by discovery and the output layout)."""

from __future__ import annotations

import hashlib
import posixpath
import re

#: The folder of the 8-bit images; in output names it replaces the input's `PS-MS`.
RGB_FOLDER = "PS-RGB"
_UNSAFE_CHARS_RE = re.compile(r"[^A-Za-z0-9_-]+")


def sanitise(text: str) -> str:
    """Letters, digits, `_` and `-` only; never empty, never a path."""
    cleaned = _UNSAFE_CHARS_RE.sub("_", text).strip("_-")
    return cleaned or "unnamed"


def file_stem(file_name: str) -> str:
    """A file name without its folder and its raster/label suffix."""
    name = posixpath.basename(file_name)
    for suffix in (".geojson", ".json", ".tiff", ".tif", ".TIFF", ".TIF"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name.rsplit(".", 1)[0] if "." in name else name


#: Longest output file name, in bytes: 255 (the usual NAME_MAX) less room for the
#: `.partial` suffix of atomic writes and a margin for other filesystems.
MAX_OUTPUT_NAME_BYTES = 200


def output_name(image_name: str) -> str:
    """Output file name for every output folder: `PS-MS` -> `PS-RGB`, sanitised, `.tif`.

    A name longer than `MAX_OUTPUT_NAME_BYTES` is shortened deterministically: its first
    180 characters, `_`, and the first 12 hex digits of the SHA-1 of the whole sanitised
    stem (so two long names that share a beginning stay apart).
    """
    stem = sanitise(file_stem(image_name).replace("PS-MS", RGB_FOLDER))
    if len(stem) + len(".tif") > MAX_OUTPUT_NAME_BYTES:  # sanitised names are ASCII
        digest = hashlib.sha1(stem.encode()).hexdigest()[:12]
        stem = f"{stem[:180]}_{digest}"
    return f"{stem}.tif"
