"""How each output kind is encoded: one value object for the GeoTIFF writer (codec and its
settings, tiling and interleave, nodata, colour interpretation, band descriptions), built
once per kind from the run's options and handed to every writer instead of a list of
keywords. Pure."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from sn5dask.core.encodings import (
    COMPRESSIONS,
    MASK_ENCODINGS,
    RGB_NODATA,
    rgb_descriptions,
)

# Codec settings per output kind, measured on a full-size chip (benchmarks/bench_encode.py):
# - RGB imagery: horizontal differencing helps, and DEFLATE level 1 writes files within
#   1 % of level 6's size in three quarters of the time (46 vs 62 ms).
# - Masks: long runs of equal values; differencing only adds edges. With libdeflate,
#   level 5 writes the four masks of a chip in 38 ms against 49 ms at GDAL's default 6,
#   for 12 % more bytes (141 instead of 126 kB); levels 1-4 are no faster and up to
#   1.8x larger.
IMAGE_CODECS: dict[str, dict[str, str | int]] = {
    "deflate": {"compress": "deflate", "predictor": 2, "zlevel": 1},
    "zstd": {"compress": "zstd", "predictor": 2, "zstd_level": 1},
    "lzw": {"compress": "lzw", "predictor": 2},
    "none": {},
}
#: Largest GeoTIFF tile side; tiles are sized to fit the image (`block_size`).
MAX_BLOCK_SIZE = 1024
MASK_CODECS: dict[str, dict[str, str | int]] = {
    "deflate": {"compress": "deflate", "zlevel": 5},
    "zstd": {"compress": "zstd", "zstd_level": 1},
    "lzw": {"compress": "lzw"},
    "none": {},
}


@dataclass(frozen=True)
class OutputSpec:
    """The encoding of one output kind's GeoTIFFs (frozen, hashable, picklable).

    `compress`: one of `COMPRESSIONS`; `is_mask`: the masks' codec settings (no predictor);
    `nodata`: the GeoTIFF nodata tag (None: none); `photometric`: GDAL's PHOTOMETRIC
    creation option (None: GDAL's default); `descriptions`: one per band; `interleave`:
    "pixel" or "band" (None: pixel up to 4 bands, band above).
    """

    compress: str
    is_mask: bool = False
    nodata: float | None = None
    photometric: str | None = None
    descriptions: tuple[str, ...] | None = None
    interleave: str | None = None

    def __post_init__(self) -> None:
        if self.compress not in COMPRESSIONS:
            raise ValueError(f"unknown compression {self.compress!r}; choose from {COMPRESSIONS}")

    @classmethod
    def rgb(cls, bands: Sequence[int], compress: str) -> OutputSpec:
        """The 8-bit image of `bands` (PS-MS band numbers): nodata 0, colour interpretation
        red, green, blue for the first three and undefined for any further band (GDAL's
        default for a fourth would be alpha, and no band of it is one)."""
        return cls(compress, nodata=RGB_NODATA, photometric="RGB" if len(bands) >= 3 else "MINISBLACK",
                   descriptions=tuple(rgb_descriptions(tuple(bands))))  # fmt: skip

    @classmethod
    def mask(cls, kind: str, compress: str, multichannel_interleave: str = "band") -> OutputSpec:
        """A mask kind (`binary`, `continuous`, `binned`, `multichannel`): no nodata tag,
        grey then undefined bands (never alpha); the multichannel mask's band layout is
        the profile's (`Profile.multichannel_interleave`)."""
        return cls(compress, is_mask=True, photometric="MINISBLACK",
                   descriptions=tuple(MASK_ENCODINGS[kind].bands),
                   interleave=multichannel_interleave if kind == "multichannel" else None)  # fmt: skip

    def codec_options(self) -> dict[str, str | int]:
        """GDAL creation options of the codec (compress, predictor, level)."""
        return dict((MASK_CODECS if self.is_mask else IMAGE_CODECS)[self.compress])

    def layout_options(self, count: int, height: int, width: int) -> dict[str, str | int | bool]:
        """GDAL creation options of the layout of a (count, height, width) array: tiles
        sized to the image (`block_size`), and the spec's interleave (pixel up to 4 bands,
        band above, when it sets none)."""
        return {
            "interleave": self.interleave or ("pixel" if count <= 4 else "band"),
            "tiled": True,
            "blockysize": block_size(height),
            "blockxsize": block_size(width),
        }


def block_size(side: int) -> int:
    """Tile side for an image side: the fewest tiles of at most `MAX_BLOCK_SIZE` px, each a
    multiple of 16 (as GeoTIFF requires).

    A 1300 px chip gets 656 px tiles (2 x 2, padded to 1312) instead of 512 px ones (3 x 3,
    padded to 1536): 18 % fewer pixels to compress, and a faster DEFLATE
    (`benchmarks/bench_encode.py` times both tile sizes).
    """
    n_tiles = max(1, math.ceil(side / MAX_BLOCK_SIZE))
    return 16 * math.ceil(math.ceil(side / n_tiles) / 16)
