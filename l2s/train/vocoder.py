"""HiFi-GAN vocoder training on Ray Train: `train_vocoder(VocoderTrainConfig)` runs (or resumes) a
run; `l2s.infer.vocoder.load_vocoder(run)` turns its latest checkpoint into a mel → waveform function.

    from l2s.train.vocoder import VocoderTrainConfig, train_vocoder
    summary = train_vocoder(VocoderTrainConfig(dataset="out/features", out="out/runs/hifigan"))

The run learns from a feature dataset's ground-truth mels and the recordings they were computed
from (`vocoder_data`); each worker runs the one loop with `tasks.vocoder` (DDP: gloo on CPU, NCCL on
GPU).
The same `out` resumes from its latest checkpoint, as `l2s train` does.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass

from l2s import storage
from l2s.models.hifigan import PRESETS, HiFiGANConfig
from l2s.train import TrainSummary
from l2s.train.config import RunBase, known_fields


@dataclass(frozen=True, kw_only=True)
class VocoderTrainConfig(RunBase):
    """One vocoder training run. Defaults follow the paper's recipe (GAN from the first step, lr
    2e-4); on a 2-core CPU a long generator-only warm-up at lr 1e-3–2e-3 learns far faster."""

    dataset: str  # feature dataset directory; its manifest must still point at the videos
    out: str  # run directory, local or s3://: checkpoints, TensorBoard logs, metrics.jsonl
    preset: str = "tiny"
    model: HiFiGANConfig | None = None  # None: the preset's sizes

    steps: int = 100_000
    batch_size: int = 16  # segments per worker and step
    segment_frames: int = 32  # mel frames per segment (× 160 samples)
    # AdamW as the paper (β 0.8, 0.99), for generator and discriminators alike. The learning rate
    # decays exponentially from `lr` to `lr · final_lr_ratio` over the budget: the step budget, or
    # the time budget when that runs out first.
    lr: float = 2e-4
    final_lr_ratio: float = 0.5
    weight_decay: float = 0.01
    # Steps of generator-only training (mel + multi-resolution STFT loss) before the
    # discriminators switch on: the mel term dominates early learning, and a step without the
    # discriminators costs a fraction of a GAN step. 0: GAN from the first step, as the paper.
    # Measured on 2 cores (tiny, 2 workers × 16 × 32 frames, 5 minutes each): GAN from the start
    # made 102 steps (train mel L1 2.18), generator-only at lr 1e-3 made 735 (mel L1 0.83).
    gan_after: int = 0
    mel_weight: float = 45.0
    stft_weight: float = 0.0  # multi-resolution STFT loss weight in the GAN phase (paper: none)
    warmup_stft_weight: float = 45.0  # and in the warm-up: as much as the mel term

    val_every: int = 500
    ckpt_every: int = 1000
    n_val: int = 4  # val clips vocoded and scored (PESQ-WB, STOI) against their recordings
    log_every: int = 10
    keep_checkpoints: int = 3

    gpus_per_node: int = 0  # 0: train on CPU with `workers` workers
    nodes: int = 1
    workers: int = 2
    cpus_per_worker: float | None = None
    time_budget_min: float | None = None  # total training time over all attempts of this run
    max_failures: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        self.check_run(
            PRESETS,
            ("steps", "batch_size", "segment_frames", "val_every", "ckpt_every", "log_every",
             "keep_checkpoints"),
        )  # fmt: skip
        if not self.lr > 0 or not 0 < self.final_lr_ratio <= 1:
            raise ValueError(f"need lr > 0 and 0 < final_lr_ratio <= 1, got {self.final_lr_ratio}")
        negative = [
            n
            for n in ("gan_after", "mel_weight", "stft_weight", "warmup_stft_weight", "n_val")
            if getattr(self, n) < 0
        ]
        if negative or self.weight_decay < 0:
            raise ValueError(f"these must be non-negative: {negative or ['weight_decay']}")

    @property
    def model_config(self) -> HiFiGANConfig:
        return self.model if self.model is not None else PRESETS[self.preset]()

    def to_dict(self) -> dict:
        values = asdict(self)
        values["model"] = self.model_config.to_dict()
        return values

    @classmethod
    def from_dict(cls, values: dict) -> VocoderTrainConfig:
        values = known_fields(cls, values)
        if values.get("model") is not None:
            values["model"] = HiFiGANConfig.from_dict(values["model"])
        return cls(**values)


def learning_rate(step: int, cfg: VocoderTrainConfig, time_fraction: float = 0.0) -> float:
    """`lr · final_lr_ratio ** progress`, progress the larger of the step and time fractions."""
    progress = min(1.0, max(step / cfg.steps, time_fraction))
    return cfg.lr * cfg.final_lr_ratio**progress


def summary_line(metrics: dict) -> str:
    keys = (
        "train/mel_l1", "train/steps_per_s", "val/mel_l1", "val/pesq_wb", "val/stoi",
        "val/pesq_wb_gl", "val/stoi_gl",
    )  # fmt: skip
    return "  ".join(f"{k} {metrics[k]:.4g}" for k in keys if k in metrics)


def train_vocoder(cfg: VocoderTrainConfig, *, local: bool = False) -> TrainSummary:
    """Train (or resume) the vocoder run `cfg.out` on the current Ray cluster (a local one when
    none is attached); return when it is done. `local`: in this process, without Ray."""
    import torch

    from l2s.audio import griffin_lim
    from l2s.infer.checkpoint import VOCODER_FILE
    from l2s.models.hifigan import Discriminators, Generator, count_parameters
    from l2s.pipeline.runtime import connect
    from l2s.train import launch, summarize_run
    from l2s.train.tasks.vocoder import score_clips
    from l2s.train.vocoder_data import index_vocoder_dataset, read_val_clips, train_audio

    if not local:
        connect()
    # Workers run in a directory of Ray's own: a relative path would put their logs there.
    cfg = dataclasses.replace(
        cfg, dataset=storage.normalize(cfg.dataset), out=storage.normalize(cfg.out)
    )
    index = index_vocoder_dataset(cfg.dataset, cfg.n_val)
    with torch.device("meta"):
        generator = count_parameters(Generator(cfg.model_config))
        discriminators = count_parameters(Discriminators(cfg.model_config))
    print(
        f"[l2s.vocoder] {cfg.preset}: generator {generator:,} parameters, discriminators "
        f"{discriminators:,}; data {index.counts}"
    )
    # The baseline every validation prints beside the vocoder: Griffin-Lim of the same mels.
    val_clips = read_val_clips(index)
    baseline = score_clips(griffin_lim, val_clips)
    baseline = {f"val/{k}_gl": v for k, v in baseline.items() if k != "skipped"}
    loop_config = {
        "train": cfg.to_dict(),
        "val_clips": val_clips,
        "baseline": baseline,
        "dataset_metadata": index.metadata,
    }
    launch(
        "vocoder",
        cfg,
        loop_config,
        {"train": train_audio(index)},
        checkpoint_file=VOCODER_FILE,
        summary_line=summary_line,
        local=local,
    )
    return summarize_run(cfg.out, cfg.steps, generator, VOCODER_FILE)
