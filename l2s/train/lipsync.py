"""Lip-generator training on Ray Train: `train_lipsync(LipSyncTrainConfig)` runs (or resumes) a run;
`l2s.lipsync.model.LipSyncModel.load(run)` gives the trained generator back.

    from l2s.train.lipsync import LipSyncTrainConfig, train_lipsync
    summary = train_lipsync(LipSyncTrainConfig(
        dataset="out/features", out="out/runs/lipsync", sync_expert="out/runs/sync"))

The generator learns to re-draw the masked mouth of a frame from a reference frame and the audio:
L1 against the real frame in the masked region, plus the frozen sync expert's loss on each
generated 5-frame window against its audio and that audio shifted (`tasks.lipsync`). `init`
starts from another lip generator's weights: per-person fine-tuning on one person's clips.
Each worker runs the one loop (`loop.fit`); the same `out` resumes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass

from l2s import storage
from l2s.models.lipgen import PRESETS, LipGenConfig
from l2s.train import TrainSummary
from l2s.train.config import RunBase, known_fields


@dataclass(frozen=True, kw_only=True)
class LipSyncTrainConfig(RunBase):
    """One lip-generator run. Defaults suit the `tiny` preset on a 2-core CPU."""

    dataset: str  # feature dataset directory, local or s3://
    out: str  # run directory: checkpoints, TensorBoard logs, metrics.jsonl
    sync_expert: str  # a sync expert's checkpoint or run (l2s train-sync), frozen
    init: str | None = None  # start from this lip generator's weights (fine-tuning)
    preset: str = "tiny"
    model: LipGenConfig | None = None  # None: the preset's sizes (or init's)

    steps: int = 3000
    batch_size: int = 8  # windows of 5 frames (each from its own clip) per worker and step
    spans_per_clip: int = 2  # windows drawn from each clip per epoch
    # The sync loss: the expert picks each generated window's audio among that audio shifted by
    # up to sync_shift frames and the batch's other windows' audio. Its weight against the L1
    # (mean absolute pixel error in [0, 1] over the masked region), and the step it starts at.
    sync_weight: float = 0.01
    sync_shift: int = 3
    sync_after: int = 0
    # Weight of Wav2Lip's visual-quality discriminator (LSGAN on the drawn region; 0: none).
    gan_weight: float = 0.0
    # The share of training windows whose visible rows (above mask_top) come from the reference
    # frame, not the frame itself: there cheeks and nostrils move with the clip's own speech and
    # tell the generator the mouth without the audio (0: none).
    visible_from_reference: float = 0.5
    lr: float = 1e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 100
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    cache_mb: int = 2048

    val_every: int = 250
    ckpt_every: int = 500
    n_val: int = 8  # val clips re-drawn whole at each validation (own audio, and a neighbour's)
    log_every: int = 10
    keep_checkpoints: int = 3

    gpus_per_node: int = 0
    nodes: int = 1
    workers: int = 2
    cpus_per_worker: float | None = None
    time_budget_min: float | None = None
    max_failures: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        self.check_run(
            PRESETS,
            ("steps", "batch_size", "spans_per_clip", "sync_shift", "val_every", "ckpt_every",
             "log_every", "keep_checkpoints"),
        )  # fmt: skip
        if not self.sync_expert:
            raise ValueError("sync_expert must name a sync expert (l2s train-sync)")
        if not self.lr > 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"need lr > 0 and 0 <= min_lr_ratio <= 1, got {self.lr}")
        if not 0 <= self.warmup_steps < self.steps:
            raise ValueError(f"warmup_steps must lie in [0, steps), got {self.warmup_steps}")
        negative = [
            n
            for n in (
                "sync_weight",
                "sync_after",
                "gan_weight",
                "weight_decay",
                "grad_clip",
                "cache_mb",
                "n_val",
            )
            if getattr(self, n) < 0
        ]
        if negative:
            raise ValueError(f"these must be non-negative: {negative}")
        if not 0 <= self.visible_from_reference <= 1:
            raise ValueError(
                f"visible_from_reference is a share in [0, 1], got {self.visible_from_reference}"
            )

    @property
    def model_config(self) -> LipGenConfig:
        return self.model if self.model is not None else PRESETS[self.preset]()

    def to_dict(self) -> dict:
        values = asdict(self)
        values["model"] = self.model_config.to_dict()
        return values

    @classmethod
    def from_dict(cls, values: dict) -> LipSyncTrainConfig:
        values = known_fields(cls, values)
        if values.get("model") is not None:
            values["model"] = LipGenConfig.from_dict(values["model"])
        return cls(**values)


def summary_line(metrics: dict) -> str:
    keys = (
        "train/l1", "train/sync", "train/steps_per_s", "val/l1", "val/sync_conf",
        "val/sync_conf_real", "val/sync_conf_cross",
    )  # fmt: skip
    return "  ".join(f"{k} {metrics[k]:.4g}" for k in keys if k in metrics)


def train_lipsync(cfg: LipSyncTrainConfig, *, local: bool = False) -> TrainSummary:
    """Train (or resume) the lip-generator run `cfg.out` on the current Ray cluster (a local one
    when none is attached); return when it is done. `local`: in this process, without Ray."""
    import torch

    from l2s.infer.checkpoint import LIPSYNC_FILE, SYNC_FILE, read_model, resolve
    from l2s.models.lipgen import LipGenerator, count_parameters
    from l2s.pipeline.runtime import connect
    from l2s.train import launch, summarize_run
    from l2s.train.sync_data import index_sync_datasets, sync_source

    if not local:
        connect()
    cfg = dataclasses.replace(
        cfg,
        dataset=storage.normalize(cfg.dataset),
        out=storage.normalize(cfg.out),
        sync_expert=resolve(cfg.sync_expert, SYNC_FILE),
        init=resolve(cfg.init, LIPSYNC_FILE) if cfg.init else None,
    )
    if cfg.init and cfg.model is None:
        # Fine-tuning keeps the shape of the generator it starts from.
        saved = read_model(cfg.init, LIPSYNC_FILE)
        cfg = dataclasses.replace(cfg, model=LipGenConfig.from_dict(saved["model_config"]))
    index = index_sync_datasets([cfg.dataset])
    with torch.device("meta"):
        parameters = count_parameters(LipGenerator(cfg.model_config))
    workers = 1 if local else cfg.num_workers
    cache = index.train_bytes / workers <= cfg.cache_mb * 2**20
    print(
        f"[l2s.lipsync] {cfg.preset}: {parameters:,} parameters; {workers} worker(s); data "
        f"{index.counts} ({index.train_bytes / 2**20:.0f} MiB of train clips"
        f"{', kept in memory' if cache else ''}); sync expert {cfg.sync_expert}"
        f"{f'; starting from {cfg.init}' if cfg.init else ''}"
    )
    sources = {"train": sync_source(index, "train", shuffle_files=True)}
    if index.counts.get("val") and cfg.n_val:
        sources["val"] = sync_source(index, "val", shuffle_files=False)
    loop_config = {"train": cfg.to_dict(), "dataset_metadata": index.metadata[0], "cache": cache}
    launch(
        "lipsync",
        cfg,
        loop_config,
        sources,
        checkpoint_file=LIPSYNC_FILE,
        summary_line=summary_line,
        local=local,
    )
    return summarize_run(cfg.out, cfg.steps, parameters, LIPSYNC_FILE)
