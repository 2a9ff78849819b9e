"""Corpus readers: one module per corpus layout, each yielding manifest rows and saying what it
skipped and why. `scan` runs one by name; `write_manifest` stores the result.

    rows, skips = scan("lrs3", "/data/lrs3")
    write_manifest(rows, "s3://bucket/manifests/lrs3.parquet")
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from l2s import storage
from l2s.corpora import folder, grid, lrs2, lrs3, lrw, synthetic
from l2s.corpora.common import Skip
from l2s.corpora.manifest import read_manifest, write_manifest, write_skips
from l2s.schema import ManifestRow


@dataclass(frozen=True, kw_only=True)
class Reader:
    name: str
    layout: str
    read: Callable[[str], Iterator[ManifestRow | Skip]]


READERS: dict[str, Reader] = {
    m.NAME: Reader(name=m.NAME, layout=m.LAYOUT, read=m.read)
    for m in (lrs3, lrs2, lrw, grid, folder, synthetic)
}


class EmptyCorpusError(ValueError):
    """A scan found no usable utterance; the message names the root and why files were skipped."""


def skip_counts(skips: Iterable[Skip]) -> dict[str, int]:
    """How many files were skipped for each reason, most frequent first."""
    return dict(Counter(s.reason for s in skips).most_common())


def scan(corpus: str, root: str) -> tuple[list[ManifestRow], list[Skip]]:
    """Read the corpus at `root` (local or s3://) with the named reader: rows sorted by id, skips.

    Raises FileNotFoundError when `root` does not exist and EmptyCorpusError when nothing in it
    is usable. A row whose id another row already has is skipped, so ids are unique.
    """
    if corpus not in READERS:
        raise ValueError(f"unknown corpus {corpus!r}; known: {', '.join(sorted(READERS))}")
    reader = READERS[corpus]
    if not storage.exists(root):
        raise FileNotFoundError(f"{corpus} corpus root {root} does not exist")
    rows: list[ManifestRow] = []
    skips: list[Skip] = []
    video_of_id: dict[str, str] = {}
    for item in reader.read(root):
        if isinstance(item, Skip):
            skips.append(item)
        elif item.id in video_of_id:
            skips.append(
                Skip(
                    path=item.video,
                    reason="duplicate id",
                    detail=f"{item.id} is already {video_of_id[item.id]}",
                )
            )
        else:
            video_of_id[item.id] = item.video
            rows.append(item)
    if not rows:
        message = f"no usable {corpus} utterances under {root} (expected {reader.layout})"
        if skips:
            counts = ", ".join(f"{n} {reason}" for reason, n in skip_counts(skips).items())
            message += f"; skipped {len(skips)} files ({counts}), e.g. {skips[0]}"
        raise EmptyCorpusError(message)
    rows.sort(key=lambda r: r.id)
    return rows, skips


__all__ = [
    "READERS",
    "EmptyCorpusError",
    "Reader",
    "Skip",
    "read_manifest",
    "scan",
    "skip_counts",
    "write_manifest",
    "write_skips",
]
