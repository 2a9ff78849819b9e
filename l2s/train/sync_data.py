"""Sync-expert training data: windows of mouth ROIs with their audio and its shifted copies.

Driver side, `index_sync_datasets` checks one or more feature datasets (the same mel contract) and
describes their splits as `Source`s. Worker side, pure functions draw from each clip a few spans:
N consecutive windows of WINDOW_FRAMES frames and the audio windows from max_shift frames before
the first to max_shift frames after the last. Each video window's own audio is among them, and so
is the same audio shifted by up to max_shift frames: the shifted negatives; the batch's other
clips give the mismatched ones (`l2s.models.syncnet.sync_loss`). A span's audio windows serve all
its video windows, so each costs one embedding, not one per video window and shift.

Letters in shape names: C clips, N video windows of a span, P audio windows (N + 2·max_shift),
K frames in a window, H×W pixels, M mel bands, W mel frames in a window, T video frames, X frames.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import cv2
import numpy as np
import torch

from l2s.config import MELS_PER_FRAME
from l2s.models.syncnet import WINDOW_FRAMES, WINDOW_MELS, normalize_clip_mel
from l2s.train.data import (
    COLUMNS,
    DatasetError,
    Utterance,
    arrow_dataset,
    check_metadata,
    feature_files,
)
from l2s.train.session import Source

# Augmentation: one random shift of the whole window by up to this many pixels each way, a
# horizontal flip half the time, and a gamma in this range (lighting is standardised away in the
# tower, but not the shape of the intensity curve).
MAX_TRANSLATE = 4
GAMMA_RANGE = (0.7, 1.4)
# Examples are shuffled within a window of this many batches before they are batched.
SHUFFLE_BATCHES = 16

T = TypeVar("T")
B = TypeVar("B")


@dataclass(frozen=True)
class SyncIndex:
    """What the driver learns about the feature datasets before sync training starts."""

    uris: tuple[str, ...]
    files: tuple[str, ...]
    metadata: list[dict]
    counts: dict[str, int]  # clips per split, over all datasets
    train_bytes: int  # the train split's ROIs and mels, decoded


def index_sync_datasets(uris: Sequence[str]) -> SyncIndex:
    """Check each feature dataset (schema, mel parameters, a train split somewhere)."""
    files: list[str] = []
    metadata, counts = [], {}
    train_bytes = 0
    for uri in uris:
        metadata.append(check_metadata(uri))
        found = feature_files(uri)
        rows = arrow_dataset(found).to_table(columns=["split", "n_frames"])
        for split, n in zip(rows["split"].to_pylist(), rows["n_frames"].to_pylist(), strict=True):
            counts[split] = counts.get(split, 0) + 1
            if split == "train":
                train_bytes += n * (96 * 96 + MELS_PER_FRAME * 80 * 4)
        files.extend(found)
    if not counts.get("train"):
        raise DatasetError(f"{', '.join(uris)}: no rows in the train split (splits: {counts})")
    return SyncIndex(tuple(uris), tuple(files), metadata, counts, train_bytes)


def sync_source(index: SyncIndex, split: str, *, shuffle_files: bool) -> Source:
    return Source(
        files=index.files, split=split, columns=tuple(COLUMNS), shuffle_files=shuffle_files
    )


@dataclass(frozen=True)
class SyncBatch:
    video_CNKHW: torch.Tensor  # float32 pixel values (0…255), 96×96; N consecutive windows
    mel_CPMW: torch.Tensor  # float32 clip-normalised log-mel windows, P = N + 2·max_shift

    def __len__(self) -> int:
        return self.video_CNKHW.shape[0] * self.video_CNKHW.shape[1]

    def to(self, device: torch.device) -> SyncBatch:
        return SyncBatch(
            self.video_CNKHW.to(device, non_blocking=True),
            self.mel_CPMW.to(device, non_blocking=True),
        )


def min_frames(max_shift: int, windows: int = 1) -> int:
    """The shortest clip that holds `windows` consecutive windows with every shift of their audio."""
    return WINDOW_FRAMES + windows - 1 + 2 * max_shift


def span(
    roi_THW: np.ndarray, mel_MF: np.ndarray, start: int, windows: int, max_shift: int
) -> tuple[np.ndarray, np.ndarray]:
    """`windows` consecutive video windows from frame `start` and the audio windows around them:
    roi_NKHW and mel_PMW, where video window n's own audio is audio window n + max_shift."""
    roi_NKHW = np.stack([roi_THW[start + n : start + n + WINDOW_FRAMES] for n in range(windows)])
    first = (start - max_shift) * MELS_PER_FRAME
    mel_PMW = np.stack(
        [
            mel_MF[:, first + p * MELS_PER_FRAME : first + p * MELS_PER_FRAME + WINDOW_MELS]
            for p in range(windows + 2 * max_shift)
        ]
    )
    return roi_NKHW, mel_PMW


