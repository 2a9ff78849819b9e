"""The HiFi-GAN vocoder's part of training (HiFi-GAN's recipe), run by the one loop (`loop.fit`).

A GAN step updates the discriminators on real and generated segments, then the generator on
LSGAN + feature matching + 45 × mel L1. Before `gan_after` steps the generator trains alone on
mel L1 + multi-resolution STFT loss (no discriminator forward at all: a step costs a fraction).
Rank 0 validates (PESQ-WB and STOI of a few val clips against their recordings) and writes
checkpoints:

  vocoder.pt      the generator (fp32, weight norm as parametrizations) + its HiFiGANConfig, the
                  exact VocoderTrainConfig, the progress and the dataset's metadata: all inference
                  needs (`l2s.infer.vocoder.load_vocoder`)
  train_state.pt  the discriminators and both optimizers: what resuming needs beyond that
  config.json     the configs, progress and metrics as JSON

Letters in shape names: B batch, M mel bands, F mel frames, S samples.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from l2s.audio import log_mel
from l2s.evaluate.metrics import MetricUnavailable, pesq_wb, stoi
from l2s.infer.checkpoint import CONFIG_FILE, VOCODER_FILE, read_model
from l2s.models.hifigan import (
    Discriminators,
    Generator,
    count_parameters,
    discriminator_loss,
    generator_loss,
)
from l2s.train.checkpoint import TRAIN_STATE_FILE, Progress
from l2s.train.logs import RunLog
from l2s.train.loop import Step, Task
from l2s.train.session import Session
from l2s.train.vocoder import VocoderTrainConfig, learning_rate, summary_line
from l2s.train.vocoder_data import SegmentBatch, segment_batches


def score_clips(vocode: Callable[[np.ndarray], np.ndarray], clips: list[dict]) -> dict[str, float]:
    """Mean mel L1 (THE log-mel of `vocode(mel_MF)` against `mel_MF`), PESQ-WB and STOI (against
    each clip's recording, `wav_S`) over the clips. A clip whose PESQ or STOI is undefined (too
    little speech) is counted in `skipped` and left out of those two means."""
    mel_l1, pesq, intelligibility, skipped = [], [], [], 0
    for clip in clips:
        wav_S = vocode(clip["mel_MF"])
        mel_l1.append(float(np.abs(log_mel(wav_S) - clip["mel_MF"]).mean()))
        try:
            scores = pesq_wb(clip["wav_S"], wav_S), stoi(clip["wav_S"], wav_S)
        except MetricUnavailable:
            skipped += 1
            continue
        pesq.append(scores[0])
        intelligibility.append(scores[1])
    means = {"mel_l1": float(np.mean(mel_l1))} if mel_l1 else {}
    if pesq:
        means.update(pesq_wb=float(np.mean(pesq)), stoi=float(np.mean(intelligibility)))
    return {**means, "skipped": skipped}


class VocoderTask(Task):
    name = "l2s.vocoder"
    checkpoint_file = VOCODER_FILE

    def __init__(self, config: dict, session: Session) -> None:
        cfg = self.cfg = VocoderTrainConfig.from_dict(config["train"])
        self.session = session
        rank, world, device = session.rank, session.world, session.device
        if device.type == "cpu":
            torch.set_num_threads(config["threads"])
        else:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        self.generator = Generator(cfg.model_config)
        self.discriminators = Discriminators(cfg.model_config)

        # ---- resume -------------------------------------------------------------------------------
        progress = Progress(world_size=world)
        state = None
        with session.restored() as folder:
            if folder is not None:
                saved = read_model(folder, VOCODER_FILE)
                state = torch.load(folder / TRAIN_STATE_FILE, map_location="cpu", weights_only=True)
                if saved["model_config"] != cfg.model_config.to_dict():
                    raise ValueError(
                        f"{cfg.out} holds a vocoder of another shape ({saved['model_config']}): "
                        "give another out, or the same preset"
                    )
                self.generator.load_state_dict(saved["generator"])
                self.discriminators.load_state_dict(state["discriminators"])
                progress = Progress(**saved["progress"])
                if rank == 0:
                    print(f"[l2s.vocoder] resuming from step {progress.step}")
        progress.world_size = world
        if rank == 0:
            print(
                f"[l2s.vocoder] generator {count_parameters(self.generator):,} parameters, "
                f"discriminators {count_parameters(self.discriminators):,}; {world} worker(s) on "
                f"{device.type}"
            )
        # What steps: DDP-wrapped when world > 1; the bare modules serve checkpoints, validation
        # and the frozen-discriminator pass.
        self.g_net = session.prepare(self.generator)
        self.d_net = session.prepare(self.discriminators)
        self.optim_g = _adamw(self.generator, cfg)
        self.optim_d = _adamw(self.discriminators, cfg)
        if state is not None:
            self.optim_g.load_state_dict(state["optim_g"])
            self.optim_d.load_state_dict(state["optim_d"])
        self.progress = progress
        self.resumed_from = progress.step
        self.log = RunLog(cfg.out, progress.step) if rank == 0 else None
        self.val_clips = config["val_clips"] if rank == 0 else []
        self.baseline = config["baseline"]  # Griffin-Lim's val scores
        self.dataset_metadata = config["dataset_metadata"]
        self.shard = session.shard("train")

    def batches(self, epoch: int) -> Iterator[SegmentBatch]:
        rng = np.random.default_rng([self.cfg.seed, self.session.rank, epoch])
        return segment_batches(self.shard, self.cfg.segment_frames, self.cfg.batch_size, rng)

    def learning_rate(self, step: int, time_fraction: float) -> float:
        return learning_rate(step, self.cfg, time_fraction)

    def step(self, batch: SegmentBatch, lr: float) -> Step:
        for group in (*self.optim_g.param_groups, *self.optim_d.param_groups):
            group["lr"] = lr
        losses = gan_step(self, batch.to(self.session.device), self.progress.step)
        frames = int(batch.mel_BMF.numel() // batch.mel_BMF.shape[1])
        return Step(losses, len(batch), frames)

    def extra_metrics(self) -> dict:
        return {"phase": "gan" if self.progress.step > self.cfg.gan_after else "warm-up"}

    def validate(self, step: int, template: SegmentBatch) -> dict[str, float]:
        return validate(self, step)

    def save(self, folder: Path, metrics: dict, rank: int) -> bool:
        if rank == 0:
            save_checkpoint(self, self.progress, metrics, folder)
        return rank == 0

    def summary_line(self, metrics: dict) -> str:
        return summary_line(metrics)


def _adamw(module: nn.Module, cfg: VocoderTrainConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(
        module.parameters(), lr=cfg.lr, betas=(0.8, 0.99), weight_decay=cfg.weight_decay
    )


def gan_step(w: VocoderTask, batch: SegmentBatch, step: int) -> dict[str, float]:
    """One optimizer step: the discriminators' (GAN phase only), then the generator's."""
    cfg, g_net, d_net, optim_g, optim_d = w.cfg, w.g_net, w.d_net, w.optim_g, w.optim_d
    discriminators = w.discriminators
    fake_BS = g_net(batch.mel_BMF)
    if step < cfg.gan_after:
        loss_g, parts = generator_loss(
            fake_BS, batch.wav_BS, None, cfg.mel_weight, cfg.warmup_stft_weight
        )
        optim_g.zero_grad(set_to_none=True)
        loss_g.backward()
        optim_g.step()
        return {"loss_g": float(loss_g.detach()), **{k: float(v) for k, v in parts.items()}}

    # Real and generated segments in one pass: one DDP forward per backward.
    n = len(batch)
    scores, features = d_net(torch.cat([batch.wav_BS, fake_BS.detach()]))
    real_features = [[f[:n].detach() for f in maps] for maps in features]
    loss_d, parts_d = discriminator_loss([s[:n] for s in scores], [s[n:] for s in scores])
    optim_d.zero_grad(set_to_none=True)
    loss_d.backward()
    optim_d.step()

    # The generator's pass goes through the bare discriminators with their weights frozen: no
    # weight gradients to compute, and DDP (which synchronises only passes through its wrapper)
    # stays out of it. The real feature maps are those of the discriminator pass above (taken
    # before its update, detached): the paper recomputes them, at the cost of another forward.
    discriminators.requires_grad_(False)
    try:
        fake_scores, fake_features = discriminators(fake_BS)
        loss_g, parts = generator_loss(
            fake_BS,
            batch.wav_BS,
            (fake_scores, real_features, fake_features),
            cfg.mel_weight,
            cfg.stft_weight,
        )
        optim_g.zero_grad(set_to_none=True)
        loss_g.backward()
    finally:
        discriminators.requires_grad_(True)
    optim_g.step()
    return {
        "loss_g": float(loss_g.detach()),
        "loss_d": float(loss_d.detach()),
        **{k: float(v) for k, v in {**parts, **parts_d}.items()},
    }


@torch.no_grad()
def validate(w: VocoderTask, step: int) -> dict[str, float]:
    """Rank 0: PESQ-WB and STOI of the generator on the val clips' ground-truth mels against their
    recordings, beside Griffin-Lim's on the same mels (`w.baseline`, scored once by the driver)."""
    if not w.val_clips:
        return {}
    generator = w.generator
    was_training = generator.training
    generator.eval()
    device = w.session.device

    def vocode(mel_MF: np.ndarray) -> np.ndarray:
        return generator(torch.from_numpy(mel_MF)[None].to(device))[0].float().cpu().numpy()

    scores = score_clips(vocode, w.val_clips)
    if w.log is not None:
        clip = w.val_clips[0]
        w.log.audio(step, f"val_audio/{clip['id']}/hifigan", vocode(clip["mel_MF"]))
    generator.train(was_training)
    return {**{f"val/{k}": v for k, v in scores.items()}, **w.baseline}


def save_checkpoint(w: VocoderTask, progress: Progress, metrics: dict, folder: Path) -> None:
    """vocoder.pt, train_state.pt and config.json into a local folder (rank 0)."""
    configs = {
        "train_config": w.cfg.to_dict(),
        "model_config": w.cfg.model_config.to_dict(),
        "progress": asdict(progress),
        "dataset": w.dataset_metadata,
    }
    generator_state = {k: v.detach().cpu() for k, v in w.generator.state_dict().items()}
    torch.save({"generator": generator_state, **configs}, folder / VOCODER_FILE)
    torch.save(
        {
            "discriminators": w.discriminators.state_dict(),
            "optim_g": w.optim_g.state_dict(),
            "optim_d": w.optim_d.state_dict(),
        },
        folder / TRAIN_STATE_FILE,
    )
    (folder / CONFIG_FILE).write_text(json.dumps({**configs, "metrics": metrics}, indent=2))
