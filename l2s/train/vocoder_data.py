"""Vocoder training data: clips' ground-truth log-mels with the recordings they were computed from.

A feature dataset stores each clip's log-mel but no waveform, so the audio comes from the source
videos (and segments) named in the manifest the dataset was made from
(`l2s.pipeline.generate.source_rows`), decoded with the same `load_audio` and cut to the same
`n_frames · 640` samples that preprocessing turned into that mel. No second copy of the audio is
kept on disk: the decode is one more map step after the Parquet read (`session.Source.transform`),
and on Ray Data a dataset whose decoded audio fits in `MATERIALIZE_BYTES` is decoded once and kept
in Ray's object store for every epoch; a larger one is decoded again each epoch.

Workers cut every clip into consecutive segments of `segment_frames` mel frames at a random phase
(an epoch covers the audio once), shuffle them within a window and batch them. The generator's
input is the stored mel slice (exactly what a lip-to-speech model predicts); the mel loss compares
`log_mel` of the generated and the real segment.

Letters in shape names: B batch, M mel bands, F mel frames, S samples (F · 160), N rows.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow.compute as pc
import torch

from l2s import storage
from l2s.audio import load_audio
from l2s.config import AUDIO, MELS_PER_FRAME
from l2s.pipeline.generate import source_rows
from l2s.schema import ManifestRow
from l2s.train.data import (
    DatasetError,
    arrow_dataset,
    check_metadata,
    feature_files,
    select_val,
)
from l2s.train.session import Source

COLUMNS = ["id", "n_frames", "mel"]
SAMPLES_PER_FRAME = MELS_PER_FRAME * AUDIO.hop_length  # audio samples per video frame
# Decoded train audio up to this size is kept in the object store instead of decoded every epoch.
MATERIALIZE_BYTES = 1 << 30
# Segments are shuffled within a window of this many batches before they are batched.
SHUFFLE_WINDOW_BATCHES = 16


@dataclass(frozen=True)
class VocoderIndex:
    """What the driver learns about a feature dataset before vocoder training starts."""

    uri: str
    files: tuple[str, ...]
    metadata: dict
    sources: dict[str, ManifestRow]  # clip id → its source video and segment
    counts: dict[str, int]  # clips per split
    train_bytes: int  # decoded train audio + mels, bytes
    val_ids: tuple[str, ...]  # the clips validation vocodes and scores


def index_vocoder_dataset(uri: str, n_val: int) -> VocoderIndex:
    """Check a feature dataset and find the audio of its clips; choose `n_val` val clips."""
    metadata = check_metadata(uri)
    files = feature_files(uri)
    sources = source_rows(uri)
    if not sources:
        raise DatasetError(
            f"{uri}: its source manifest ({metadata.get('source_manifest')}) is gone; the vocoder "
            "trains on the recordings the mels were computed from"
        )
    rows = arrow_dataset(files).to_table(columns=["id", "speaker", "split", "n_frames"])
    counts: dict[str, int] = {}
    for split in rows["split"].to_pylist():
        counts[split] = counts.get(split, 0) + 1
    train = rows.filter(pc.equal(rows["split"], "train"))
    if not len(train):
        raise DatasetError(f"{uri}: no rows in the train split (splits: {counts})")
    missing = sorted(set(rows["id"].to_pylist()) - set(sources))
    if missing:
        raise DatasetError(f"{uri}: {len(missing)} clips have no source video, e.g. {missing[:3]}")
    frames = int(pc.sum(train["n_frames"]).as_py())
    val = rows.filter(pc.equal(rows["split"], "val"))
    ids, speakers = val["id"].to_pylist(), val["speaker"].to_pylist()
    return VocoderIndex(
        uri=storage.normalize(uri),
        files=tuple(files),
        metadata=metadata,
        sources=sources,
        counts=counts,
        train_bytes=frames * SAMPLES_PER_FRAME * 4 * 2,
        val_ids=select_val(ids, speakers, len(ids), n_val)[1],
    )


def clip_audio(source: ManifestRow, n_frames: int) -> np.ndarray:
    """The recording a clip's mel was computed from: its segment of its video's audio, cut to
    its frames."""
    n_samples = n_frames * SAMPLES_PER_FRAME
    wav_S = load_audio(source.video, AUDIO.sample_rate, source.start, n_samples / AUDIO.sample_rate)
    if len(wav_S) < n_samples:
        raise DatasetError(
            f"{source.id}: {source.video} from {source.start:.2f} s decodes to {len(wav_S)} "
            f"samples, its mel covers {n_samples}"
        )
    return wav_S


def with_audio(
    batch: dict[str, np.ndarray], sources: dict[str, ManifestRow]
) -> dict[str, np.ndarray]:
    """Per-batch step: add each clip's recording (float32 bytes) as the column `wav`."""
    wavs = [
        clip_audio(sources[str(i)], int(n)).tobytes()
        for i, n in zip(batch["id"], batch["n_frames"], strict=True)
    ]
    return {**batch, "wav": np.array(wavs, dtype=object)}


