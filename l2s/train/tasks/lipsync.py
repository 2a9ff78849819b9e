"""The lip generator's part of training: build (resuming, or starting from `init`'s weights), batches
of 5-frame windows (`lipsync_data`), one step (L1 on the masked region + the frozen sync expert's
loss + with `gan_weight` > 0 Wav2Lip's visual-quality discriminator, LSGAN as HiFi-GAN's),
validation and checkpoints. DDP (gloo on CPU, NCCL on GPU).

Validation (rank 0) re-draws the first `n_val` val clips whole, each from its own reference frame
(`l2s.lipsync.model.redraw`), driven by its own audio (L1 against the real frames; the expert's
confidence beside the real video's) and by the next clip's audio (the expert's confidence and
offset against that audio: does the mouth follow speech it never saw with this face?).

A checkpoint holds:
  lipsync.pt      the generator (fp32) + its LipGenConfig, the exact LipSyncTrainConfig, the
                  progress, the dataset's metadata and the sync expert it trained with
  train_state.pt  the optimizer's state (and the discriminator with its optimizer)
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

from l2s.infer.checkpoint import CONFIG_FILE, LIPSYNC_FILE, read_model
from l2s.lipsync.model import redraw
from l2s.models.hifigan import discriminator_loss
from l2s.models.lipgen import LipGenerator, MouthDiscriminator, count_parameters, mask_mouth
from l2s.models.syncnet import WINDOW_FRAMES, sync_loss
from l2s.sync.expert import SyncExpert
from l2s.train.checkpoint import TRAIN_STATE_FILE, Progress
from l2s.train.data import Utterance, utterances
from l2s.train.lipsync import LipSyncTrainConfig, summary_line
from l2s.train.lipsync_data import LipBatch, lip_batches
from l2s.train.logs import RunLog
from l2s.train.loop import Step, Task
from l2s.train.session import Session
from l2s.train.sync_data import min_frames
from l2s.train.tasks.lip2speech import learning_rate


class LipSyncTask(Task):
    name = "l2s.lipsync"
    checkpoint_file = LIPSYNC_FILE

    def __init__(self, config: dict, session: Session) -> None:
        cfg = self.cfg = LipSyncTrainConfig.from_dict(config["train"])
        self.session = session
        rank, world, device = session.rank, session.world, session.device
        if device.type == "cpu":
            torch.set_num_threads(config["threads"])
        torch.manual_seed(cfg.seed)
        self.model = LipGenerator(cfg.model_config)
        progress = Progress(world_size=world)
        state = None
        with session.restored() as folder:
            if folder is not None:
                saved = read_model(folder, LIPSYNC_FILE)
                if saved["model_config"] != cfg.model_config.to_dict():
                    raise ValueError(
                        f"{cfg.out} holds a lip generator of another shape "
                        f"({saved['model_config']}): give another out, or the same preset"
                    )
                self.model.load_state_dict(saved["model"])
                progress = Progress(**saved["progress"])
                state = torch.load(folder / TRAIN_STATE_FILE, map_location="cpu", weights_only=True)
                if rank == 0:
                    print(f"[l2s.lipsync] resuming from step {progress.step}")
            elif cfg.init:
                self.model.load_state_dict(read_model(cfg.init, LIPSYNC_FILE)["model"])
                if rank == 0:
                    print(f"[l2s.lipsync] starting from {cfg.init}")
        progress.world_size = world
        # The expert is frozen and in eval mode: the generator learns to please it, not the reverse.
        self.expert = SyncExpert.load(cfg.sync_expert, device)
        self.expert.network.requires_grad_(False)
        if rank == 0:
            print(
                f"[l2s.lipsync] {count_parameters(self.model):,} parameters, {world} worker(s) on "
                f"{device.type}; sync expert {self.expert.checkpoint}"
            )
        self.net = session.prepare(self.model)
        self.optimizer = _adamw(self.model, cfg)
        # The discriminator, as the vocoder's: DDP-wrapped for its own step (`d_net`); the
        # generator's adversarial pass goes through the bare module with its weights frozen.
        self.discriminator = self.d_net = self.optim_d = None
        if cfg.gan_weight > 0:
            self.discriminator = MouthDiscriminator(cfg.model_config)
            self.d_net = session.prepare(self.discriminator)
            self.optim_d = _adamw(self.discriminator, cfg)
        if state is not None:
            # Runs from before the discriminator saved the bare optimizer state.
            self.optimizer.load_state_dict(state.get("optimizer", state))
            if self.discriminator is not None and "discriminator" in state:
                self.discriminator.load_state_dict(state["discriminator"])
                self.optim_d.load_state_dict(state["optim_d"])
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
    def batches(self, epoch: int) -> Iterator[LipBatch]:
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, self.session.rank, epoch])
        if self.cached:
            clips = (self.cache[i] for i in rng.permutation(len(self.cache)))
        else:
            clips = self._read_epoch()
        return lip_batches(clips, cfg.batch_size, cfg.sync_shift, cfg.spans_per_clip, rng)

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

    def step(self, batch: LipBatch, lr: float) -> Step:
        """The discriminator's update (with `gan_weight`), then the generator's: L1 over the
        masked region, the expert's loss on the generated windows, and the adversarial loss."""
        cfg = self.cfg
        for optimizer in (self.optimizer, self.optim_d):
            for group in optimizer.param_groups if optimizer is not None else ():
                group["lr"] = lr
        batch = batch.to(self.session.device)
        C, K = batch.target_CKHW.shape[:2]
        target_XHW = batch.target_CKHW.flatten(0, 1)
        top = self.model.cfg.mask_top
        drawn_XHW = self.net(
            mask_mouth(batch.visible_CKHW(cfg.visible_from_reference).flatten(0, 1), top),
            batch.reference_CHW.repeat_interleave(K, dim=0),
            batch.mel_CKMW.flatten(0, 1),
        )
        parts = {}
        if self.discriminator is not None:
            # Real and generated frames in one pass: one DDP forward per backward.
            scores_X = self.d_net(torch.cat([target_XHW, drawn_XHW.detach()]))
            real, fake = scores_X.chunk(2)
            loss_d, _ = discriminator_loss([real], [fake])
            self.optim_d.zero_grad(set_to_none=True)
            loss_d.backward()
            self.optim_d.step()
            parts.update(loss_d=loss_d.detach(), d_real=real.detach().mean())

        l1 = (drawn_XHW[:, top:] - target_XHW[:, top:]).abs().mean()
        expert = self.expert.network
        video_C1E = expert.embed_video(drawn_XHW.unflatten(0, (C, K)))[:, None]
        audio_CPE = expert.embed_audio(batch.sync_mel_CPMW.flatten(0, 1)).unflatten(0, (C, -1))
        sync, sync_parts = sync_loss(video_C1E, audio_CPE, expert.scale)
        weight = cfg.sync_weight if self.progress.step >= cfg.sync_after else 0.0
        loss = l1 + weight * sync
        parts.update(l1=l1.detach(), sync=sync.detach(), sync_acc=sync_parts["acc"])
        if self.discriminator is not None:
            self.discriminator.requires_grad_(False)
            try:
                adversarial = ((self.discriminator(drawn_XHW) - 1) ** 2).mean()
            finally:
                self.discriminator.requires_grad_(True)
            loss = loss + cfg.gan_weight * adversarial
            parts["gan"] = adversarial.detach()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        self.optimizer.step()
        losses = {"loss": float(loss.detach()), **{k: float(v) for k, v in parts.items()}}
        losses["grad_norm"] = float(grad_norm)
        return Step(losses, len(batch), len(batch) * WINDOW_FRAMES)

    def _validation_clips(self) -> list[Utterance]:
        if self.val_clips is None:
            kept = [
                utt
                for batch in self.val_shard.iter_batches(batch_size=32, batch_format="numpy")
                for utt in utterances(batch)
                if utt.n_frames >= min_frames(self.cfg.sync_shift)
            ]
            self.val_clips = sorted(kept, key=lambda u: u.id)[: self.cfg.n_val]
        return self.val_clips

    def validate(self, step: int, template: LipBatch) -> dict[str, float]:
        clips = self._validation_clips() if self.val_shard is not None else []
        if not clips:
            return {}
        self.model.eval()
        try:
            metrics, drawn_THW = validate_clips(self.model, self.expert, clips)
        finally:
            self.model.train()
        if self.log is not None:
            # Every 10th frame of the first clip: real above, re-drawn to its own audio below.
            pairs_THW = np.concatenate([clips[0].roi_THW[::10], drawn_THW[::10]], axis=1)
            self.log.image(step, f"val_frames/{clips[0].id}", np.concatenate(pairs_THW, axis=1))
        return metrics

    def save(self, folder: Path, metrics: dict, rank: int) -> bool:
        if rank != 0:
            return False
        configs = {
            "train_config": self.cfg.to_dict(),
            "model_config": self.cfg.model_config.to_dict(),
            "progress": asdict(self.progress),
            "dataset": self.dataset_metadata,
            "sync_expert": self.expert.checkpoint,
        }
        weights = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        torch.save({"model": weights, **configs}, folder / LIPSYNC_FILE)
        state = {"optimizer": self.optimizer.state_dict()}
        if self.discriminator is not None:
            state.update(
                discriminator=self.discriminator.state_dict(), optim_d=self.optim_d.state_dict()
            )
        torch.save(state, folder / TRAIN_STATE_FILE)
        (folder / CONFIG_FILE).write_text(json.dumps({**configs, "metrics": metrics}, indent=2))
        return True

    def summary_line(self, metrics: dict) -> str:
        return summary_line(metrics)


