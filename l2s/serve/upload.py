"""Uploads on disk: the ingress streams a request's video to a temporary file as it arrives,
tracks the face in it there, and passes the file's path, never its bytes, to a deployment that
needs the file itself (the lip generator's).

Held in memory, one 100 MiB upload cost the ingress its bytes, a pickled copy and an object-store
copy, and the replica it went to two more, for each of the 64 requests in flight. On disk it
costs the ingress one network chunk while it arrives and nothing after.

A replica on the ingress's node opens the file where it lies; one on another node copies it over
first (`local_copy`), a chunk at a time, each read by a task pinned to the node that holds it.
"""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

import ray
from fastapi import HTTPException, Request
from python_multipart import MultipartParser
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

# What one task reads of a file when a replica on another node copies it over.
CHUNK = 8 * 2**20
# Plain form fields (the speaker's name) are small; anything larger is not one of ours.
MAX_FIELD_BYTES = 4096
# The ingress writes an upload to disk in pieces of at least this size.
WRITE_BYTES = 2**20


@dataclass(frozen=True, kw_only=True)
class Upload:
    """A client's file on the disk of one node of the Ray cluster."""

    name: str  # as the client named it: what every message says, never the path
    path: str
    node_id: str  # the Ray node whose disk holds `path`
    size: int

    def open(self) -> BinaryIO:
        """The file for reading, named as the client named it (decoders' errors say that name)."""
        f = open(self.path, "rb")  # noqa: SIM115 - the caller closes it
        f.raw.name = self.name
        return f


def current_node() -> str:
    return ray.get_runtime_context().get_node_id()


class _Form:
    """python-multipart callbacks: the parts named in `files` each into a file, other parts into
    `fields`. `max_bytes` bounds the files together."""

    def __init__(self, files: tuple[str, ...], max_bytes: int, folder: str) -> None:
        self.files = files
        self.max_bytes = max_bytes
        self.folder = folder
        self.fields: dict[str, str] = {}
        self.names: dict[str, str] = {}  # part → its file's name, as the client named it
        self.paths: dict[str, str] = {}
        self.sizes: dict[str, int] = {}
        self.size = 0  # of all files together
        self.pending: list[tuple[BinaryIO, bytes]] = []  # file data parsed but not yet written
        self.pending_bytes = 0
        self._opened: list[BinaryIO] = []
        self._file: BinaryIO | None = None  # the current part's, when it is one of `files`
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        self._part_name = ""
        self._part_data = bytearray()

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
        }

    def on_part_begin(self) -> None:
        self._disposition = b""
        self._part_data = bytearray()
        self._file = None

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name = self._header_value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        part = self._part_name = options.get(b"name", b"").decode("utf-8", "replace")
        if part not in self.files:
            return
        if part in self.paths:
            raise HTTPException(422, f"the form has more than one `{part}` file")
        raw_name = options.get(b"filename", b"upload")
        name = self.names[part] = raw_name.decode("utf-8", "replace")
        if b"\x00" in raw_name:
            raise HTTPException(422, f"{name!r}: a file name cannot hold a NUL byte")
        # The client's extension, as a hint to FFmpeg; the rest of the name stays out of paths.
        suffix = re.sub(r"[^A-Za-z0-9]", "", Path(name).suffix)[:16]
        fd, self.paths[part] = tempfile.mkstemp(
            prefix="l2s-upload-", suffix=f".{suffix}", dir=self.folder
        )
        self.sizes[part] = 0
        self._file = os.fdopen(fd, "wb")
        self._opened.append(self._file)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._file is None:
            self._part_data += data[start:end]
            if len(self._part_data) > MAX_FIELD_BYTES:
                raise HTTPException(
                    422, f"form field `{self._part_name}` is over {MAX_FIELD_BYTES} bytes"
                )
            return
        self.size += end - start
        self.sizes[self._part_name] += end - start
        if self.size > self.max_bytes:
            raise HTTPException(
                413,
                f"{self.names[self._part_name]}: upload runs past the limit; the limit is "
                f"{self.max_bytes / 2**20:g} MiB",
            )
        self.pending.append((self._file, data[start:end]))
        self.pending_bytes += end - start

    def on_part_end(self) -> None:
        if self._file is None:
            self.fields[self._part_name] = self._part_data.decode("utf-8", "replace")

    def write_pending(self) -> None:
        for file, chunk in self.pending:
            file.write(chunk)
        self.pending.clear()
        self.pending_bytes = 0

    def close(self) -> None:
        for file in self._opened:
            file.close()


