"""URIs → filesystems: local paths and s3:// (any S3-compatible server), through fsspec and pyarrow.

A URI is a local path (absolute or relative, or `file://...`) or `s3://bucket/key`. Functions here
hand URIs back in the caller's form: plain absolute paths for local files (so PyAV, ffmpeg and
`open` take them as they are) and `s3://bucket/key` for objects.

The S3 endpoint comes from `L2S_S3_ENDPOINT`, else `AWS_ENDPOINT_URL` (e.g. `http://127.0.0.1:9000`
for a local server); credentials and region come from the usual AWS variables and files.
"""

from __future__ import annotations

import os
import posixpath
import re
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from typing import IO
from urllib.parse import urlparse

import fsspec
import pyarrow.fs as pafs
from fsspec.implementations.local import LocalFileSystem


def s3_endpoint() -> str | None:
    """The S3 endpoint override, if any: `L2S_S3_ENDPOINT` wins over `AWS_ENDPOINT_URL`."""
    return os.environ.get("L2S_S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL") or None


def _storage_options(protocol: str) -> dict:
    if protocol not in ("s3", "s3a"):
        return {}
    # Listings are never cached: the dubbing job polls prefixes for new objects, and a cached
    # listing would hide them for the life of the (process-wide, reused) filesystem instance.
    options: dict = {"use_listings_cache": False}
    if endpoint := s3_endpoint():
        options["endpoint_url"] = endpoint
    return options


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for `uri` and the path within it (`bucket/key` for s3)."""
    protocol = urlparse(uri).scheme if "://" in uri else "file"
    fs, path = fsspec.core.url_to_fs(uri, **_storage_options(protocol))
    return fs, path.rstrip("/") or path


def arrow_filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """A native pyarrow filesystem for `uri` (faster than fsspec for large Parquet scans)."""
    fs, path = filesystem(uri)
    if isinstance(fs, LocalFileSystem):
        return pafs.LocalFileSystem(), path
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else fs.protocol
    if "s3" in protocols:
        options: dict = {}
        if endpoint := s3_endpoint():
            parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
            options.update(scheme=parsed.scheme, endpoint_override=parsed.netloc)
        if region := os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"):
            options["region"] = region
        return pafs.S3FileSystem(**options), path
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def is_local(uri: str) -> bool:
    return isinstance(filesystem(uri)[0], LocalFileSystem)


def _to_uri(fs: fsspec.AbstractFileSystem, path: str) -> str:
    return path if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(path)


def normalize(uri: str) -> str:
    """The canonical form of `uri`: an absolute path, or `s3://bucket/key` with no trailing '/'."""
    return _to_uri(*filesystem(uri))


def join(root: str, *parts: str) -> str:
    """`root` and path parts joined with '/', for local paths and object URIs alike."""
    return posixpath.join(root, *(p.strip("/") for p in parts if p))


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.exists(path)


def open_uri(uri: str, mode: str = "rb") -> IO:
    """Open a file for streaming. To write a whole file that readers may see, use `atomic_write`."""
    fs, path = filesystem(uri)
    if "r" not in mode and isinstance(fs, LocalFileSystem):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    return fs.open(path, mode)


def list_files(root: str, suffixes: Iterable[str] | None = None) -> list[str]:
    """All files below `root` (recursively), as sorted URIs; only those ending in `suffixes`
    (case-insensitive, e.g. ".mp4") when given. One listing, so it is fast on object stores.

    Local trees are walked with `os.walk`, following symlinked folders (corpora are often
    assembled from links): it is ~10× faster than fsspec's walk, which stats every entry.
    """
    fs, path = filesystem(root)
    wanted = tuple(s.lower() for s in suffixes) if suffixes is not None else None
    if isinstance(fs, LocalFileSystem):
        found = [
            f"{folder}/{name}"
            for folder, _, names in os.walk(path, followlinks=True)
            for name in names
        ]
    else:
        found = [_to_uri(fs, p) for p in fs.find(path, withdirs=False)]
    return sorted(p for p in found if wanted is None or p.lower().endswith(wanted))


def modified_times(root: str, suffixes: Iterable[str] | None = None) -> dict[str, float | None]:
    """`list_files`, with each file's modification time (Unix seconds; None where the store
    reports none). Local files are stat'ed; an object store's listing carries the times."""
    fs, path = filesystem(root)
    if isinstance(fs, LocalFileSystem):
        times: dict[str, float | None] = {}
        for uri in list_files(root, suffixes):
            with suppress(FileNotFoundError):  # removed since the listing
                times[uri] = os.stat(uri).st_mtime
        return times
    wanted = tuple(s.lower() for s in suffixes) if suffixes is not None else None
    found = fs.find(path, withdirs=False, detail=True)
    return {
        _to_uri(fs, p): _mtime(info)
        for p, info in sorted(found.items())
        if wanted is None or p.lower().endswith(wanted)
    }


def _mtime(info: dict) -> float | None:
    # s3fs says LastModified (a datetime); other fsspec stores say mtime or last_modified.
    value = info.get("LastModified", info.get("mtime", info.get("last_modified")))
    if value is None:
        return None
    return value.timestamp() if hasattr(value, "timestamp") else float(value)


def remove(uri: str) -> None:
    """Delete one file; a file that is already gone is fine."""
    fs, path = filesystem(uri)
    with suppress(FileNotFoundError):
        fs.rm_file(path)


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    return fs.cat_file(path)


def read_many(uris: Iterable[str], max_workers: int = 32) -> dict[str, bytes | OSError]:
    """Read many small files on one filesystem; a file that cannot be read maps to its error.

    Object stores are read concurrently (one request per object is latency-bound); local files
    sequentially with plain `open`, since threads would only contend for the same disk and GIL.
    """
    uris = list(uris)
    if not uris:
        return {}
    fs, _ = filesystem(uris[0])
    local = isinstance(fs, LocalFileSystem)

    def read(uri: str) -> bytes | OSError:
        # The filesystem is resolved once above: resolving it per file costs more than reading.
        path = fsspec.core.strip_protocol(uri)
        try:
            if local:
                with open(path, "rb") as f:
                    return f.read()
            return fs.cat_file(path)
        except OSError as e:
            return e

    if local:
        return {uri: read(uri) for uri in uris}
    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        return dict(zip(uris, pool.map(read, uris), strict=True))


@contextmanager
def atomic_write(uri: str, mode: str = "wb") -> Iterator[IO]:
    """Write a whole file so that readers see the old file, the complete new one, or nothing.

    Local: a temporary file beside the target, then `os.replace` (atomic on POSIX).
    Object stores: a local temporary file, then one upload on success; S3 makes an object visible
    only once its upload completes, and a failed write uploads nothing.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write supports modes 'wb' and 'w', not {mode!r}")
    fs, path = filesystem(uri)
    encoding = None if "b" in mode else "utf-8"
    if isinstance(fs, LocalFileSystem):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = os.path.join(
            os.path.dirname(path), f".{os.path.basename(path)}.{uuid.uuid4().hex}{_TMP_SUFFIX}"
        )
        try:
            with open(tmp, mode, encoding=encoding) as f:
                yield f
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return
    with tempfile.TemporaryDirectory(prefix="l2s-upload-") as folder:
        tmp = os.path.join(folder, "part")
        with open(tmp, mode, encoding=encoding) as f:
            yield f
        fs.put_file(tmp, path)


_TMP_SUFFIX = ".tmp"
_TMP_NAME = re.compile(r"^\.(?P<target>.+)\.[0-9a-f]{32}" + re.escape(_TMP_SUFFIX) + "$")


def temporary_target(uri: str) -> str | None:
    """The file a local temporary of `atomic_write` was to become, or None if `uri` is not one.

    A killed process leaves its temporaries behind; a job that knows which files it is about to
    write again can remove them (no other writer's files look like this).
    """
    folder, name = posixpath.split(uri)
    match = _TMP_NAME.match(name)
    return posixpath.join(folder, match["target"]) if match else None


def write_bytes(uri: str, data: bytes) -> None:
    with atomic_write(uri) as f:
        f.write(data)
