"""The feature dataset as training batches.

Driver side, `index_dataset` reads only small columns with plain pyarrow: split counts, the
speaker table and bank (train split), and a fixed validation subset. `source` describes one split
for the workers (a Ray Data dataset that Ray Train shards, or a local reader: `session.Source`).

Worker side, pure functions turn rows into batches: cut long clips to a window, length-bucket
(sort a shuffled window of clips by length, so a batch pads to similar lengths), crop 88×88 (random
in training, centred otherwise), flip, time-mask, pad and collate.

Letters in shape names: B batch, T video frames, H×W pixels, M mel bands, F mel frames (4·T),
D speaker-embedding size, L label positions, N rows.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import torch

from l2s import storage
from l2s.config import AUDIO, MELS_PER_FRAME, VIDEO
from l2s.infer.speakers import SpeakerTable
from l2s.models.frontend import crop, normalize_video
from l2s.models.text import encode_batch, normalize_text
from l2s.pipeline import shards
from l2s.schema import SCHEMA_VERSION
from l2s.train.session import Source
from l2s.train.speakers import SpeakerBank

# Columns the workers read. Not the clip's own speaker embedding: a clip is conditioned on other
# utterances of its speaker (speakers.py). Landmarks, corpus and face_ratio stay on disk too.
COLUMNS = ["id", "speaker", "transcript", "n_frames", "roi", "mel"]
# A shuffled window of this many batches is sorted by length before it is cut into batches: wide
# enough that batches pad little, narrow enough that consecutive batches still differ.
BUCKET_WINDOW_BATCHES = 16
# Time masking as auto-AVSR: per second of video one span of up to 0.4 s.
TIME_MASK_STRIDE = VIDEO.fps
TIME_MASK_MAX = 10
SPEAKER_BANK_SIZE = 8
# Train clips read for the per-band mel mean and deviation (a fixed sample: enough for 80 numbers).
MEL_STATS_CLIPS = 256


class DatasetError(ValueError):
    """The feature dataset cannot be trained on; the message says why."""


@dataclass(frozen=True)
class DatasetIndex:
    """What the driver learns about a feature dataset before training starts."""

    uri: str
    files: tuple[str, ...]
    metadata: dict
    counts: dict[str, int]
    speakers: SpeakerTable
    bank: SpeakerBank
    val_ids: tuple[str, ...]  # the fixed validation subset, sorted
    audio_ids: tuple[str, ...]  # of those, the clips vocoded for STOI / ESTOI
    mel_mean_M: (
        np.ndarray
    )  # per-band statistics of train-split log-mels (`Lip2Speech.set_mel_stats`)
    mel_std_M: np.ndarray
    train_bytes: int  # the train split's ROIs and mels, decoded


def feature_files(uri: str) -> list[str]:
    """The feature shards of a dataset directory (`features/part-*.parquet`, as preprocess writes)."""
    folder = storage.join(storage.normalize(uri), shards.FEATURES)
    if not storage.exists(folder):
        raise DatasetError(f"{uri}: no {shards.FEATURES}/ folder (is this a feature dataset?)")
    files = [
        u
        for u in storage.list_files(folder, [".parquet"])
        if u.rsplit("/", 1)[-1].startswith("part-")
    ]
    if not files:
        raise DatasetError(f"{folder}: no part-*.parquet shards")
    return files


def arrow_dataset(files: Sequence[str]) -> pads.Dataset:
    """Feature shards (URIs on one filesystem) as one pyarrow dataset, for column reads."""
    fs, _ = storage.arrow_filesystem(files[0])
    return pads.dataset([storage.arrow_filesystem(f)[1] for f in files], filesystem=fs)


def check_metadata(uri: str) -> dict:
    """A feature dataset's metadata, after checking its schema version and mel parameters."""
    metadata_uri = storage.join(storage.normalize(uri), shards.METADATA)
    if not storage.exists(metadata_uri):
        raise DatasetError(f"{uri}: no {shards.METADATA}; cannot tell how its features were made")
    metadata = shards.read_metadata(uri)
    if metadata.get("schema_version") != SCHEMA_VERSION:
        raise DatasetError(
            f"{uri}: schema version {metadata.get('schema_version')}, this l2s reads {SCHEMA_VERSION}"
        )
    # Mels made with other parameters would train a model that no vocoder or score here matches.
    if metadata.get("audio") != AUDIO.to_dict():
        raise DatasetError(f"{uri}: mel parameters {metadata.get('audio')} differ from {AUDIO}")
    return metadata


