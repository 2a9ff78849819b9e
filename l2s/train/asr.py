"""`l2s train-asr`: a CTC speech recognizer (`l2s.models.asr`) trained on a feature dataset's own
recordings' log-mels and transcripts, on Ray Train through the one loop (`tasks.asr`).

    from l2s.train.asr import AsrTrainConfig, train_asr
    summary = train_asr(AsrTrainConfig(dataset="out/features", out="out/runs/asr"))

The run's checkpoints (`asr.pt`) are what `l2s score --asr RUN` recognizes speech with
(`l2s.infer.recognizer`), reading with the grammar chosen from the training transcripts as the
lip-to-speech model does. The same `out` resumes.

Letters in shape names: B batch, M mel bands, F mel frames, L label positions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow.compute as pc
import torch

from l2s import storage
from l2s.config import AUDIO
from l2s.models.asr import PRESETS, AsrConfig
from l2s.models.text import encode_batch, normalize_text
from l2s.train import TrainSummary
from l2s.train.config import GRAMMAR_CHOICES, RunBase, known_fields
from l2s.train.data import DatasetError, arrow_dataset, check_metadata, feature_files, select_val
from l2s.train.session import Source

COLUMNS = ("id", "transcript", "mel")
BUCKET_WINDOW_BATCHES = 16
# SpecAugment (Park et al. 2019), small: two bands of up to 10 mel bins and one span of up to
# 5 % of the frames per clip hidden (set to the band mean) in training.
FREQ_MASKS, FREQ_MASK_MAX = 2, 10
TIME_MASKS, TIME_MASK_FRACTION = 1, 0.05


@dataclass(frozen=True, kw_only=True)
class AsrTrainConfig(RunBase):
    """One recognizer training run. Defaults suit the `tiny` preset on a 2-core CPU."""

    dataset: str  # feature dataset directory: its mels and transcripts
    out: str  # run directory, local or s3://
    preset: str = "tiny"
    model: AsrConfig | None = None  # None: the preset's sizes
    grammar: str = "auto"  # how transcripts are read (`l2s.models.grammar.grammar_for`)

    steps: int = 4000
    batch_size: int = 16  # clips per worker and step
    lr: float = 2e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 200
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    spec_augment: bool = True

    val_every: int = 500
    ckpt_every: int = 500
    n_val: int = 64  # val clips decoded for WER / CER
    log_every: int = 10
    keep_checkpoints: int = 3

    gpus_per_node: int = 0
    nodes: int = 1
    workers: int = 1
    cpus_per_worker: float | None = None
    time_budget_min: float | None = None
    max_failures: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        self.check_run(
            PRESETS,
            ("steps", "batch_size", "val_every", "ckpt_every", "log_every", "keep_checkpoints"),
        )
        if not self.lr > 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"need lr > 0 and 0 <= min_lr_ratio <= 1, got {self.min_lr_ratio}")
        if not 0 <= self.warmup_steps < self.steps:
            raise ValueError(f"warmup_steps must lie in [0, steps), got {self.warmup_steps}")
        if self.weight_decay < 0 or self.grad_clip < 0 or self.n_val < 0:
            raise ValueError("weight_decay, grad_clip and n_val must be non-negative")
        if self.grammar not in GRAMMAR_CHOICES:
            raise ValueError(f"grammar must be one of {GRAMMAR_CHOICES}, got {self.grammar!r}")

    @property
    def model_config(self) -> AsrConfig:
        return self.model if self.model is not None else PRESETS[self.preset]()

    def to_dict(self) -> dict:
        values = asdict(self)
        values["model"] = self.model_config.to_dict()
        return values

    @classmethod
    def from_dict(cls, values: dict) -> AsrTrainConfig:
        values = known_fields(cls, values)
        if values.get("model") is not None:
            values["model"] = AsrConfig.from_dict(values["model"])
        return cls(**values)


@dataclass(frozen=True)
class AsrIndex:
    """What the driver learns about the dataset before training starts."""

    files: tuple[str, ...]
    metadata: dict
    counts: dict[str, int]  # clips with a transcript, per split
    transcripts: list[str]  # the train split's, normalised
    val_ids: tuple[str, ...]
    mel_mean_M: np.ndarray = field(repr=False)
    mel_std_M: np.ndarray = field(repr=False)


def index_asr_dataset(uri: str, n_val: int, seed: int = 0) -> AsrIndex:
    """Check the dataset, count its clips with transcripts, choose val clips, and take the
    per-band mel statistics of (a sample of) its train clips."""
    metadata = check_metadata(uri)
    files = feature_files(uri)
    rows = arrow_dataset(files).to_table(columns=["id", "split", "transcript"])
    rows = rows.filter(pc.invert(pc.is_null(rows["transcript"])))
    counts: dict[str, int] = {}
    for split in rows["split"].to_pylist():
        counts[split] = counts.get(split, 0) + 1
    train = rows.filter(pc.equal(rows["split"], "train"))
    if not len(train):
        raise DatasetError(f"{uri}: no train clip has a transcript; a recognizer learns from them")
    val = rows.filter(pc.equal(rows["split"], "val"))
    val_ids = select_val(val["id"].to_pylist(), val["id"].to_pylist(), n_val, 0)[0]
    rng = np.random.default_rng(seed)
    ids = train["id"].to_pylist()
    sample = rng.choice(ids, size=min(len(ids), 256), replace=False).tolist()
    mels = arrow_dataset(files).to_table(columns=["mel"], filter=pc.field("id").isin(sample))
    frames_FM = np.concatenate(
        [np.frombuffer(m, np.float32).reshape(AUDIO.n_mels, -1).T for m in mels["mel"].to_pylist()]
    )
    return AsrIndex(
        files=tuple(files),
        metadata=metadata,
        counts=counts,
        transcripts=[normalize_text(t) for t in train["transcript"].to_pylist()],
        val_ids=val_ids,
        mel_mean_M=frames_FM.mean(0),
        mel_std_M=frames_FM.std(0),
    )


@dataclass(frozen=True)
class MelBatch:
    """A padded batch of log-mels and their transcripts' labels."""

    mel_BMF: torch.Tensor  # float32, padding zeros
    mel_lengths_B: torch.Tensor
    targets_BL: torch.Tensor
    target_lengths_B: torch.Tensor
    transcripts: list[str]

    def __len__(self) -> int:
        return len(self.transcripts)

    def to(self, device: torch.device) -> MelBatch:
        return MelBatch(
            self.mel_BMF.to(device),
            self.mel_lengths_B.to(device),
            self.targets_BL.to(device),
            self.target_lengths_B.to(device),
            self.transcripts,
        )


