"""The loop every vocoder training worker runs: build, resume, then step (HiFi-GAN's recipe).

A GAN step updates the discriminators on real and generated segments, then the generator on
LSGAN + feature matching + 45 × mel L1. Before `gan_after` steps the generator trains alone on
mel L1 + multi-resolution STFT loss (no discriminator forward at all: a step costs a fraction).
Workers stay in lockstep as in `l2s.train.loop` (flags all-reduced at each step); rank 0 validates
(PESQ-WB and STOI of a few val clips against their recordings) and writes checkpoints:

  vocoder.pt      the generator (fp32, weight norm as parametrizations) + its HiFiGANConfig, the
                  exact VocoderTrainConfig, the progress and the dataset's metadata: all inference
                  needs (`l2s.infer.vocoder.load_vocoder`)
  train_state.pt  the discriminators and both optimizers: what resuming needs beyond that
  config.json     the configs, progress and metrics as JSON

Letters in shape names: B batch, M mel bands, F mel frames, S samples.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import ray.train
import ray.train.torch
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
from l2s.train.checkpoint import TRAIN_STATE_FILE, Progress, checkpoint_name
from l2s.train.data import DatasetError
from l2s.train.logs import RunLog
from l2s.train.loop import Interval, sync_flags
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


@dataclass
class Worker:
    """What stays fixed for one rank during one attempt."""

    cfg: VocoderTrainConfig
    rank: int
    device: torch.device
    generator: Generator  # the bare modules (checkpoints, validation, the frozen-D pass) …
    discriminators: Discriminators
    g_net: nn.Module  # … and what steps: DDP-wrapped when world > 1
    d_net: nn.Module
    optim_g: torch.optim.Optimizer
    optim_d: torch.optim.Optimizer
    log: RunLog | None  # rank 0 only
    val_clips: list[dict]  # rank 0 only
    baseline: dict[str, float]  # Griffin-Lim's val scores
    dataset_metadata: dict
    resumed_from: int


def vocoder_loop(config: dict) -> None:
    # ---- build ------------------------------------------------------------------------------
    cfg = VocoderTrainConfig.from_dict(config["train"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(config["threads"])
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    generator = Generator(cfg.model_config)
    discriminators = Discriminators(cfg.model_config)

    # ---- resume -----------------------------------------------------------------------------
    progress = Progress(world_size=world)
    state = None
    restored = ray.train.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as folder:
            saved = read_model(folder, VOCODER_FILE)
            state = torch.load(
                Path(folder) / TRAIN_STATE_FILE, map_location="cpu", weights_only=True
            )
        if saved["model_config"] != cfg.model_config.to_dict():
            raise ValueError(
                f"{cfg.out} holds a vocoder of another shape ({saved['model_config']}): "
                "give another out, or the same preset"
            )
        generator.load_state_dict(saved["generator"])
        discriminators.load_state_dict(state["discriminators"])
        progress = Progress(**saved["progress"])
        if rank == 0:
            print(f"[l2s.vocoder] resuming from step {progress.step}")
    progress.world_size = world
    if rank == 0:
        print(
            f"[l2s.vocoder] generator {count_parameters(generator):,} parameters, discriminators "
            f"{count_parameters(discriminators):,}; {world} worker(s) on {device.type}"
        )
    g_net = ray.train.torch.prepare_model(generator)  # to the device; DDP when world > 1
    d_net = ray.train.torch.prepare_model(discriminators)
    optim_g = _adamw(generator, cfg)
    optim_d = _adamw(discriminators, cfg)
    if state is not None:
        optim_g.load_state_dict(state["optim_g"])
        optim_d.load_state_dict(state["optim_d"])
    w = Worker(
        cfg=cfg,
        rank=rank,
        device=device,
        generator=generator,
        discriminators=discriminators,
        g_net=g_net,
        d_net=d_net,
        optim_g=optim_g,
        optim_d=optim_d,
        log=RunLog(cfg.out, progress.step) if rank == 0 else None,
        val_clips=config["val_clips"] if rank == 0 else [],
        baseline=config["baseline"],
        dataset_metadata=config["dataset_metadata"],
        resumed_from=progress.step,
    )

    # ---- data -------------------------------------------------------------------------------
    shard = ray.train.get_dataset_shard("train")

    def epoch_batches():
        rng = np.random.default_rng([cfg.seed, rank, progress.epoch])
        return iter(segment_batches(shard, cfg.segment_frames, cfg.batch_size, rng))

    # ---- train ------------------------------------------------------------------------------
    batches, batches_this_epoch = epoch_batches(), 0
    seconds_before, attempt_start = progress.train_seconds, time.perf_counter()
    saved_step = progress.step
    interval = Interval()
    out_of_time = False
    lr = learning_rate(progress.step, cfg)
    while progress.step < cfg.steps:
        step_start = time.perf_counter()
        batch = next(batches, None)
        elapsed = seconds_before + step_start - attempt_start
        out_of_data, out_of_time, empty_epoch = sync_flags(
            [batch is None, elapsed >= cfg.time_budget_s, batch is None and not batches_this_epoch],
            device,
        )
        if empty_epoch:
            raise DatasetError(
                f"a worker got no batch in a whole epoch: fewer train segments than {world} "
                f"workers × batch size {cfg.batch_size}?"
            )
        if out_of_time:
            break
        if out_of_data:
            for _ in batches:  # Ray Data starts an epoch only when every shard has finished one
                pass
            progress.epoch += 1
            batches, batches_this_epoch = epoch_batches(), 0
            continue
        batches_this_epoch += 1

        lr = learning_rate(progress.step, cfg, elapsed / cfg.time_budget_s)
        for group in (*optim_g.param_groups, *optim_d.param_groups):
            group["lr"] = lr
        losses = gan_step(w, batch.to(device), progress.step)
        progress.step += 1
        interval.add(
            losses, len(batch), int(batch.mel_BMF.numel() // batch.mel_BMF.shape[1]),
            time.perf_counter() - step_start,
        )  # fmt: skip
        if w.log is not None and progress.step % cfg.log_every == 0:
            w.log.scalars(progress.step, {**losses, "lr": lr}, "train_step")
        last = progress.step == cfg.steps
        validate_now = progress.step % cfg.val_every == 0 or last
        save_now = progress.step % cfg.ckpt_every == 0 or last
        if validate_now or save_now:
            progress.train_seconds = seconds_before + time.perf_counter() - attempt_start
            report(w, progress, interval, lr, validate_now, save_now, "steps" if last else None)
            interval = Interval()
            saved_step = progress.step if save_now else saved_step

    # ---- the time budget ran out: validate and save where training stopped --------------------
    if out_of_time and progress.step > saved_step:
        progress.train_seconds = seconds_before + time.perf_counter() - attempt_start
        report(w, progress, interval, lr, True, True, "time budget")
    if w.log is not None:
        w.log.close()
        print(
            f"[l2s.vocoder] stopped at step {progress.step} ({'time budget' if out_of_time else 'steps'})"
        )


def _adamw(module: nn.Module, cfg: VocoderTrainConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(
        module.parameters(), lr=cfg.lr, betas=(0.8, 0.99), weight_decay=cfg.weight_decay
    )


def gan_step(w: Worker, batch: SegmentBatch, step: int) -> dict[str, float]:
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
def validate(w: Worker, step: int) -> dict[str, float]:
    """Rank 0: PESQ-WB and STOI of the generator on the val clips' ground-truth mels against their
    recordings, beside Griffin-Lim's on the same mels (`w.baseline`, scored once by the driver)."""
    if not w.val_clips:
        return {}
    generator = w.generator
    was_training = generator.training
    generator.eval()

    def vocode(mel_MF: np.ndarray) -> np.ndarray:
        return generator(torch.from_numpy(mel_MF)[None].to(w.device))[0].float().cpu().numpy()

    scores = score_clips(vocode, w.val_clips)
    if w.log is not None:
        clip = w.val_clips[0]
        w.log.audio(step, f"val_audio/{clip['id']}/hifigan", vocode(clip["mel_MF"]))
    generator.train(was_training)
    return {**{f"val/{k}": v for k, v in scores.items()}, **w.baseline}


