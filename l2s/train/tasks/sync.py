"""The sync expert's part of training: build (resuming weights and optimizer state), batches of
windows with shifted and mismatched audio (`sync_data`), one contrastive step (`sync_loss`),
validation and checkpoints. DDP (gloo on CPU, NCCL on GPU).

Validation (rank 0) measures what the expert is for: on the first `n_val` val clips, with their
audio shifted by -val_shift, 0 and +val_shift frames, how often the best offset
(`l2s.sync.expert`) lands within one frame of the shift (`val/offset_within_1`); and the loss and
accuracies on fixed windows of the same clips.

A checkpoint holds:
  sync.pt         the network (fp32) + its SyncConfig, the exact SyncTrainConfig, the progress and
                  the datasets' metadata: all `l2s.sync.expert.SyncExpert` needs
  train_state.pt  the optimizer state
  config.json     the configs, progress and metrics as JSON
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from l2s.infer.checkpoint import CONFIG_FILE, SYNC_FILE, read_model
from l2s.models.syncnet import SyncNet, count_parameters, sync_loss
from l2s.sync.expert import recover_offsets
from l2s.train.checkpoint import TRAIN_STATE_FILE, Progress
from l2s.train.data import Utterance, utterances
from l2s.train.logs import RunLog
from l2s.train.loop import Step, Task
from l2s.train.session import Session
from l2s.train.sync import SyncTrainConfig, summary_line
from l2s.train.sync_data import SyncBatch, min_frames, sync_batches
from l2s.train.tasks.lip2speech import learning_rate


class SyncTask(Task):
    name = "l2s.sync"
    checkpoint_file = SYNC_FILE

    def __init__(self, config: dict, session: Session) -> None:
        cfg = self.cfg = SyncTrainConfig.from_dict(config["train"])
        self.session = session
        rank, world, device = session.rank, session.world, session.device
        if device.type == "cpu":
            torch.set_num_threads(config["threads"])
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        self.model = SyncNet(cfg.model_config)
        progress = Progress(world_size=world)
        state = None
        with session.restored() as folder:
            if folder is not None:
                saved = read_model(folder, SYNC_FILE)
                if saved["model_config"] != cfg.model_config.to_dict():
                    raise ValueError(
                        f"{cfg.out} holds a sync expert of another shape "
                        f"({saved['model_config']}): give another out, or the same preset"
                    )
                self.model.load_state_dict(saved["model"])
                progress = Progress(**saved["progress"])
                state = torch.load(folder / TRAIN_STATE_FILE, map_location="cpu", weights_only=True)
                if rank == 0:
                    print(f"[l2s.sync] resuming from step {progress.step}")
        progress.world_size = world
        if rank == 0:
            print(
                f"[l2s.sync] {count_parameters(self.model):,} parameters, {world} worker(s) on "
                f"{device.type}"
            )
        self.net = session.prepare(self.model)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay
        )
        if state is not None:
            self.optimizer.load_state_dict(state)
        self.progress = progress
        self.resumed_from = progress.step
        self.log = RunLog(cfg.out, progress.step) if rank == 0 else None
        self.dataset_metadata = config["dataset_metadata"]
        self.train_shard = session.shard("train")
        self.val_shard = session.shard("val") if rank == 0 else None
        self.cache: list[Utterance] | None = [] if config.get("cache") else None
        self.cached = False
        self.val_clips: list[Utterance] | None = None

    # ---- data ------------------------------------------------------------------------------------
    def batches(self, epoch: int) -> Iterator[SyncBatch]:
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, self.session.rank, epoch])
        if self.cached:
            clips = (self.cache[i] for i in rng.permutation(len(self.cache)))
        else:
            clips = self._read_epoch()
        return sync_batches(
            clips, cfg.batch_size, cfg.windows, cfg.max_shift, cfg.spans_per_clip, rng, cfg.augment
        )

    def _read_epoch(self) -> Iterator[Utterance]:
        rows = self.train_shard.iter_batches(
            batch_size=32, batch_format="numpy", prefetch_batches=2
        )
        for batch in rows:
            for utt in utterances(batch):
                if self.cache is not None:
                    self.cache.append(utt)
                yield utt
        self.cached = self.cache is not None

    # ---- steps -----------------------------------------------------------------------------------
    def learning_rate(self, step: int, time_fraction: float) -> float:
        return learning_rate(step, self.cfg, time_fraction)

    def step(self, batch: SyncBatch, lr: float) -> Step:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        batch = batch.to(self.session.device)
        loss, parts = sync_loss(*self.net(batch.video_CNKHW, batch.mel_CPMW))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip = self.cfg.grad_clip if self.cfg.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        self.optimizer.step()
        losses = {"loss": float(loss.detach()), **{k: float(v) for k, v in parts.items()}}
        losses["grad_norm"] = float(grad_norm)
        losses["scale"] = float(self.model.scale.detach())
        return Step(losses, len(batch), len(batch) * batch.video_CNKHW.shape[2])

    def _validation_clips(self) -> list[Utterance]:
        if self.val_clips is None:
            kept: list[Utterance] = []
            for batch in self.val_shard.iter_batches(batch_size=32, batch_format="numpy"):
                for utt in utterances(batch):
                    if utt.n_frames >= min_frames(self.cfg.max_shift, self.cfg.windows):
                        kept.append(utt)
            self.val_clips = sorted(kept, key=lambda u: u.id)[: self.cfg.n_val]
        return self.val_clips

    @torch.no_grad()
    def validate(self, step: int, template: SyncBatch) -> dict[str, float]:
        if self.val_shard is None:
            return {}
        clips = self._validation_clips()
        if not clips:
            return {}
        cfg, device = self.cfg, self.session.device
        self.model.eval()
        try:
            rng = np.random.default_rng(0)
            spans = sync_batches(
                clips, len(clips), cfg.windows, cfg.max_shift, 2, rng, augmented=False
            )
            losses = [
                sync_loss(*self.model(b.video_CNKHW.to(device), b.mel_CPMW.to(device)))
                for b in spans
            ]
            shifts = sorted({-cfg.val_shift, 0, cfg.val_shift})
            hits = [
                abs(score.offset - shift) <= 1
                for utt in clips
                for shift, score in zip(
                    shifts,
                    recover_offsets(self.model, utt.roi_THW, utt.mel_MF, shifts, device),
                    strict=True,
                )
            ]
        finally:
            self.model.train()
        metrics = {"val/offset_within_1": float(np.mean(hits)), "val/clips": len(clips)}
        if losses:
            metrics["val/loss"] = float(np.mean([float(loss) for loss, _ in losses]))
            for name in ("offset_acc", "acc"):
                metrics[f"val/{name}"] = float(np.mean([float(p[name]) for _, p in losses]))
        return metrics

    def save(self, folder: Path, metrics: dict, rank: int) -> bool:
        if rank != 0:
            return False
        configs = {
            "train_config": self.cfg.to_dict(),
            "model_config": self.cfg.model_config.to_dict(),
            "progress": asdict(self.progress),
            "dataset": self.dataset_metadata,
        }
        weights = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        torch.save({"model": weights, **configs}, folder / SYNC_FILE)
        torch.save(self.optimizer.state_dict(), folder / TRAIN_STATE_FILE)
        (folder / CONFIG_FILE).write_text(json.dumps({**configs, "metrics": metrics}, indent=2))
        return True

    def summary_line(self, metrics: dict) -> str:
        return summary_line(metrics)