def clips_of(batch: dict[str, np.ndarray]) -> Iterator[tuple[np.ndarray, str]]:
    """A numpy batch of rows → (mel_MF, normalised transcript) for each clip with a transcript."""
    for mel, transcript in zip(batch["mel"], batch["transcript"], strict=True):
        text = normalize_text(transcript) if isinstance(transcript, str) else ""
        if text:
            yield np.frombuffer(mel, np.float32).reshape(AUDIO.n_mels, -1), text


def collate(clips: list[tuple[np.ndarray, str]]) -> MelBatch:
    lengths = [mel_MF.shape[1] for mel_MF, _ in clips]
    mel_BMF = np.zeros((len(clips), AUDIO.n_mels, max(lengths)), np.float32)
    for b, (mel_MF, _) in enumerate(clips):
        mel_BMF[b, :, : lengths[b]] = mel_MF
    texts = [text for _, text in clips]
    targets_BL, target_lengths_B = encode_batch(texts)
    return MelBatch(
        torch.from_numpy(mel_BMF), torch.tensor(lengths), targets_BL, target_lengths_B, texts
    )


def mel_batches(
    clips: Iterable[tuple[np.ndarray, str]], batch_size: int, rng: np.random.Generator
) -> Iterator[MelBatch]:
    """Length-bucketed batches: a shuffled window of clips sorted by length, cut into batches
    yielded in random order (as the lip-to-speech data does)."""
    window = batch_size * BUCKET_WINDOW_BATCHES
    buffer: list[tuple[np.ndarray, str]] = []

    def drain() -> Iterator[MelBatch]:
        ordered = sorted(
            (buffer[i] for i in rng.permutation(len(buffer))), key=lambda c: c[0].shape[1]
        )
        groups = [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]
        for i in rng.permutation(len(groups)):
            yield collate(groups[i])

    for clip in clips:
        buffer.append(clip)
        if len(buffer) >= window:
            yield from drain()
            buffer = []
    if buffer:
        yield from drain()