def report(
    w: Worker,
    progress: Progress,
    interval: Interval,
    lr: float,
    validate_now: bool,
    save: bool,
    stopped: str | None,
) -> None:
    """Validate (rank 0), checkpoint (when `save`; rank 0 writes it) and report to Ray Train.

    Every rank calls this at the same steps: the metric sums are a collective, and Ray Train
    expects one report from every rank."""
    train_metrics, samples = interval.reduce(w.device)
    progress.samples += samples
    metrics = {
        "step": progress.step,
        "epoch": progress.epoch,
        "lr": lr,
        "phase": "gan" if progress.step > w.cfg.gan_after else "warm-up",
        "resumed_from": w.resumed_from,  # the step this attempt started at (0: a fresh run)
        **train_metrics,
        "samples": progress.samples,
        "train_seconds": progress.train_seconds,
    }
    if validate_now:
        metrics.update(validate(w, progress.step))
    if stopped:
        metrics["stopped"] = stopped
    folder = Path(tempfile.mkdtemp(prefix="l2s-vocoder-")) if save and w.rank == 0 else None
    try:
        if folder is not None:
            save_checkpoint(w, progress, metrics, folder)
        if w.log is not None:
            w.log.report_scalars(progress.step, metrics)
            w.log.record(metrics)
            print(f"[l2s.vocoder] step {progress.step}  {summary_line(metrics)}", flush=True)
        ray.train.report(
            metrics,
            checkpoint=ray.train.Checkpoint.from_directory(str(folder)) if folder else None,
            checkpoint_dir_name=checkpoint_name(progress.step) if save else None,
        )
    finally:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


def save_checkpoint(w: Worker, progress: Progress, metrics: dict, folder: Path) -> None:
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
