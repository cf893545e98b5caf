"""rasterio/rioxarray edges: read and validate chips, write GeoTIFFs atomically, GDAL env.

Thread-safety: every function opens its own dataset (no shared handles, no global lock),
so reads run in parallel across threads and processes.
"""

from __future__ import annotations

import functools
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import rasterio
import rasterio.crs
from rasterio.errors import RasterioError
from rasterio.io import MemoryFile
from rasterio.session import DummySession, Session

from sn5dask.core.grid import ChipHeader, band_indexes  # noqa: F401  (band_indexes: importable here too)
from sn5dask.core.outputspec import OutputSpec
from sn5dask.errors import ImageError, TooFewBandsError
from sn5dask.io import chipcache, files

SUPPORTED_DTYPES = ("uint8", "uint16")
#: How often this process decoded each chip's pixels (benchmarks read it from every worker
#: to show each chip is read at most twice). Diagnostics only; nothing depends on it.
PIXEL_READS: Counter[str] = Counter()
def gdal_options(url: str | None = None) -> dict[str, str]:
    """GDAL settings for a read/write of `url`, derived from the environment of this
    process (called on workers, so their environment counts).

    For `s3://` URLs (or `url=None`): when only `AWS_ENDPOINT_URL` is set (a moto server,
    MinIO), GDAL's own variables are derived from it, so `/vsis3/` talks to the same
    endpoint as s3fs.
    """
    options = {
        # Don't list the folder of every file opened (slow on S3, useless for chips).
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
        "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.TIF,.TIFF",
        # GDAL does not retry HTTP errors by default; S3 answers 500/503 (SlowDown) under load.
        "GDAL_HTTP_MAX_RETRY": os.environ.get("GDAL_HTTP_MAX_RETRY", "5"),
        "GDAL_HTTP_RETRY_DELAY": os.environ.get("GDAL_HTTP_RETRY_DELAY", "0.5"),
    }
    if url is not None and not url.startswith("s3://"):
        return options
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint and "AWS_S3_ENDPOINT" not in os.environ:
        scheme, _, host = endpoint.partition("://")
        options["AWS_S3_ENDPOINT"] = host.rstrip("/") if host else scheme
        options["AWS_HTTPS"] = "NO" if scheme == "http" else "YES"
        options["AWS_VIRTUAL_HOSTING"] = "FALSE"
    return options


@contextmanager
def gdal_env(url: str | None = None) -> Iterator[None]:
    """rasterio's environment for reading or writing `url`.

    AWS is set up only for `s3://` URLs, once per process: for anything else rasterio gets
    no AWS session (by default it builds one from AWS_* variables at every open, which costs
    each local chip's open more than its header read with credentials in the environment:
    `benchmarks/bench_local_opens.py`). With no credentials in the
    AWS chain, S3 is read unsigned (public buckets).
    """
    if url is not None and url.startswith("s3://"):
        with rasterio.Env(session=_aws_session(), **gdal_options(url)):
            yield
    elif url is not None:
        with rasterio.Env(session=DummySession(), **gdal_options(url)):
            yield
    else:
        with rasterio.Env(**gdal_options(url)):
            yield


def _aws_session() -> Session:
    key = tuple(os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                            "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_REGION"))
    return _cached_aws_session(key, files.aws_credentials_method() is None)


@functools.lru_cache(maxsize=4)
def _cached_aws_session(environment: tuple[str | None, ...], unsigned: bool) -> Session:
    from rasterio.session import AWSSession

    return AWSSession(aws_unsigned=True) if unsigned else AWSSession()


def _validate(path: str, src: rasterio.DatasetReader, bands: Sequence[int]) -> ChipHeader:
    dtypes = set(src.dtypes)
    if len(dtypes) != 1 or src.dtypes[0] not in SUPPORTED_DTYPES:
        raise ImageError(
            path,
            f"unsupported pixel type {', '.join(sorted(dtypes))}: sn5dask reads uint8 or "
            "uint16 imagery (float and signed data have no exact 8-bit stretch)",
        )
    needed = max(bands) if bands else 1
    if src.count < needed:
        raise TooFewBandsError(path, src.count, needed)
    if src.crs is None:
        raise ImageError(path, "has no CRS: cannot place labels or georeference outputs")
    t = src.transform
    if t.b != 0 or t.d != 0:
        raise ImageError(path, f"has a rotated or sheared transform {tuple(t)[:6]}: not supported")
    if t.is_identity or t.a == 0 or t.e == 0:
        raise ImageError(path, "has no geotransform (not georeferenced)")
    return ChipHeader(
        height=src.height,
        width=src.width,
        count=src.count,
        dtype=src.dtypes[0],
        transform=tuple(t)[:6],  # type: ignore[arg-type]
        crs_wkt=src.crs.to_wkt(),
        nodata=tuple(src.nodatavals),
    )


def gdal_path(url: str) -> str:
    """The GDAL name of a chip: `s3://b/k` -> `/vsis3/b/k` (given to GDAL as it is, so a key
    holding `#` or `?` is not cut at a URL fragment or query, as rasterio's URL parsing
    would); other paths unchanged."""
    if url.startswith("s3://"):
        return "/vsis3/" + url[len("s3://") :]
    return url