def train_audio(index: VocoderIndex) -> Source:
    """The train clips with their mels and recordings (decoded by a per-batch step)."""
    return Source(
        files=index.files,
        split="train",
        columns=tuple(COLUMNS),
        shuffle_files=True,
        transform=functools.partial(with_audio, sources=index.sources),
        materialize=index.train_bytes <= MATERIALIZE_BYTES,
    )


def read_val_clips(index: VocoderIndex) -> list[dict]:
    """The val clips validation scores: id, mel_MF and the recording wav_S (a few, read once)."""
    if not index.val_ids:
        return []
    table = arrow_dataset(index.files).to_table(
        columns=COLUMNS, filter=pc.field("id").isin(list(index.val_ids))
    )
    clips = []
    for row in sorted(table.to_pylist(), key=lambda r: r["id"]):
        clips.append(
            {
                "id": row["id"],
                "mel_MF": np.frombuffer(row["mel"], np.float32).reshape(AUDIO.n_mels, -1).copy(),
                "wav_S": clip_audio(index.sources[row["id"]], row["n_frames"]),
            }
        )
    return clips


def segments(
    mel_MF: np.ndarray, wav_S: np.ndarray, frames: int, rng: np.random.Generator
) -> list[tuple[np.ndarray, np.ndarray]]:
    """A clip → consecutive (mel_MF, wav_S) segments of `frames` mel frames, starting at a random
    phase; a clip shorter than one segment is padded (log floor, silence) to one."""
    n_mel = mel_MF.shape[1]
    hop = AUDIO.hop_length
    if n_mel < frames:
        mel_MF = np.pad(
            mel_MF, ((0, 0), (0, frames - n_mel)), constant_values=np.log(AUDIO.log_floor)
        )
        wav_S = np.pad(wav_S, (0, (frames - n_mel) * hop))
        n_mel = frames
    start = int(rng.integers(n_mel % frames + 1))
    return [
        (mel_MF[:, f : f + frames].copy(), wav_S[f * hop : (f + frames) * hop].copy())
        for f in range(start, n_mel - frames + 1, frames)
    ]


@dataclass(frozen=True)
class SegmentBatch:
    mel_BMF: torch.Tensor  # float32 ground-truth log-mel (the generator's input)
    wav_BS: torch.Tensor  # float32 recording, S = F · 160

    def __len__(self) -> int:
        return self.mel_BMF.shape[0]

    def to(self, device: torch.device) -> SegmentBatch:
        return SegmentBatch(
            self.mel_BMF.to(device, non_blocking=True), self.wav_BS.to(device, non_blocking=True)
        )


def segment_batches(
    shard, frames: int, batch_size: int, rng: np.random.Generator
) -> Iterator[SegmentBatch]:
    """One epoch of this worker's shard as batches of random segments. The last, partial batch of
    an epoch is dropped (fewer than `batch_size` segments), so every step sees a full batch."""
    window = batch_size * SHUFFLE_WINDOW_BATCHES
    buffer: list[tuple[np.ndarray, np.ndarray]] = []

    def drain(keep: int) -> Iterator[SegmentBatch]:
        nonlocal buffer
        order = rng.permutation(len(buffer))
        shuffled = [buffer[i] for i in order]
        cut = (len(shuffled) - keep) // batch_size * batch_size
        for b in range(0, cut, batch_size):
            group = shuffled[b : b + batch_size]
            yield SegmentBatch(
                torch.from_numpy(np.stack([m for m, _ in group])),
                torch.from_numpy(np.stack([w for _, w in group])),
            )
        buffer = shuffled[cut:]

    for batch in shard.iter_batches(batch_size=8, batch_format="numpy", prefetch_batches=2):
        for mel, wav in zip(batch["mel"], batch["wav"], strict=True):
            mel_MF = np.frombuffer(mel, np.float32).reshape(AUDIO.n_mels, -1)
            buffer.extend(segments(mel_MF, np.frombuffer(wav, np.float32), frames, rng))
        if len(buffer) >= 2 * window:
            yield from drain(keep=window)
    yield from drain(keep=0)
