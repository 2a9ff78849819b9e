"""Manifests on disk: one Parquet file of `ManifestRow`s (schema `MANIFEST_SCHEMA`), written
atomically so a reader never sees half a manifest; and the scan's skips as an error table."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import pyarrow.parquet as pq

from l2s import storage
from l2s.corpora.common import Skip
from l2s.schema import (
    ERROR_SCHEMA,
    MANIFEST_SCHEMA,
    SCHEMA_VERSION,
    ErrorRow,
    ManifestRow,
    from_table,
    to_table,
)


def write_manifest(rows: Sequence[ManifestRow], uri: str) -> None:
    """Write rows as Parquet at `uri` (local or s3://); ids must be unique, rows non-empty."""
    if not rows:
        raise ValueError(f"refusing to write an empty manifest to {uri}")
    repeated = [i for i, n in Counter(r.id for r in rows).items() if n > 1]
    if repeated:
        raise ValueError(f"manifest ids must be unique; repeated: {sorted(repeated)[:5]}")
    table = to_table(list(rows), MANIFEST_SCHEMA)
    with storage.atomic_write(uri) as f:
        pq.write_table(table, f)


def check_manifest(uri: str, metadata: dict[bytes, bytes] | None = None) -> None:
    """Refuse a file that is not an l2s manifest of this schema version (read from its footer,
    or from `metadata` when the caller has the schema already)."""
    if metadata is None:
        with storage.open_uri(uri) as f:
            metadata = pq.read_schema(f).metadata or {}
    record = metadata.get(b"l2s.record", b"").decode()
    version = metadata.get(b"l2s.schema_version", b"").decode()
    if record != "manifest":
        raise ValueError(f"{uri} is not an l2s manifest (record type {record or 'missing'!r})")
    if version != str(SCHEMA_VERSION):
        raise ValueError(
            f"{uri} has manifest schema version {version!r}; this l2s reads version {SCHEMA_VERSION}"
        )


def read_manifest(uri: str) -> list[ManifestRow]:
    """The rows of a manifest written by `write_manifest` (checked to be one, of this version)."""
    with storage.open_uri(uri) as f:
        table = pq.read_table(f)
    check_manifest(uri, table.schema.metadata or {})
    return from_table(table, ManifestRow)


def write_skips(skips: Sequence[Skip], uri: str) -> None:
    """Write a scan's skips as an l2s error table (stage "scan"); an empty table means none."""
    rows = [
        ErrorRow(
            id=s.path,
            video=s.path,
            stage="scan",
            reason=f"{s.reason}: {s.detail}" if s.detail else s.reason,
        )
        for s in skips
    ]
    with storage.atomic_write(uri) as f:
        pq.write_table(to_table(rows, ERROR_SCHEMA), f)
