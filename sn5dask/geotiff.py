"""GeoTIFF bytes of a chip's outputs: GDAL's georeferencing, assembled by tifffile.

GDAL (through rasterio) is the reference GeoTIFF writer, but a file costs it about 1 ms
of fixed work whatever its size: validating the creation options, probing whether the
target exists, and turning the CRS into GeoTIFF keys again for every file. A 64 px chip
has five outputs, so that fixed work was a third of its whole cost
(`python benchmarks/bench_chip_stages.py`).

Within an AOI every file of one output kind has the same georeferencing keys and GDAL
metadata: only the transform and the pixels change. So, per kind (CRS, bands, pixel type,
codec, nodata, band descriptions), GDAL writes one 16 x 16 px sample, and its tags that
GDAL alone knows how to fill (the GeoKey directory and its double and ASCII parameters,
`GDAL_METADATA` with the band descriptions, `GDAL_NODATA`) are copied into every file.
tifffile writes the rest: the chip's tiles, compressed by imagecodecs (libdeflate and
zstd, the libraries inside GDAL) with the codec settings of `raster`, and the chip's
transform as GDAL writes a north-up grid (`ModelPixelScale` = (a, -e, 0),
`ModelTiepoint` = (0, 0, 0, c, f, 0)). The sample is checked to hold exactly those two
tags for its own transform (else GDAL writes every file of the kind), and a chip whose
grid is not north-up is written by GDAL itself.

The result reads the same in every tool: `tests/test_geotiff.py` compares, for every
output kind and codec, each TIFF tag and what rasterio reads with GDAL's own file, and
reads the files with tifffile without imagecodecs (CRESI's reader). One addition:
tifffile always writes TIFF's baseline X/YResolution (1/1, no unit), which GDAL lists as
`TIFFTAG_*` metadata and uses for nothing.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import tifffile

#: Tags copied from GDAL's sample file: GeoKeyDirectory, GeoDoubleParams, GeoAsciiParams,
#: GDAL_METADATA (band descriptions), GDAL_NODATA.
TEMPLATE_TAGS = (34735, 34736, 34737, 42112, 42113)
MODEL_PIXEL_SCALE, MODEL_TIEPOINT = 33550, 33922
#: Height and width of GDAL's sample file, in pixels.
SAMPLE_SIDE = 16
#: The grid of GDAL's sample file: north-up, with nothing GDAL could simplify away.
SAMPLE_TRANSFORM = (0.5, 0.0, 1000.25, 0.0, -0.25, 2000.75)

#: tifffile's names of GDAL's codecs, and GDAL's creation options holding their level.
_COMPRESSION = {"deflate": "adobe_deflate", "zstd": "zstd", "lzw": "lzw"}
_LEVEL_OPTIONS = ("zlevel", "zstd_level")


@dataclass(frozen=True)
class Template:
    """How every file of one output kind is written, learnt from GDAL's sample file:
    its tags to copy, and tifffile's settings for GDAL's creation profile."""

    extratags: tuple[tuple[int, int, int, Any, bool], ...]
    tile: tuple[int, int]  # (height, width)
    photometric: str  # "rgb" or "minisblack"
    band_interleaved: bool  # TIFF's planar configuration "separate"
    compression: str | None  # tifffile's codec name; None: uncompressed
    level: int | None
    predictor: bool  # horizontal differencing


def north_up(transform: Sequence[float]) -> bool:
    """A grid GDAL writes as pixel scale + tiepoint: no rotation, x east, y south."""
    a, b, _, d, e, _ = transform[:6]
    return b == 0 and d == 0 and a > 0 and e < 0


def model_tags(transform: Sequence[float]) -> tuple[tuple[int, int, int, Any, bool], ...]:
    """`ModelPixelScale` and `ModelTiepoint` of a north-up grid, as GDAL writes them."""
    a, _, c, _, e, f = transform[:6]
    return (
        (MODEL_PIXEL_SCALE, 12, 3, (a, -e, 0.0), True),
        (MODEL_TIEPOINT, 12, 6, (0.0, 0.0, 0.0, c, f, 0.0), True),
    )


def learn_template(
    gdal_bytes: bytes, transform: Sequence[float], profile: dict[str, str | int]
) -> Template | None:
    """The `Template` of a file GDAL wrote with `profile` on a north-up `transform`; None
    when GDAL georeferenced it otherwise than `model_tags` (then GDAL writes every file)."""
    with tifffile.TiffFile(io.BytesIO(gdal_bytes)) as tif:
        page = tif.pages[0]
        assert isinstance(page, tifffile.TiffPage)
        tags = {tag.code: tag for tag in page.tags.values()}
        expected = {code: value for code, _, _, value, _ in model_tags(transform)}
        written = {code: tuple(tags[code].value) for code in expected if code in tags}
        if written != expected or 34264 in tags:  # ModelTransformation: not scale + tiepoint
            return None
        extratags = tuple(
            (code, int(tags[code].dtype), tags[code].count, _raw_value(tags[code], gdal_bytes), True)
            for code in TEMPLATE_TAGS
            if code in tags
        )
        photometric = "rgb" if page.photometric == tifffile.PHOTOMETRIC.RGB else "minisblack"
        band_interleaved = page.planarconfig == tifffile.PLANARCONFIG.SEPARATE
    compress = profile.get("compress")
    levels = [int(profile[key]) for key in _LEVEL_OPTIONS if key in profile]
    return Template(
        extratags=extratags,
        tile=(int(profile["blockysize"]), int(profile["blockxsize"])),
        photometric=photometric,
        band_interleaved=band_interleaved,
        compression=None if compress is None else _COMPRESSION[str(compress)],
        level=levels[0] if levels else None,
        predictor=profile.get("predictor", 1) == 2,
    )


def _raw_value(tag: tifffile.TiffTag, data: bytes) -> Any:
    """A tag's value as tifffile writes it back unchanged: ASCII as the bytes in the file
    (tifffile's reading strips trailing white space, and GDAL writes UTF-8 descriptions)."""
    if int(tag.dtype) != 2:
        return tag.value
    return data[tag.valueoffset : tag.valueoffset + tag.count]


def write(template: Template, array: np.ndarray, transform: Sequence[float]) -> bytes:
    """The GeoTIFF of a (band, y, x) array: tiles and transform of its own, every other tag
    from `template`."""
    if array.shape[0] == 1:
        data = array[0]
    elif template.band_interleaved:
        data = array
    else:
        data = np.moveaxis(array, 0, -1)  # pixel-interleaved: (y, x, band)
    buffer = io.BytesIO()
    tifffile.imwrite(
        buffer,
        np.ascontiguousarray(data),
        tile=template.tile,
        photometric=template.photometric,
        planarconfig="separate" if template.band_interleaved else "contig",
        compression=template.compression,
        compressionargs=None if template.level is None else {"level": template.level},
        predictor=template.predictor,
        extratags=[*model_tags(transform), *template.extratags],
        metadata=None,  # no tifffile description tag
        software=False,  # no Software tag (GDAL writes none)
        maxworkers=1,  # one thread: dask gives each task its own
    )
    return buffer.getvalue()
