"""Files and S3 through fsspec: URLs, bounded reads, atomic writes, leftover partials.

Local paths and `s3://` URLs go through the same functions. Credentials come from the
standard AWS chain (environment, profile, instance role) via s3fs/botocore; sn5dask never
reads, stores or logs them. `AWS_ENDPOINT_URL` (e.g. a moto server) is honoured.

Atomicity: a local file is written to `<name>.partial` in the same folder and renamed
over the final name (rename is atomic within a filesystem), so a crash never leaves a
truncated file under a final name. On S3 an object is written by one PUT, which is atomic.
"""

from __future__ import annotations

import contextvars
import errno
import functools
import os
import posixpath
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

PARTIAL_SUFFIX = ".partial"


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path without protocol) for a local path or URL."""
    return fsspec.core.url_to_fs(url, **storage_options(url))


def storage_options(url: str) -> dict[str, Any]:
    """fsspec options for a URL: for `s3://`, the endpoint of `AWS_ENDPOINT_URL`, and
    anonymous access when the AWS chain holds no credentials (public buckets, such as
    SpaceNet's own, are read that way)."""
    if not url.startswith("s3://"):
        return {}
    options: dict[str, Any] = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        options["client_kwargs"] = {"endpoint_url": endpoint}
    if aws_credentials_method() is None:
        options["anon"] = True
    return options


#: The places botocore's credential chain looks, in its order (for messages).
AWS_CREDENTIAL_SOURCES = (
    "the AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY variables, AWS_PROFILE and the "
    "~/.aws/credentials and ~/.aws/config files (SSO and web identity included), the "
    "container role and the instance role"
)
_AWS_ENVIRONMENT = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
    "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_EC2_METADATA_DISABLED",
)  # fmt: skip


def aws_credentials_method() -> str | None:
    """How botocore's standard chain finds credentials here (`env`,
    `shared-credentials-file`, `iam-role`, ...), or None when it finds none. Looked up
    once per process and environment (the instance-role probe can take a second)."""
    return _credentials_method(tuple(os.environ.get(k) for k in _AWS_ENVIRONMENT))


@functools.lru_cache(maxsize=8)
def _credentials_method(environment: tuple[str | None, ...]) -> str | None:
    import botocore.session

    credentials = botocore.session.get_session().get_credentials()
    return None if credentials is None else str(getattr(credentials, "method", "found"))


