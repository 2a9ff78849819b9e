"""`TrainConfig`: everything one training run needs, validated on construction, saved in every
checkpoint as JSON (STYLE.md 5, 6).

A run is named by its output URI: rerunning with the same `out` resumes from its latest checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Literal

from l2s.config import AUDIO
from l2s.models.lip2speech import PRESETS, ModelConfig
from l2s.models.losses import LossConfig

Strategy = Literal["ddp", "deepspeed"]
GRAMMAR_CHOICES = ("auto", "grid", "lexicon", "none")
Precision = Literal["auto", "fp32", "bf16"]


class RunBase:
    """What the lip-to-speech and the vocoder training configs share: a dataset, a run directory,
    a preset, where the run trains and for how long (the fields are declared by each config)."""

    dataset: str
    out: str
    preset: str
    gpus_per_node: int
    nodes: int
    workers: int
    cpus_per_worker: float | None
    time_budget_min: float | None
    max_failures: int

    def check_run(self, presets: dict, at_least_one: tuple[str, ...]) -> None:
        """Validate the shared fields, and that each field named in `at_least_one` is >= 1."""
        if not self.dataset or not self.out:
            raise ValueError("dataset and out must both be given")
        if self.preset not in presets:
            raise ValueError(f"unknown preset {self.preset!r} (expected one of {sorted(presets)})")
        small = [name for name in (*at_least_one, "nodes", "workers") if getattr(self, name) < 1]
        if small:
            raise ValueError(f"these must be at least 1: {small}")
        if self.gpus_per_node < 0:
            raise ValueError(f"gpus_per_node must be >= 0, got {self.gpus_per_node}")
        if self.cpus_per_worker is not None and not self.cpus_per_worker > 0:
            raise ValueError(f"cpus_per_worker must be > 0, got {self.cpus_per_worker}")
        if self.time_budget_min is not None and not self.time_budget_min > 0:
            raise ValueError(f"time_budget_min must be > 0, got {self.time_budget_min}")
        if self.max_failures < -1:
            raise ValueError(
                f"max_failures must be >= -1 (-1: retry forever), got {self.max_failures}"
            )

    @property
    def use_gpu(self) -> bool:
        return self.gpus_per_node > 0

    @property
    def num_workers(self) -> int:
        return self.nodes * self.gpus_per_node if self.use_gpu else self.workers

    @property
    def placement_strategy(self) -> str:
        """Ray Train's placement of the workers: GPU workers packed onto as few nodes as hold them;
        CPU workers of a run with `nodes` > 1 spread over the nodes (soft: a run that lost a node
        goes on with all its workers on the nodes left, if they have room)."""
        return "SPREAD" if not self.use_gpu and self.nodes > 1 else "PACK"

    @property
    def time_budget_s(self) -> float:
        return math.inf if self.time_budget_min is None else 60.0 * self.time_budget_min


def known_fields(cls: type, values: dict) -> dict:
    """A copy of `values` after checking that every key is a field of the dataclass `cls`."""
    unknown = sorted(set(values) - {f.name for f in fields(cls)})
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {unknown}")
    return dict(values)


@dataclass(frozen=True, kw_only=True)
class TrainConfig(RunBase):
    """One training run. Defaults suit the `tiny` preset on a 2-core CPU; see `l2s train --help`."""

    dataset: (
        str  # feature dataset directory (features/part-*.parquet + metadata.json), local or s3://
    )
    out: str  # run directory, local or s3://: checkpoints, TensorBoard logs, metrics.jsonl
    preset: str = "tiny"
    model: ModelConfig | None = None  # None: the preset's sizes
    loss: LossConfig = field(default_factory=LossConfig)
    # A checkpoint (or run directory) whose weights a fresh run starts from: fine-tuning, e.g. a
    # front-end trained on the synthetic corpus carried to real faces. Its model must have this
    # run's sizes; the mel statistics and speakers are this dataset's. A resume ignores it.
    init: str | None = None

    # Optimisation. The learning rate warms up linearly, then follows a cosine down to
    # lr * min_lr_ratio at the end of the budget: the step budget, or the time budget when that
    # runs out first (decaying over the whole budget beat early decay here, ENVIRONMENT.md).
    steps: int = 2000
    batch_size: int = 8  # utterances per worker and step (the most, when max_frames also binds)
    max_frames: int | None = None  # padded video frames per worker batch (length bucketing cap)
    max_clip_frames: int = 250  # longer clips are cut to a window this long (10 s at 25 fps)
    # A worker whose share of the train split (decoded ROIs and mels) is at most this many MiB
    # keeps it in memory after the first epoch, instead of reading it again every epoch.
    cache_mb: int = 2048
    lr: float = 1e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    augment: bool = True  # random 88×88 crops and horizontal flips (train split only)
    # auto-AVSR's time masking (on top of `augment`): a regulariser for long runs; a run of
    # minutes underfits, and hiding a fifth of its frames only slows it down.
    time_mask: bool = True
    # How the model reads its lips at inference (`l2s.models.grammar.grammar_for`): auto (GRID's
    # grammar when every train transcript is a GRID sentence, else greedy), grid, lexicon, none.
    grammar: str = "auto"
    # A text-conditioned model (`ModelConfig.text_conditioning`) trains on transcripts with this
    # fraction of words misread, and on no text for this fraction of clips (`text_noise`).
    text_noise: float = 0.2
    text_dropout: float = 0.1
    # Modality dropout for a text-conditioned model: this fraction of the clips that have a text
    # hide their video features from the decoder (`Lip2Speech.encode`'s `hide_video_B`), so that
    # it must learn to say the text; the L1 mel loss alone is met from the video, and the decoder
    # then ignores its text.
    video_dropout: float = 0.0
    # A `l2s train-asr` run (or checkpoint) on this corpus's recordings: its recognizer, frozen,
    # reads every generated mel, and its CTC loss against the transcript (`loss.asr_weight`)
    # joins the training loss (`l2s.models.losses.lip2speech_loss`). None: no such term.
    recognizer: str | None = None

    # Validation, checkpoints, logs.
    val_every: int = 200
    ckpt_every: int = 500
    val_utterances: int = 200  # val rows scored for mel L1 (a fixed, deterministic subset)
    n_val_audio: int = 4  # of those, how many are vocoded (Griffin-Lim) for STOI / ESTOI
    log_every: int = 10  # steps between TensorBoard scalars
    keep_checkpoints: int = 3

    # Where it runs.
    strategy: Strategy = "ddp"
    zero_stage: int = 2
    precision: Precision = "auto"  # auto: bf16 on GPU, fp32 on CPU
    nodes: int = 1
    gpus_per_node: int = 0  # 0: train on CPU with `workers` workers
    workers: int = 2
    cpus_per_worker: float | None = (
        None  # None: share the cluster's CPUs, leaving some for Ray Data
    )
    time_budget_min: float | None = None  # total training time over all attempts of this run
    max_failures: int = 1  # worker-group restarts from the latest checkpoint before giving up
    seed: int = 0

    def __post_init__(self) -> None:
        self.check_run(
            PRESETS,
            ("steps", "batch_size", "max_clip_frames", "val_every", "ckpt_every", "log_every",
             "keep_checkpoints"),
        )  # fmt: skip
        if self.max_frames is not None and self.max_frames < self.max_clip_frames:
            raise ValueError(
                f"max_frames {self.max_frames} must hold one whole clip (max_clip_frames "
                f"{self.max_clip_frames})"
            )
        if self.cache_mb < 0:
            raise ValueError(f"cache_mb must be >= 0 (0: never cache), got {self.cache_mb}")
        if not self.lr > 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(
                f"need lr > 0 and 0 <= min_lr_ratio <= 1, got {self.lr}, {self.min_lr_ratio}"
            )
        if not 0 <= self.warmup_steps < self.steps:
            raise ValueError(f"warmup_steps must lie in [0, steps), got {self.warmup_steps}")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError("weight_decay and grad_clip must be non-negative (grad_clip 0: off)")
        if self.val_utterances < 0 or not 0 <= self.n_val_audio <= self.val_utterances:
            raise ValueError(
                f"need 0 <= n_val_audio <= val_utterances, got {self.n_val_audio}, {self.val_utterances}"
            )
        if self.grammar not in GRAMMAR_CHOICES:
            raise ValueError(f"grammar must be one of {GRAMMAR_CHOICES}, got {self.grammar!r}")
        if not all(0 <= p <= 1 for p in (self.text_noise, self.text_dropout, self.video_dropout)):
            raise ValueError(
                f"text_noise, text_dropout and video_dropout must lie in [0, 1], got "
                f"{self.text_noise}, {self.text_dropout}, {self.video_dropout}"
            )
        if self.strategy not in ("ddp", "deepspeed"):
            raise ValueError(f"strategy must be 'ddp' or 'deepspeed', got {self.strategy!r}")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"zero_stage must be 0, 1, 2 or 3, got {self.zero_stage}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")
        if self.model_config.n_mels != AUDIO.n_mels:
            raise ValueError(
                f"model n_mels {self.model_config.n_mels} != {AUDIO.n_mels} (the mel contract)"
            )
        if self.video_dropout > 0 and not self.model_config.text_conditioning:
            raise ValueError(
                "video_dropout hides the video from a decoder that has a text: it needs a "
                "text-conditioned model (text_conditioning)"
            )

    @property
    def model_config(self) -> ModelConfig:
        return self.model if self.model is not None else PRESETS[self.preset]()

    @property
    def bf16(self) -> bool:
        return self.precision == "bf16" or (self.precision == "auto" and self.use_gpu)

    def to_dict(self) -> dict:
        """JSON-ready; `model` is written out in full (the preset's sizes when it was None)."""
        values = asdict(self)
        values["model"] = self.model_config.to_dict()
        return values

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """Inverse of `to_dict`, also after a JSON round trip; unknown keys are an error."""
        values = known_fields(cls, values)
        if values.get("model") is not None:
            values["model"] = ModelConfig.from_dict(values["model"])
        if values.get("loss") is not None:
            values["loss"] = LossConfig(**values["loss"])
        return cls(**values)