async def _parse(request: Request, form: _Form, boundary: bytes) -> None:
    parser = MultipartParser(boundary, form.callbacks())
    try:
        async for chunk in request.stream():
            parser.write(chunk)
            # A thread hop per network chunk (64 KiB) is slower than the write itself, and
            # what the ingress does not take in piles up in Serve's queues.
            if form.pending_bytes >= WRITE_BYTES:
                await asyncio.to_thread(form.write_pending)
        parser.finalize()
        await asyncio.to_thread(form.write_pending)
    except FormParserError as e:
        raise HTTPException(400, f"malformed multipart/form-data body ({e})") from None
    form.close()


@asynccontextmanager
async def received(
    request: Request, max_bytes: int, field: str = "video", folder: str | None = None
) -> AsyncIterator[tuple[Upload, dict[str, str]]]:
    """The multipart/form-data body of `request`, read as it arrives: the part named `field`
    written to a temporary file in `folder` (refused with a 413 as soon as it passes `max_bytes`),
    the other fields as strings. The file is removed on leaving, and on any failure before."""
    async with received_files(request, max_bytes, (field,), folder) as (uploads, fields):
        yield uploads[field], fields


@asynccontextmanager
async def received_files(
    request: Request, max_bytes: int, files: tuple[str, ...], folder: str | None = None
) -> AsyncIterator[tuple[dict[str, Upload], dict[str, str]]]:
    """As `received`, for a form of several files (`/v1/lipsync`: a video and its speech), each
    required and non-empty; `max_bytes` bounds them together. Every file is removed on leaving."""
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or b"boundary" not in options:
        wanted = " and ".join(f"`{field}`" for field in files)
        raise HTTPException(
            400,
            f"expected a multipart/form-data body with a {wanted} file"
            f"{'s' if len(files) > 1 else ''}, got {content_type!r}",
        )
    form = _Form(files, max_bytes, folder or tempfile.gettempdir())
    try:
        await _parse(request, form, options[b"boundary"])
        for field in files:
            if field not in form.paths:
                raise HTTPException(422, f"the form has no `{field}` file")
            if form.sizes[field] == 0:
                raise HTTPException(422, f"{form.names[field]}: upload is empty (0 bytes)")
        node = current_node()
        yield (
            {
                field: Upload(
                    name=form.names[field],
                    path=form.paths[field],
                    node_id=node,
                    size=form.sizes[field],
                )
                for field in files
            },
            form.fields,
        )
    finally:
        form.close()
        for path in form.paths.values():
            Path(path).unlink(missing_ok=True)


@ray.remote(num_cpus=0)
def _read(path: str, offset: int, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


def fetch(upload: Upload, path: str) -> None:
    """Copy `upload` from its node to `path` on this one, a chunk at a time: the next chunk is
    read while one is written, so at most two are in memory here."""
    pinned = _read.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(upload.node_id, soft=False)
    )
    with open(path, "wb") as out:
        ahead = pinned.remote(upload.path, 0, CHUNK)
        for offset in range(CHUNK, upload.size + CHUNK, CHUNK):
            chunk = ray.get(ahead)
            if offset < upload.size:
                ahead = pinned.remote(upload.path, offset, CHUNK)
            out.write(chunk)
    if os.path.getsize(path) != upload.size:
        raise OSError(f"{upload.name}: copied {os.path.getsize(path)} of {upload.size} bytes")


@contextmanager
def local_copy(upload: Upload) -> Iterator[Upload]:
    """`upload` as a file on this node: itself if this is its node, else a temporary copy."""
    if upload.node_id == current_node():
        yield upload
        return
    fd, path = tempfile.mkstemp(prefix="l2s-upload-", suffix=Path(upload.path).suffix)
    os.close(fd)
    try:
        fetch(upload, path)
        yield replace(upload, path=path, node_id=current_node())
    finally:
        Path(path).unlink(missing_ok=True)