def _adamw(module: torch.nn.Module, cfg: LipSyncTrainConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(module.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def validate_clips(
    generator: LipGenerator, expert: SyncExpert, clips: list[Utterance]
) -> tuple[dict[str, float], np.ndarray]:
    """Mean L1 (masked region) and expert confidence of each clip re-drawn to its own audio, the
    real clip's confidence, and the confidence and |offset| of each clip re-drawn to the next
    clip's audio; and the first clip re-drawn to its own audio."""
    top = generator.cfg.mask_top
    l1, conf, conf_real, conf_cross, offset_cross, drawn = [], [], [], [], [], []
    for n, utt in enumerate(clips):
        drawn_THW = redraw(generator, utt.roi_THW, utt.mel_MF)
        drawn.append(drawn_THW)
        error_THW = drawn_THW[:, top:].astype(np.float32) - utt.roi_THW[:, top:]
        l1.append(float(np.abs(error_THW).mean() / 255.0))
        conf.append(expert.score(drawn_THW, utt.mel_MF).confidence)
        conf_real.append(expert.score(utt.roi_THW, utt.mel_MF).confidence)
        driver = clips[(n + 1) % len(clips)]
        crossed = expert.score(redraw(generator, utt.roi_THW, driver.mel_MF), driver.mel_MF)
        conf_cross.append(crossed.confidence)
        offset_cross.append(abs(crossed.offset))
    metrics = {
        "val/l1": float(np.mean(l1)),
        "val/sync_conf": float(np.mean(conf)),
        "val/sync_conf_real": float(np.mean(conf_real)),
        "val/sync_conf_cross": float(np.mean(conf_cross)),
        "val/sync_offset_cross": float(np.mean(offset_cross)),
    }
    return metrics, drawn[0]