def select_val(ids_N: Sequence[str], speakers_N: Sequence[str], limit: int, n_audio: int):
    """A fixed subset of `limit` val clips (by a hash of the id, so it does not depend on file
    order), and `n_audio` of them taken round-robin over speakers for the audio scores."""
    order = sorted(range(len(ids_N)), key=lambda n: (zlib.crc32(ids_N[n].encode()), ids_N[n]))
    chosen = order[:limit]
    by_speaker: dict[str, list[str]] = {}
    for n in chosen:
        by_speaker.setdefault(speakers_N[n], []).append(ids_N[n])
    audio: list[str] = []
    queues = [by_speaker[s] for s in sorted(by_speaker)]
    while len(audio) < n_audio and any(queues):
        for queue in queues:
            if queue and len(audio) < n_audio:
                audio.append(queue.pop(0))
    return tuple(sorted(ids_N[n] for n in chosen)), tuple(sorted(audio))


def index_dataset(uri: str, val_utterances: int, n_val_audio: int, seed: int = 0) -> DatasetIndex:
    """Read the small columns of a feature dataset: counts, speaker table/bank, val subset."""
    metadata = check_metadata(uri)
    files = feature_files(uri)
    dataset = arrow_dataset(files)
    rows = dataset.to_table(columns=["id", "speaker", "split", "n_frames"])
    counts = {str(k): int(v) for k, v in zip(*_value_counts(rows["split"]), strict=True)}
    if not counts.get("train"):
        raise DatasetError(f"{uri}: no rows in the train split (splits: {counts})")
    train = dataset.to_table(
        columns=["id", "speaker", "speaker_embedding"], filter=pc.field("split") == "train"
    )
    embeddings_ND = np.stack(train["speaker_embedding"].to_numpy(zero_copy_only=False)).astype(
        np.float32
    )
    train_ids, train_speakers = train["id"].to_pylist(), train["speaker"].to_pylist()
    table = SpeakerTable.from_embeddings(
        train_speakers, embeddings_ND, metadata.get("speaker_encoder")
    )
    bank = SpeakerBank.from_embeddings(
        train_ids, train_speakers, embeddings_ND, per_speaker=SPEAKER_BANK_SIZE, seed=seed
    )
    mel_mean_M, mel_std_M = _mel_stats(dataset, train_ids, seed)
    train_frames = pc.sum(rows.filter(pc.equal(rows["split"], "train"))["n_frames"]).as_py()
    frame_bytes = VIDEO.roi_size**2 + MELS_PER_FRAME * AUDIO.n_mels * 4
    val = rows.filter(pc.equal(rows["split"], "val"))
    val_ids, audio_ids = select_val(
        val["id"].to_pylist(), val["speaker"].to_pylist(), val_utterances, n_val_audio
    )
    return DatasetIndex(
        uri=storage.normalize(uri),
        files=tuple(files),
        metadata=metadata,
        counts=counts,
        speakers=table,
        bank=bank,
        val_ids=val_ids,
        audio_ids=audio_ids,
        mel_mean_M=mel_mean_M,
        mel_std_M=mel_std_M,
        train_bytes=int(train_frames) * frame_bytes,
    )