def augment(roi_NKHW: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One random translation (edge pixels repeated), flip and gamma for a whole span."""
    dy, dx = rng.integers(-MAX_TRANSLATE, MAX_TRANSLATE + 1, size=2)
    size = roi_NKHW.shape[-1]
    matrix = np.array([[1, 0, dx], [0, 1, dy]], dtype=np.float64)
    frames_XHW = roi_NKHW.reshape(-1, size, size)
    moved_XHW = np.stack(
        [
            cv2.warpAffine(f, matrix, (size, size), borderMode=cv2.BORDER_REPLICATE)
            for f in frames_XHW
        ]
    )
    if rng.random() < 0.5:
        moved_XHW = moved_XHW[:, :, ::-1]
    gamma = float(np.exp(rng.uniform(*np.log(GAMMA_RANGE))))
    return (255.0 * (moved_XHW.astype(np.float32) / 255.0) ** gamma).reshape(roi_NKHW.shape)


def shuffled_batches(
    examples: Iterable[T],
    batch_size: int,
    rng: np.random.Generator,
    collate: Callable[[list[T]], B],
) -> Iterator[B]:
    """Examples shuffled within a window of SHUFFLE_BATCHES batches, then collated in groups of
    `batch_size`; the last partial group is dropped (a batch is the contrastive loss's negatives)."""
    buffer: list[T] = []
    for example in examples:
        buffer.append(example)
        if len(buffer) == 2 * SHUFFLE_BATCHES * batch_size:
            order = rng.permutation(len(buffer))
            for b in range(0, SHUFFLE_BATCHES * batch_size, batch_size):
                yield collate([buffer[i] for i in order[b : b + batch_size]])
            buffer = [buffer[i] for i in order[SHUFFLE_BATCHES * batch_size :]]
    order = rng.permutation(len(buffer))
    for b in range(0, len(buffer) // batch_size * batch_size, batch_size):
        yield collate([buffer[i] for i in order[b : b + batch_size]])


def collate_spans(spans: list[tuple[np.ndarray, np.ndarray]]) -> SyncBatch:
    return SyncBatch(
        torch.from_numpy(np.stack([np.asarray(v, np.float32) for v, _ in spans])),
        torch.from_numpy(np.stack([m for _, m in spans])),
    )


def sync_batches(
    clips: Iterable[Utterance],
    clips_per_batch: int,
    windows: int,
    max_shift: int,
    spans_per_clip: int,
    rng: np.random.Generator,
    augmented: bool = True,
) -> Iterator[SyncBatch]:
    """One epoch: `spans_per_clip` random spans of `windows` windows from each clip long enough,
    shuffled and batched `clips_per_batch` at a time."""

    def spans() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for utt in clips:
            if utt.n_frames < min_frames(max_shift, windows):
                continue
            mel_MF = normalize_clip_mel(utt.mel_MF)
            last = utt.n_frames - min_frames(max_shift, windows) + max_shift
            for start in rng.integers(max_shift, last + 1, spans_per_clip):
                roi_NKHW, mel_PMW = span(utt.roi_THW, mel_MF, int(start), windows, max_shift)
                yield augment(roi_NKHW, rng) if augmented else roi_NKHW, mel_PMW

    return shuffled_batches(spans(), clips_per_batch, rng, collate_spans)