def spec_augment(
    mel_BMF: torch.Tensor, mel_lengths_B: torch.Tensor, rng: np.random.Generator
) -> torch.Tensor:
    """Standardised mels with a few mel bands and a span of frames per clip set to 0 (the mean)."""
    mel_BMF = mel_BMF.clone()
    M = mel_BMF.shape[1]
    for b, length in enumerate(mel_lengths_B.tolist()):
        for _ in range(FREQ_MASKS):
            width = int(rng.integers(FREQ_MASK_MAX + 1))
            start = int(rng.integers(M - width + 1))
            mel_BMF[b, start : start + width, :length] = 0.0
        for _ in range(TIME_MASKS):
            width = int(rng.integers(int(TIME_MASK_FRACTION * length) + 1))
            start = int(rng.integers(length - width + 1))
            mel_BMF[b, :, start : start + width] = 0.0
    return mel_BMF


def read_val_clips(index: AsrIndex) -> list[tuple[np.ndarray, str]]:
    """The val clips validation decodes (read once, by the driver)."""
    if not index.val_ids:
        return []
    table = arrow_dataset(index.files).to_table(
        columns=list(COLUMNS), filter=pc.field("id").isin(list(index.val_ids))
    )
    rows = sorted(table.to_pylist(), key=lambda r: r["id"])
    batch = {name: np.array([r[name] for r in rows], dtype=object) for name in COLUMNS}
    return [(mel_MF.copy(), text) for mel_MF, text in clips_of(batch)]


def summary_line(metrics: dict) -> str:
    keys = ("train/ctc", "train/steps_per_s", "val/ctc", "val/wer", "val/cer", "val/wer_greedy")
    return "  ".join(f"{k} {metrics[k]:.4g}" for k in keys if k in metrics)


def train_asr(cfg: AsrTrainConfig, *, local: bool = False) -> TrainSummary:
    """Train (or resume) the recognizer run `cfg.out` on the current Ray cluster (a local one when
    none is attached); `local`: in this process, without Ray."""
    from l2s.infer.checkpoint import ASR_FILE
    from l2s.models.asr import SpeechRecognizer
    from l2s.models.grammar import grammar_for
    from l2s.models.lip2speech import count_parameters
    from l2s.pipeline.runtime import connect
    from l2s.train import launch, summarize_run

    if not local:
        connect()
    cfg = dataclasses.replace(
        cfg, dataset=storage.normalize(cfg.dataset), out=storage.normalize(cfg.out)
    )
    index = index_asr_dataset(cfg.dataset, cfg.n_val, cfg.seed)
    grammar = grammar_for(index.transcripts, cfg.grammar)
    with torch.device("meta"):
        parameters = count_parameters(SpeechRecognizer(cfg.model_config))
    print(
        f"[l2s.asr] {cfg.preset}: {parameters:,} parameters; clips with transcripts "
        f"{index.counts}; val {len(index.val_ids)} clips; read "
        f"{'greedily' if grammar is None else f'with the {grammar.name} grammar'}"
    )
    loop_config = {
        "train": cfg.to_dict(),
        "val_clips": read_val_clips(index),
        "mel_stats": [index.mel_mean_M.tolist(), index.mel_std_M.tolist()],
        "grammar": None if grammar is None else grammar.to_dict(),
        "dataset_metadata": index.metadata,
    }
    source = Source(files=index.files, split="train", columns=COLUMNS, shuffle_files=True)
    launch(
        "asr",
        cfg,
        loop_config,
        {"train": source},
        checkpoint_file=ASR_FILE,
        summary_line=summary_line,
        local=local,
    )
    return summarize_run(cfg.out, cfg.steps, parameters, ASR_FILE)