def access_denied_message(url: str, exc: BaseException) -> str:
    """One line for an S3 access refusal, saying which credentials were (not) used."""
    method = aws_credentials_method()
    if method is None:
        return (
            f"{url}: access denied when read anonymously ({exc}). No AWS credentials were "
            f"found in {AWS_CREDENTIAL_SOURCES}. Give some: `aws configure`, AWS_PROFILE=name, "
            "or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        )
    return (
        f"{url}: access denied with the AWS credentials found ({method}): {exc}. Check that "
        "they may list and read this bucket, or give others (AWS_PROFILE=name)"
    )


def normalise_location(location: str | os.PathLike[str]) -> str:
    """The one form of a dataset root, output folder or file the user names.

    Local paths become absolute with `~` expanded (symlinks kept as given: `abspath`,
    not `realpath`), so every path recorded or compared later (the manifest, output sizes,
    `validate` from another folder) is the same string whatever the caller's working
    folder was; a `file://` URL becomes its path. Other URLs (`s3://`) are returned as
    they are. Pure string work; nothing is touched.
    """
    text = os.fspath(location)
    if text.startswith("file://"):
        text = text.removeprefix("file://")
    elif "://" in text:
        return text
    return os.path.abspath(os.path.expanduser(text))


def unreachable_endpoint_message(url: str, exc: BaseException) -> str | None:
    """One line for an S3 endpoint that cannot be reached at all (no network, a wrong
    AWS_ENDPOINT_URL), naming the endpoint; None for any other error."""
    from botocore.exceptions import EndpointConnectionError

    if not isinstance(exc, EndpointConnectionError):
        return None
    endpoint = str(exc.kwargs.get("endpoint_url", "")).split("?", 1)[0]
    return (
        f"{url}: cannot connect to the S3 endpoint {endpoint} (no network, or a wrong "
        "AWS_ENDPOINT_URL / region); check the connection and try again"
    )


#: Settings (never secrets) that decide where and how S3 is reached; a worker must have
#: the client's for an `s3://` ROOT or OUT (`s3_settings`, `s3_reach_problem`).
S3_SETTINGS = (
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION",
    "AWS_S3_ENDPOINT", "AWS_HTTPS", "AWS_VIRTUAL_HOSTING",
)  # fmt: skip


def s3_settings() -> dict[str, str | None]:
    """This process's S3 settings (`S3_SETTINGS`) and how it finds credentials (the
    method's name under `credentials`, never a value)."""
    found: dict[str, str | None] = {name: os.environ.get(name) for name in S3_SETTINGS}
    found["credentials"] = aws_credentials_method()
    return found


def s3_reach_problem(url: str, probe_name: str | None = None) -> str | None:
    """Whether this process (a worker) can reach `url` with its own S3 settings: None, or
    the problem in a few words. `url` is read (its metadata); with `probe_name`, an empty
    object of that name is also written beside it and removed (an output folder). One
    attempt with a short timeout, so a wrong endpoint is found in seconds, not retried."""
    options = storage_options(url)
    options["config_kwargs"] = {"connect_timeout": 5, "read_timeout": 10, "retries": {"max_attempts": 1}}
    fs, path = fsspec.core.url_to_fs(url, skip_instance_cache=True, **options)
    try:
        if probe_name is None:
            fs.info(path)
        else:
            probe = posixpath.join(path, probe_name)
            fs.pipe_file(probe, b"")
            fs.rm_file(probe)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def remove_file(url: str) -> None:
    """Delete one file or object; one that is not there is nothing to do."""
    fs, path = filesystem(url)
    try:
        fs.rm_file(path)
    except FileNotFoundError:
        pass


def remove_tree(url: str) -> None:
    """Delete a folder (or S3 prefix) and everything below it."""
    fs, path = filesystem(url)
    fs.rm(path, recursive=True)


def remove_empty_folder(url: str) -> None:
    """Remove a local folder if it is empty (S3 has no folders); anything else stays."""
    if is_local(url):
        try:
            os.rmdir(url)
        except OSError:
            pass  # not empty, or already gone


def is_local(url: str) -> bool:
    """A local path (or file:// URL)? Decided from the text alone: building a filesystem
    for an s3:// URL would look up AWS credentials."""
    return "://" not in url or url.startswith("file://")


def is_local_fs(fs: fsspec.AbstractFileSystem) -> bool:
    return isinstance(fs, LocalFileSystem)


def full_url(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """A path as returned by `fs.glob` turned back into something `filesystem` accepts."""
    if isinstance(fs, LocalFileSystem):
        return path
    return fs.unstrip_protocol(path)


def join(base: str, *parts: str) -> str:
    """Join URL/path parts with `/` (parts are sanitised names, never absolute paths)."""
    for part in parts:
        if part.startswith("/") or ".." in part.split("/"):
            raise ValueError(f"refusing to join unsafe path part {part!r}")
    if is_local(base):
        return os.path.join(base, *parts)
    return posixpath.join(base.rstrip("/"), *parts)


def exists(url: str) -> bool:
    fs, path = filesystem(url)
    return bool(fs.exists(path))


def makedirs(url: str) -> None:
    fs, path = filesystem(url)
    if isinstance(fs, LocalFileSystem):
        os.makedirs(path, exist_ok=True)


def read_bytes(url: str, max_bytes: int | None = None) -> bytes:
    """The whole object, checked against its listed size (a short read raises OSError).

    Raises `ValueError` naming the size when it is over `max_bytes`.
    """
    fs, path = filesystem(url)
    if isinstance(fs, LocalFileSystem):
        require_regular_file(path)
    size = int(fs.size(path))
    if max_bytes is not None and size > max_bytes:
        raise ValueError(f"{size / 2**20:.1f} MB is over the limit of {max_bytes / 2**20:g} MB")
    data = fs.cat_file(path)
    if len(data) != size:
        raise OSError(f"short read: got {len(data)} of {size} bytes")
    return data


def file_sizes(folder_url: str, *, skip: str | None = None) -> dict[str, int]:
    """URL -> size of every file below `folder_url` (recursively; nothing below `skip`),
    from one listing (a walk locally, one paginated listing on S3)."""
    fs, path = filesystem(folder_url)
    skipped = filesystem(skip)[1].rstrip("/") + "/" if skip else None
    sizes: dict[str, int] = {}
    if isinstance(fs, LocalFileSystem):
        for directory, folders, names in os.walk(path):
            if skipped is not None:
                folders[:] = [f for f in folders if not (os.path.join(directory, f) + "/").startswith(skipped)]
            for name in names:
                full = os.path.join(directory, name)
                try:
                    sizes[full] = os.stat(full).st_size
                except OSError:
                    continue
        return sizes
    if not fs.exists(path):
        return sizes
    for key, info in fs.find(path, detail=True).items():
        if skipped is None or not (key + "/").startswith(skipped):
            sizes[full_url(fs, key)] = int(info.get("size", -1))
    return sizes


def find(folder_url: str) -> list[str]:
    """Paths (relative to `folder_url`, with `/`) of every file below it."""
    fs, path = filesystem(folder_url)
    base = path.rstrip("/") + "/"
    if not fs.exists(path):
        return []
    return [key[len(base):] if key.startswith(base) else key for key in fs.find(path)]


def require_regular_file(path: str) -> None:
    """Raise `OSError` unless a local path is a regular file: opening a FIFO or a device
    named like an input would block or read forever."""
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise OSError("not a regular file (a FIFO, device or socket): not read")


def write_bytes_atomic(url: str, data: bytes) -> None:
    """Write `data` under `url` so that the final name only ever holds complete content:
    locally a `.partial` file, fsync, then rename; on S3 one PUT (atomic there).

    Inside `committed_together`, the local flush and rename wait for the end of the block.
    """
    if not is_local(url):
        fs, path = filesystem(url)
        fs.pipe_file(path, data)
        return
    path = url.removeprefix("file://")
    folder = os.path.dirname(path)
    if folder and not os.path.isdir(folder):  # one stat in the usual case
        os.makedirs(folder, exist_ok=True)
    partial = path + PARTIAL_SUFFIX
    pending = _pending_renames.get()
    try:
        with open(partial, "wb") as f:
            f.write(data)
            if pending is None:
                f.flush()
                os.fsync(f.fileno())
        if pending is None:
            os.replace(partial, path)
            fsync_folder(folder)
        else:
            pending[path] = None
    except BaseException:
        try:
            os.remove(partial)
        except FileNotFoundError:
            pass
        raise


#: The local files written inside the current `committed_together` block (an ordered set).
_pending_renames: contextvars.ContextVar[dict[str, None] | None] = contextvars.ContextVar(
    "sn5dask_pending_renames", default=None
)


@contextmanager
def committed_together() -> Iterator[None]:
    """Local atomic writes in this block get their final names together, at its end.

    Each file is written to its `.partial` name as usual; at the end every one is fsynced,
    then all are renamed, then each folder that received one is fsynced (so the renames
    survive a power loss too). If a flush fails, none of them gets its final name. Files
    are renamed even when the block raises: what was written is complete. Nested blocks
    commit with the outermost. A chip task's outputs thus appear together or not at all.
    """
    if _pending_renames.get() is not None:
        yield
        return
    pending: dict[str, None] = {}
    token = _pending_renames.set(pending)
    try:
        yield
    finally:
        _pending_renames.reset(token)
        _commit(list(pending))


def _commit(paths: list[str]) -> None:
    partials = [path + PARTIAL_SUFFIX for path in paths]
    try:
        for partial in partials:
            fsync_file(partial)
    except BaseException:
        for partial in partials:  # not made durable: none gets its final name
            try:
                os.remove(partial)
            except OSError:
                pass
        raise
    for path, partial in zip(paths, partials, strict=True):
        os.replace(partial, path)
    for folder in dict.fromkeys(os.path.dirname(path) for path in paths):
        fsync_folder(folder)


def fsync_file(path: str) -> None:
    """Flush one file's data to stable storage (the OS's error if that fails)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_folder(folder: str) -> None:
    """Flush a folder's entries (renames into it) to stable storage. Filesystems that
    cannot fsync a folder (some FUSE mounts answer EINVAL) are left as they are."""
    fd = os.open(folder or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def remove_partials(folder_url: str) -> int:
    """Delete leftover `*.partial` files below a local folder (after a crash); count them."""
    fs, path = filesystem(folder_url)
    if not isinstance(fs, LocalFileSystem) or not os.path.isdir(path):
        return 0
    removed = 0
    for directory, _, files in os.walk(path):
        for name in files:
            if name.endswith(PARTIAL_SUFFIX):
                os.remove(os.path.join(directory, name))
                removed += 1
    return removed