@contextmanager
def _open(path: str) -> Iterator[rasterio.DatasetReader]:
    if "://" not in path:
        files.require_regular_file(path)
    local = chipcache.lookup(path) if path.startswith("s3://") else None
    if local is not None:  # the copy the scan pass made on this worker
        with rasterio.open(local) as src:
            yield src
        return
    if path.startswith("s3://") and "?" in path:
        # GDAL's /vsis3/ cuts a name at "?" (its option syntax) whatever the escaping:
        # such an object is fetched whole through fsspec and opened from memory.
        with MemoryFile(files.read_bytes(path)) as memfile, memfile.open() as src:
            yield src
        return
    with rasterio.open(gdal_path(path)) as src:
        yield src


def read_header(path: str, bands: Sequence[int] = ()) -> ChipHeader:
    """Open a chip, validate it for `bands` and return its header (no pixels read)."""
    try:
        with gdal_env(path), _open(path) as src:
            return _validate(path, src, bands)
    except (RasterioError, OSError) as exc:
        raise ImageError(path, unreadable_reason(path, exc)) from None


def read_chip(
    path: str, bands: Sequence[int], *, all_bands: bool = False
) -> tuple[ChipHeader, np.ndarray]:
    """Header and pixels of a chip: `bands` (1-based) or, with `all_bands`, every band.

    A pixel-interleaved file decodes every band for any read, so reading all bands costs
    no more; with `all_bands` the caller selects `bands` from the result itself.
    """
    try:
        with gdal_env(path), _open(path) as src:
            header = _validate(path, src, bands)
            data = src.read() if all_bands else src.read(list(bands))
            PIXEL_READS[path] += 1
    except (RasterioError, OSError) as exc:
        raise ImageError(path, unreadable_reason(path, exc)) from None
    return header, data


def unreadable_reason(path: str, exc: BaseException) -> str:
    """Why a chip cannot be read, in the user's terms. An S3 refusal (HTTP 403) says which
    credentials were used, or where none were found, as a refused listing does."""
    reason = _describe(exc)
    if path.startswith("s3://") and ("403" in reason or "Access Denied" in reason):
        return files.access_denied_message(path, exc).removeprefix(f"{path}: ")
    return f"cannot be read as a raster ({reason})"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror  # e.g. "Permission denied" (the path is already in the message)
    # rasterio says "Read failed. See previous exception for details." and chains GDAL's
    # own error (e.g. "IReadBlock failed ...: TIFFReadEncodedStrip() failed."): give that.
    cause = exc.__cause__
    if cause is not None and str(cause) and "See previous exception" in str(exc):
        return f"{exc}".split(". See previous", 1)[0] + f": {cause}"
    return str(exc) or type(exc).__name__


def encode_geotiff(array: np.ndarray, header: ChipHeader, spec: OutputSpec) -> bytes:
    """GeoTIFF bytes of a (band, y, x) or (y, x) uint8 array on the chip's grid, written by
    GDAL (through rasterio) into memory, encoded as `spec` says.

    Tiled and interleaved as the spec lays it out, with its lossless codec; CRS and
    transform copied exactly.
    GDAL's fixed cost per file is kept small with its own settings: creation options are
    not validated again for every file (`GDAL_VALIDATE_CREATION_OPTIONS=NO`; they are
    fixed here) and each CRS is parsed once per process (`_crs`).
    """
    if array.ndim == 2:
        array = array[np.newaxis]
    count, height, width = array.shape
    profile: dict[str, object] = {
        "driver": "GTiff",
        "height": height,
        "width": width,
        "count": count,
        "dtype": array.dtype.name,
        **spec.layout_options(count, height, width),
        **spec.codec_options(),
        "crs": _crs(header.crs_wkt),
        "transform": rasterio.Affine(*header.transform[:6]),
        "nodata": spec.nodata,
    }
    if spec.photometric:
        profile["photometric"] = spec.photometric
    with gdal_env("memory"), rasterio.Env(GDAL_VALIDATE_CREATION_OPTIONS="NO"), MemoryFile() as memfile:
        with memfile.open(**profile) as dst:
            dst.write(array)
            if spec.descriptions is not None:
                dst.descriptions = spec.descriptions
        return memfile.read()


@functools.lru_cache(maxsize=16)
def _crs(wkt: str) -> rasterio.crs.CRS:
    """The CRS of a WKT, parsed once per process: an AOI's chips share a few, and parsing
    it again for each output was a large part of a small chip's encode."""
    return rasterio.crs.CRS.from_user_input(wkt)


def write_geotiff(url: str, array: np.ndarray, header: ChipHeader, spec: OutputSpec) -> int:
    """Encode (`encode_geotiff`) and write atomically (`.partial` + rename locally, one PUT
    on S3); returns the file's size in bytes."""
    data = encode_geotiff(array, header, spec)
    files.write_bytes_atomic(url, data)
    return len(data)