def _mel_stats(
    dataset: pads.Dataset, train_ids: list[str], seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-band mean and standard deviation over the mel frames of a fixed sample of train clips."""
    rng = np.random.default_rng(seed)
    sample = train_ids
    if len(train_ids) > MEL_STATS_CLIPS:
        sample = rng.choice(train_ids, size=MEL_STATS_CLIPS, replace=False).tolist()
    mels = dataset.to_table(columns=["mel"], filter=pc.field("id").isin(sample))["mel"]
    frames_FM = np.concatenate(
        [np.frombuffer(m, dtype=np.float32).reshape(AUDIO.n_mels, -1).T for m in mels.to_pylist()]
    )
    return frames_FM.mean(axis=0), frames_FM.std(axis=0)


def _value_counts(column: pa.ChunkedArray) -> tuple[list, list]:
    counts = pc.value_counts(column)
    return counts.field("values").to_pylist(), counts.field("counts").to_pylist()


def source(index: DatasetIndex, split: str, *, shuffle_files: bool) -> Source:
    """One split of the dataset, only the columns training needs (a Ray Data dataset or a local
    reader: `l2s.train.session`)."""
    return Source(
        files=index.files, split=split, columns=tuple(COLUMNS), shuffle_files=shuffle_files
    )


@dataclass(frozen=True)
class Utterance:
    """One clip as the trainer uses it; `transcript` is "" when there is none (or it was cut)."""

    id: str
    speaker: str
    roi_THW: np.ndarray  # uint8, 96×96
    mel_MF: np.ndarray  # float32
    transcript: str

    @property
    def n_frames(self) -> int:
        return self.roi_THW.shape[0]


def utterances(batch: dict[str, np.ndarray]) -> Iterator[Utterance]:
    """A numpy batch from `iter_batches` → one `Utterance` per row (arrays view the row's bytes)."""
    roi_size = VIDEO.roi_size
    for n in range(len(batch["id"])):
        n_frames = int(batch["n_frames"][n])
        roi_THW = np.frombuffer(batch["roi"][n], dtype=np.uint8).reshape(
            n_frames, roi_size, roi_size
        )
        mel_MF = np.frombuffer(batch["mel"][n], dtype=np.float32).reshape(AUDIO.n_mels, -1)
        if mel_MF.shape[1] != n_frames * MELS_PER_FRAME:
            raise DatasetError(
                f"{batch['id'][n]}: {mel_MF.shape[1]} mel frames for {n_frames} video frames"
            )
        transcript = batch["transcript"][n]
        yield Utterance(
            id=str(batch["id"][n]),
            speaker=str(batch["speaker"][n]),
            roi_THW=roi_THW,
            mel_MF=mel_MF,
            transcript=normalize_text(transcript) if isinstance(transcript, str) else "",
        )


def cut(utt: Utterance, max_frames: int, rng: np.random.Generator | None) -> Utterance:
    """Clips longer than `max_frames` → a window of that length (random when `rng` is given, else
    the start). A cut clip loses its transcript: the text no longer matches the window."""
    if utt.n_frames <= max_frames:
        return utt
    start = 0 if rng is None else int(rng.integers(utt.n_frames - max_frames + 1))
    stop = start + max_frames
    return Utterance(
        id=utt.id,
        speaker=utt.speaker,
        roi_THW=utt.roi_THW[start:stop],
        mel_MF=utt.mel_MF[:, start * MELS_PER_FRAME : stop * MELS_PER_FRAME],
        transcript="",
    )


def bucket(
    utts: Iterable[Utterance],
    batch_size: int,
    max_frames: int | None,
    rng: np.random.Generator,
    window_batches: int = BUCKET_WINDOW_BATCHES,
) -> Iterator[list[Utterance]]:
    """Length-bucketed batches: fill a window, shuffle it, sort by length, cut it into batches of
    at most `batch_size` clips and (when given) at most `max_frames` padded frames, and yield those
    batches in random order. Every clip is yielded once; the last window may be short."""
    window = batch_size * window_batches
    buffer: list[Utterance] = []
    for utt in utts:
        buffer.append(utt)
        if len(buffer) >= window:
            yield from _cut_window(buffer, batch_size, max_frames, rng)
            buffer = []
    if buffer:
        yield from _cut_window(buffer, batch_size, max_frames, rng)


def _cut_window(
    buffer: list[Utterance], batch_size: int, max_frames: int | None, rng: np.random.Generator
) -> Iterator[list[Utterance]]:
    # Shuffled before the (stable) sort, so clips of equal length do not always batch together.
    order = rng.permutation(len(buffer))
    ordered = sorted((buffer[i] for i in order), key=lambda u: u.n_frames)
    batches: list[list[Utterance]] = [[]]
    for utt in ordered:
        current = batches[-1]
        # Sorted ascending, so this clip is the longest: the batch would pad to its length.
        too_many_frames = max_frames is not None and (len(current) + 1) * utt.n_frames > max_frames
        if current and (len(current) >= batch_size or too_many_frames):
            batches.append([])
        batches[-1].append(utt)
    for i in rng.permutation(len(batches)):
        yield batches[i]


def time_mask_spans(n_frames: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """auto-AVSR's time masking: one span per second of video, each up to TIME_MASK_MAX frames."""
    spans = []
    for _ in range(n_frames // TIME_MASK_STRIDE):
        length = int(rng.integers(TIME_MASK_MAX + 1))
        start = int(rng.integers(max(1, n_frames - length + 1)))
        spans.append((start, min(n_frames, start + length)))
    return spans


@dataclass(frozen=True)
class Batch:
    """A padded batch; padding holds zeros and `lengths_B` tells valid video frames."""

    ids: list[str]
    video_BTHW: torch.Tensor  # float32, normalised (`normalize_video`)
    lengths_B: torch.Tensor  # int64, video frames
    mel_BMF: torch.Tensor  # float32 log-mel target
    speaker_BD: torch.Tensor  # float32; never from the clip's own audio
    targets_BL: torch.Tensor  # int64 CTC labels, blank-padded
    target_lengths_B: torch.Tensor  # int64; 0 for clips without a transcript

    def __len__(self) -> int:
        return len(self.ids)

    def to(self, device: torch.device, dtype: torch.dtype = torch.float32) -> Batch:
        """On `device`; video and speaker in `dtype` (the model's parameter dtype)."""
        return Batch(
            ids=self.ids,
            video_BTHW=self.video_BTHW.to(device, dtype, non_blocking=True),
            lengths_B=self.lengths_B.to(device, non_blocking=True),
            mel_BMF=self.mel_BMF.to(device, non_blocking=True),
            speaker_BD=self.speaker_BD.to(device, dtype, non_blocking=True),
            targets_BL=self.targets_BL.to(device, non_blocking=True),
            target_lengths_B=self.target_lengths_B.to(device, non_blocking=True),
        )


def collate(
    utts: Sequence[Utterance],
    speaker_BD: np.ndarray,
    rng: np.random.Generator | None,
    time_mask: bool = True,
) -> Batch:
    """Clips → a padded `Batch`. With `rng` (training): random crops, flips and (with
    `time_mask`) time masks."""
    B, T = len(utts), max(u.n_frames for u in utts)
    size = VIDEO.crop_size
    roi_BTHW = np.zeros((B, T, size, size), dtype=np.uint8)
    mel_BMF = np.zeros((B, AUDIO.n_mels, T * MELS_PER_FRAME), dtype=np.float32)
    for b, utt in enumerate(utts):
        roi_BTHW[b, : utt.n_frames] = crop(utt.roi_THW, rng)
        mel_BMF[b, :, : utt.mel_MF.shape[1]] = utt.mel_MF
    lengths_B = torch.tensor([u.n_frames for u in utts], dtype=torch.long)
    video_BTHW = normalize_video(torch.from_numpy(roi_BTHW))
    if rng is not None and time_mask:
        # Masked frames become 0 after normalisation, i.e. the corpus-mean grey: no edge or
        # brightness jump tells the network where a mask is.
        for b, utt in enumerate(utts):
            for start, stop in time_mask_spans(utt.n_frames, rng):
                video_BTHW[b, start:stop] = 0.0
    # Padding frames are zeroed by the model from `lengths_B`; zero them here too for clarity.
    for b, utt in enumerate(utts):
        video_BTHW[b, utt.n_frames :] = 0.0
    targets_BL, target_lengths_B = encode_batch([u.transcript for u in utts])
    return Batch(
        ids=[u.id for u in utts],
        video_BTHW=video_BTHW,
        lengths_B=lengths_B,
        mel_BMF=torch.from_numpy(mel_BMF),
        speaker_BD=torch.from_numpy(np.asarray(speaker_BD, dtype=np.float32).reshape(B, -1)),
        targets_BL=targets_BL,
        target_lengths_B=target_lengths_B,
    )


def batches_of(
    clips: Iterable[Utterance], cfg, bank: SpeakerBank, rng: np.random.Generator
) -> Iterator[Batch]:
    """One epoch of training clips as batches: long clips cut to a random window, length-bucketed,
    each conditioned on another utterance of its speaker, augmented (`cfg.augment`)."""
    augment_rng = rng if cfg.augment else None
    cut_clips = (cut(utt, cfg.max_clip_frames, rng) for utt in clips)
    for group in bucket(cut_clips, cfg.batch_size, cfg.max_frames, rng):
        speaker_BD = np.stack([bank.other(u.speaker, u.id, rng) for u in group])
        yield collate(group, speaker_BD, augment_rng, cfg.time_mask)


def val_clips(shard, cfg, keep_ids: set[str]) -> list[Utterance]:
    """The validation clips this worker scores, read once (copied out of the Arrow buffers)."""
    kept = []
    for batch in shard.iter_batches(batch_size=32, batch_format="numpy"):
        for utt in utterances(batch):
            if utt.id in keep_ids:
                utt = cut(utt, cfg.max_clip_frames, None)
                kept.append(
                    Utterance(
                        id=utt.id,
                        speaker=utt.speaker,
                        roi_THW=utt.roi_THW.copy(),
                        mel_MF=utt.mel_MF.copy(),
                        transcript=utt.transcript,
                    )
                )
    return sorted(kept, key=lambda u: (u.n_frames, u.id))


def val_batches(clips: Sequence[Utterance], table: SpeakerTable, batch_size: int) -> list[Batch]:
    """Validation batches (similar lengths together, centre crops), conditioned on each speaker's
    train-split mean embedding: zeros ("no speaker") for a speaker unseen in training."""
    zeros_D = np.zeros(table.dim, dtype=np.float32)
    batches = []
    for i in range(0, len(clips), batch_size):
        group = clips[i : i + batch_size]
        speaker_BD = np.stack([_or(table.embedding(u.speaker), zeros_D) for u in group])
        batches.append(collate(group, speaker_BD, None))
    return batches


def _or(value: np.ndarray | None, default: np.ndarray) -> np.ndarray:
    return default if value is None else value
