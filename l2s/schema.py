"""The records that flow between stages, and their Arrow schemas (one place, versioned).

Letters in shape names: T video frames (25 fps), H×W pixels, K landmarks, M mel bands,
F mel frames (4 per video frame), D speaker-embedding size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import pyarrow as pa

SCHEMA_VERSION = 1
SPLITS = ("train", "val", "test", "test_unseen_speakers", "pretrain")


@dataclass(frozen=True, kw_only=True)
class ManifestRow:
    """One utterance of a corpus: where its video is and what was said. The utterance is the
    segment [start, start + duration) of the video, in seconds from its first frame (duration
    None: to the end), as long recordings hold several (LRS3 pretrain)."""

    id: str
    speaker: str
    split: str
    video: str
    corpus: str
    transcript: str | None = None
    start: float = 0.0
    duration: float | None = None

    def __post_init__(self) -> None:
        if not self.id:
            raise ValueError("manifest row needs an id")
        if self.split not in SPLITS:
            raise ValueError(f"{self.id}: unknown split {self.split!r} (expected one of {SPLITS})")
        if not (isinstance(self.start, int | float) and 0 <= self.start < math.inf):
            raise ValueError(f"{self.id}: segment start {self.start} s is not a time in the video")
        if self.duration is not None and not 0 < self.duration < math.inf:
            raise ValueError(f"{self.id}: segment duration {self.duration} s is not positive")


MANIFEST_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("speaker", pa.string()),
        ("split", pa.string()),
        ("video", pa.string()),
        ("corpus", pa.string()),
        ("transcript", pa.string()),
        ("start", pa.float64()),
        ("duration", pa.float64()),
    ],
    metadata={"l2s.schema_version": str(SCHEMA_VERSION), "l2s.record": "manifest"},
)


@dataclass(frozen=True, kw_only=True)
class FeatureRow:
    """One utterance's features: mouth ROIs at 25 fps, its log-mel, its speaker embedding.

    Arrays travel as raw bytes (uint8 ROIs, float32 mels / landmarks) with their shapes in
    `n_frames`, so plain pyarrow reads them back with `np.frombuffer` — no pickles, no Ray.
    """

    id: str
    speaker: str
    split: str
    corpus: str
    transcript: str | None
    n_frames: int
    roi: bytes  # uint8, T×96×96
    mel: bytes  # float32, M×F with F = 4·T
    landmarks: bytes  # float32, T×68×2, in source-frame pixels
    speaker_embedding: list[float]  # float32, D, L2-normalised
    face_ratio: float  # fraction of frames where a face was detected (others interpolated)
    n_faces: int  # most large faces seen together; the largest one is kept

    def roi_THW(self, size: int = 96) -> np.ndarray:
        return np.frombuffer(self.roi, dtype=np.uint8).reshape(self.n_frames, size, size)

    def mel_MF(self, n_mels: int = 80) -> np.ndarray:
        return np.frombuffer(self.mel, dtype=np.float32).reshape(n_mels, -1)

    def landmarks_TK2(self) -> np.ndarray:
        return np.frombuffer(self.landmarks, dtype=np.float32).reshape(self.n_frames, 68, 2)


FEATURE_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("speaker", pa.string()),
        ("split", pa.string()),
        ("corpus", pa.string()),
        ("transcript", pa.string()),
        ("n_frames", pa.int32()),
        ("roi", pa.large_binary()),
        ("mel", pa.large_binary()),
        ("landmarks", pa.large_binary()),
        ("speaker_embedding", pa.list_(pa.float32())),
        ("face_ratio", pa.float32()),
        ("n_faces", pa.int16()),
    ],
    metadata={"l2s.schema_version": str(SCHEMA_VERSION), "l2s.record": "features"},
)


@dataclass(frozen=True, kw_only=True)
class ErrorRow:
    """A clip that a stage could not process, and why: failures are recorded, never dropped."""

    id: str
    video: str
    stage: str
    reason: str


ERROR_SCHEMA = pa.schema(
    [("id", pa.string()), ("video", pa.string()), ("stage", pa.string()), ("reason", pa.string())],
    metadata={"l2s.schema_version": str(SCHEMA_VERSION), "l2s.record": "error"},
)


def to_table(rows: list, schema: pa.Schema) -> pa.Table:
    """Dataclass records → an Arrow table with exactly `schema`'s columns."""
    names = schema.names
    columns = {n: [getattr(r, n) for r in rows] for n in names}
    return pa.table(columns, schema=schema)


def from_table(table: pa.Table, record: type) -> list:
    names = [f.name for f in fields(record)]
    return [record(**{n: row[n] for n in names if n in row}) for row in table.to_pylist()]
