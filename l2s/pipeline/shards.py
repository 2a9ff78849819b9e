"""Feature datasets on disk: Parquet shards written whole, the ids they hold, the metadata file.

A dataset directory holds `features/part-*.parquet`, `errors/part-*.parquet` and `metadata.json`.
Each shard is written to a temporary name and renamed (or uploaded in one piece to s3://), so a
killed job leaves complete shards only; a rerun skips every id found in either table.

A batch still in flight when its job was killed may land after the rerun has batched the same clips
differently, so one clip can end up in two shards; `drop_duplicates` (run at the end of every job)
keeps each id in exactly one place.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from l2s import storage
from l2s.schema import ERROR_SCHEMA, FEATURE_SCHEMA, ErrorRow, FeatureRow, to_table

FEATURES, ERRORS, METADATA = "features", "errors", "metadata.json"


def shard_name(ids: list[str]) -> str:
    """A shard's name follows from the ids in it, so a retried batch overwrites, never duplicates."""
    return "part-" + hashlib.sha1("\n".join(sorted(ids)).encode()).hexdigest()[:16] + ".parquet"


def write_table(table: pa.Table, uri: str) -> None:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    storage.write_bytes(uri, buffer.getvalue())


def write_shard(root: str, features: list[FeatureRow], errors: list[ErrorRow]) -> None:
    ids = [r.id for r in features] + [r.id for r in errors]
    name = shard_name(ids)
    # Errors first: the features shard is what marks its ids as done.
    if errors:
        write_table(to_table(errors, ERROR_SCHEMA), storage.join(root, ERRORS, name))
    if features:
        write_table(to_table(features, FEATURE_SCHEMA), storage.join(root, FEATURES, name))


def list_shards(root: str, table: str) -> list[str]:
    folder = storage.join(root, table)
    if not storage.exists(folder):
        return []
    return [
        u
        for u in storage.list_files(folder, [".parquet"])
        if u.rsplit("/", 1)[-1].startswith("part-")
    ]


def iter_tables(
    root: str, table: str, columns: list[str] | None = None, split: str | None = None
) -> Iterator[tuple[str, pa.Table]]:
    """(shard URI, its rows) for each shard of one table holding rows (only `columns`; only rows
    of `split`), one shard in memory at a time."""
    for uri in list_shards(root, table):
        with storage.open_uri(uri) as f:
            part = pq.read_table(
                f, columns=columns, filters=[("split", "==", split)] if split else None
            )
        if len(part):
            yield uri, part


def read_table(
    root: str, table: str, columns: list[str] | None = None, split: str | None = None
) -> pa.Table | None:
    """One table's shards (only `columns`; only rows of `split`) as one Arrow table; None if empty."""
    parts = [part for _, part in iter_tables(root, table, columns, split)]
    return pa.concat_tables(parts) if parts else None


def read_column(root: str, table: str, column: str) -> list:
    values: list = []
    for uri in list_shards(root, table):
        with storage.open_uri(uri) as f:
            values.extend(pq.read_table(f, columns=[column]).column(column).to_pylist())
    return values


def drop_duplicates(root: str) -> int:
    """Keep every id in one shard only (a feature row beats an error row); returns rows dropped.

    A shard whose ids are all held elsewhere is deleted; one with some is rewritten without them,
    atomically, so each step leaves every id readable at least once.
    """
    seen: set[str] = set()
    dropped = 0
    for table in (FEATURES, ERRORS):
        for uri in list_shards(root, table):
            # Only the id column, unless the shard must be rewritten: a job ends with this pass
            # over every shard, and feature shards are mostly ROI bytes.
            with storage.open_uri(uri) as f:
                ids = pq.read_table(f, columns=["id"]).column("id").to_pylist()
            keep = [i not in seen for i in ids]
            seen.update(ids)
            if all(keep):
                continue
            dropped += keep.count(False)
            if any(keep):
                with storage.open_uri(uri) as f:
                    shard = pq.read_table(f)
                write_table(shard.filter(pa.array(keep)), uri)
            else:
                storage.remove(uri)
    return dropped


def done_ids(root: str) -> set[str]:
    return set(read_column(root, FEATURES, "id")) | set(read_column(root, ERRORS, "id"))


def read_errors(root: str) -> list[ErrorRow]:
    rows = []
    for uri in list_shards(root, ERRORS):
        with storage.open_uri(uri) as f:
            rows.extend(ErrorRow(**r) for r in pq.read_table(f).to_pylist())
    return rows


def read_features(root: str, split: str | None = None) -> list[FeatureRow]:
    """All feature rows (optionally of one split) with plain pyarrow; no Ray needed."""
    rows = []
    for uri in list_shards(root, FEATURES):
        with storage.open_uri(uri) as f:
            table = pq.read_table(f)
        if split is not None:
            table = table.filter(pa.compute.equal(table["split"], split))
        rows.extend(FeatureRow(**r) for r in table.to_pylist())
    return rows


def write_metadata(root: str, metadata: dict) -> None:
    storage.write_bytes(storage.join(root, METADATA), json.dumps(metadata, indent=2).encode())


def read_metadata(root: str) -> dict:
    return json.loads(storage.read_bytes(storage.join(root, METADATA)))
