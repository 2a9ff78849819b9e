"""Sync-expert training on Ray Train: `train_sync(SyncTrainConfig)` runs (or resumes) a run;
`l2s.sync.expert.SyncExpert.load(run)` gives the trained expert back.

    from l2s.train.sync import SyncTrainConfig, train_sync
    summary = train_sync(SyncTrainConfig(dataset="out/features", out="out/runs/sync"))

Each worker runs the one loop (`loop.fit`) with `tasks.sync`; the same `out` resumes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass

from l2s import storage
from l2s.models.syncnet import PRESETS, SyncConfig
from l2s.train import TrainSummary
from l2s.train.config import RunBase, known_fields


@dataclass(frozen=True, kw_only=True)
class SyncTrainConfig(RunBase):
    """One sync-expert run. Defaults suit the `tiny` preset on a 2-core CPU."""

    dataset: str  # feature dataset directory, local or s3://
    extra_datasets: tuple[str, ...] = ()  # more feature datasets trained on together
    out: str  # run directory: checkpoints, TensorBoard logs, metrics.jsonl
    preset: str = "tiny"
    model: SyncConfig | None = None  # None: the preset's sizes

    steps: int = 3000
    batch_size: int = 16  # spans (from as many clips) per worker and step
    windows: int = 4  # consecutive video windows in a span
    # A window's own audio shifted by up to this many frames each way: the hard negatives.
    max_shift: int = 6
    spans_per_clip: int = 2  # spans drawn from each clip per epoch
    augment: bool = True
    # AdamW; linear warm-up, then a cosine to lr · min_lr_ratio at the end of the budget.
    lr: float = 1e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    # A worker whose share of the train split is at most this many MiB keeps it in memory.
    cache_mb: int = 2048

    val_every: int = 250
    ckpt_every: int = 500
    n_val: int = 45  # val clips whose offset is recovered at each validation
    val_shift: int = 10  # … with their audio shifted by -val_shift, 0 and +val_shift frames
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
            ("steps", "batch_size", "windows", "max_shift", "spans_per_clip", "val_every",
             "ckpt_every", "log_every", "keep_checkpoints"),
        )  # fmt: skip
        if not self.lr > 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"need lr > 0 and 0 <= min_lr_ratio <= 1, got {self.lr}")
        if not 0 <= self.warmup_steps < self.steps:
            raise ValueError(f"warmup_steps must lie in [0, steps), got {self.warmup_steps}")
        if self.weight_decay < 0 or self.grad_clip < 0 or self.cache_mb < 0:
            raise ValueError("weight_decay, grad_clip and cache_mb must be non-negative")
        if self.n_val < 0 or self.val_shift < 0:
            raise ValueError("n_val and val_shift must be non-negative")

    @property
    def model_config(self) -> SyncConfig:
        return self.model if self.model is not None else PRESETS[self.preset]()

    @property
    def datasets(self) -> tuple[str, ...]:
        return (self.dataset, *self.extra_datasets)

    def to_dict(self) -> dict:
        values = asdict(self)
        values["model"] = self.model_config.to_dict()
        values["extra_datasets"] = list(self.extra_datasets)
        return values

    @classmethod
    def from_dict(cls, values: dict) -> SyncTrainConfig:
        values = known_fields(cls, values)
        if values.get("model") is not None:
            values["model"] = SyncConfig.from_dict(values["model"])
        values["extra_datasets"] = tuple(values.get("extra_datasets", ()))
        return cls(**values)


def summary_line(metrics: dict) -> str:
    keys = (
        "train/loss", "train/offset_acc", "train/steps_per_s", "val/loss", "val/offset_acc",
        "val/offset_within_1",
    )  # fmt: skip
    return "  ".join(f"{k} {metrics[k]:.4g}" for k in keys if k in metrics)


def train_sync(cfg: SyncTrainConfig, *, local: bool = False) -> TrainSummary:
    """Train (or resume) the sync-expert run `cfg.out` on the current Ray cluster (a local one
    when none is attached); return when it is done. `local`: in this process, without Ray."""
    import torch

    from l2s.infer.checkpoint import SYNC_FILE
    from l2s.models.syncnet import SyncNet, count_parameters
    from l2s.pipeline.runtime import connect
    from l2s.train import launch, summarize_run
    from l2s.train.sync_data import index_sync_datasets, sync_source

    if not local:
        connect()
    cfg = dataclasses.replace(
        cfg,
        dataset=storage.normalize(cfg.dataset),
        extra_datasets=tuple(storage.normalize(d) for d in cfg.extra_datasets),
        out=storage.normalize(cfg.out),
    )
    index = index_sync_datasets(cfg.datasets)
    with torch.device("meta"):
        parameters = count_parameters(SyncNet(cfg.model_config))
    workers = 1 if local else cfg.num_workers
    cache = index.train_bytes / workers <= cfg.cache_mb * 2**20
    print(
        f"[l2s.sync] {cfg.preset}: {parameters:,} parameters; {workers} worker(s); data "
        f"{index.counts} from {len(cfg.datasets)} dataset(s) ({index.train_bytes / 2**20:.0f} MiB "
        f"of train clips{', kept in memory' if cache else ''})"
    )
    sources = {"train": sync_source(index, "train", shuffle_files=True)}
    if index.counts.get("val") and cfg.n_val:
        sources["val"] = sync_source(index, "val", shuffle_files=False)
    loop_config = {"train": cfg.to_dict(), "dataset_metadata": index.metadata, "cache": cache}
    launch(
        "sync",
        cfg,
        loop_config,
        sources,
        checkpoint_file=SYNC_FILE,
        summary_line=summary_line,
        local=local,
    )
    return summarize_run(cfg.out, cfg.steps, parameters, SYNC_FILE)
