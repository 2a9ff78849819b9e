"""The training loop every Ray Train worker runs: build, resume, then step (nanoGPT's shape).

`train_loop` is the `train_loop_per_worker` of `l2s.train.train`. Workers stay in lockstep: each
step starts with a tiny all-reduce of flags (a worker's epoch ran out, the time budget is spent),
so that all of them take the same branch; reports happen on every rank at the same steps.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from l2s.infer.checkpoint import read_model
from l2s.infer.speakers import SpeakerTable
from l2s.models.lip2speech import Lip2Speech, count_parameters
from l2s.models.losses import lip2speech_loss
from l2s.train import checkpoint as ckpt
from l2s.train.config import TrainConfig
from l2s.train.data import Batch, DatasetError, train_batches, val_batches, val_clips
from l2s.train.logs import RunLog
from l2s.train.validation import validate


def learning_rate(step: int, cfg: TrainConfig, time_fraction: float = 0.0) -> float:
    """Linear warm-up over `warmup_steps`, then a cosine from `lr` down to `lr * min_lr_ratio` that
    ends with the budget: the last step, or the time budget when `time_fraction` of it is ahead."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / (cfg.warmup_steps + 1)
    decay_steps = max(1, cfg.steps - 1 - cfg.warmup_steps)
    progress = min(1.0, max((step - cfg.warmup_steps) / decay_steps, time_fraction))
    min_lr = cfg.lr * cfg.min_lr_ratio
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - min_lr)


def sync_flags(flags: list[bool], device: torch.device) -> list[bool]:
    """True where any rank said True, so that every rank takes the same branch."""
    flags_K = torch.tensor(flags, dtype=torch.int32, device=device)
    dist.all_reduce(flags_K, op=dist.ReduceOp.MAX)
    return [bool(f) for f in flags_K.tolist()]


@dataclass
class Interval:
    """Sums over the steps since the last report, averaged over all ranks at the report."""

    sums: dict[str, float] = field(default_factory=dict)
    steps: int = 0
    samples: int = 0
    frames: int = 0
    seconds: float = 0.0  # time in steps (data wait included), not in validation or checkpoints

    def add(self, losses: dict[str, float], samples: int, frames: int, seconds: float) -> None:
        for name, value in losses.items():
            self.sums[name] = self.sums.get(name, 0.0) + value
        self.steps += 1
        self.samples += samples
        self.frames += frames
        self.seconds += seconds

    def reduce(self, device: torch.device) -> tuple[dict[str, float], int]:
        """Mean losses and throughput over all ranks, and the number of clips they trained on."""
        names = sorted(self.sums)
        totals_K = torch.tensor(
            [self.sums[n] for n in names] + [self.steps, self.samples, self.frames],
            dtype=torch.float64,
            device=device,
        )
        dist.all_reduce(totals_K)
        # Throughput is bounded by the slowest rank, so its time is the one that counts.
        seconds = torch.tensor([self.seconds], dtype=torch.float64, device=device)
        dist.all_reduce(seconds, op=dist.ReduceOp.MAX)
        *sums, steps, samples, frames = totals_K.tolist()
        seconds_ = max(float(seconds), 1e-9)
        # `ctc` is summed only over steps whose batch had a transcript: its mean is a lower bound.
        metrics = {f"train/{n}": s / max(steps, 1) for n, s in zip(names, sums, strict=True)}
        metrics["train/steps_per_s"] = self.steps / seconds_
        metrics["train/samples_per_s"] = samples / seconds_
        metrics["train/frames_per_s"] = frames / seconds_
        return metrics, int(samples)


@dataclass
class Worker:
    """What stays fixed for one rank during one attempt."""

    cfg: TrainConfig
    rank: int
    world: int
    device: torch.device
    dtype: torch.dtype  # of the inputs: the model's parameter dtype
    autocast: contextlib.AbstractContextManager
    net: Any  # what steps: the DDP-wrapped model or the DeepSpeed engine
    module: torch.nn.Module  # the bare Lip2Speech inside it
    optimizer: torch.optim.Optimizer
    speakers: SpeakerTable
    dataset_metadata: dict
    audio_ids: set[str]
    log: RunLog | None  # rank 0 only
    resumed_from: int

    @property
    def deepspeed(self) -> bool:
        return self.cfg.strategy == "deepspeed"


def train_loop(config: dict) -> None:
    # ---- build ------------------------------------------------------------------------------
    cfg = TrainConfig.from_dict(config["train"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(config["threads"])
    use_deepspeed = cfg.strategy == "deepspeed"
    # DeepSpeed holds bf16 weights and takes bf16 inputs; DDP keeps fp32 weights under autocast.
    dtype = torch.bfloat16 if use_deepspeed and cfg.bf16 else torch.float32
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if cfg.bf16 and not use_deepspeed
        else contextlib.nullcontext()
    )
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    model = Lip2Speech(cfg.model_config)
    model.set_mel_stats(
        *(torch.tensor(v) for v in config["mel_stats"])
    )  # a resume restores its own

    # ---- resume: weights before wrapping, optimizer state after ---------------------------------
    progress = ckpt.Progress(world_size=world, strategy=cfg.strategy)
    restored = ray.train.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as folder:
            saved = read_model(folder)
        _check_resumable(saved, cfg, rank)
        model.load_state_dict(saved["model"])
        progress = ckpt.Progress(**saved["progress"])
    # Optimizer moments only carry over to the same layout: ZeRO partitions them by world size.
    same_layout = restored is not None and (progress.strategy, progress.world_size) == (
        cfg.strategy,
        world,
    )
    if rank == 0:
        print(
            f"[l2s.train] {count_parameters(model):,} parameters, {world} worker(s) on {device.type}"
        )
        if restored is not None and not same_layout:
            print(
                f"[l2s.train] resuming a {progress.strategy} run on {progress.world_size} workers "
                f"with {cfg.strategy} on {world}: weights restored, optimizer moments start afresh"
            )

    if use_deepspeed:
        from l2s.train import deepspeed as ds

        optimizer = _adamw(model, cfg, device)
        net = ds.initialize(model, optimizer, cfg, world)
        module = net.module
        if same_layout:
            with restored.as_directory() as folder:
                net.load_checkpoint(
                    str(Path(folder) / ckpt.DEEPSPEED_DIR),
                    tag=ckpt.DEEPSPEED_TAG,
                    load_lr_scheduler_states=False,
                )
    else:
        net = ray.train.torch.prepare_model(model)  # to the device; DDP when world > 1
        module = model
        optimizer = _adamw(model, cfg, device)
        if same_layout:
            with restored.as_directory() as folder:
                state = torch.load(
                    Path(folder) / ckpt.TRAIN_STATE_FILE, map_location=device, weights_only=True
                )
            optimizer.load_state_dict(state)
    progress.world_size, progress.strategy = world, cfg.strategy

    w = Worker(
        cfg=cfg,
        rank=rank,
        world=world,
        device=device,
        dtype=dtype,
        autocast=autocast,
        net=net,
        module=module,
        optimizer=optimizer,
        speakers=SpeakerTable.from_dict(config["speakers"]),
        dataset_metadata=config["dataset_metadata"],
        audio_ids=set(config["audio_ids"]),
        log=RunLog(cfg.out, progress.step) if rank == 0 else None,
        resumed_from=progress.step,
    )

    # ---- data -------------------------------------------------------------------------------
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val") if config["val_ids"] else None
    my_val_ids = set(config["val_ids"][rank::world])
    val_set: list[Batch] | None = None  # read at the first validation, then kept

    def epoch_batches():
        # A fresh shuffle per epoch and rank, reproducible from the seed.
        rng = np.random.default_rng([cfg.seed, rank, progress.epoch])
        return iter(train_batches(train_shard, cfg, config["bank"], rng))

    def validation_set() -> list[Batch] | None:
        nonlocal val_set
        if val_shard is not None and val_set is None:
            val_set = val_batches(val_clips(val_shard, cfg, my_val_ids), w.speakers, cfg.batch_size)
        return val_set

    # ---- train ------------------------------------------------------------------------------
    batches, batches_this_epoch = epoch_batches(), 0
    seconds_before, attempt_start = progress.train_seconds, time.perf_counter()
    saved_step = progress.step
    last_batch: Batch | None = None
    interval = Interval()
    out_of_time = False
    while progress.step < cfg.steps:
        step_start = time.perf_counter()
        batch = next(batches, None)
        elapsed = seconds_before + step_start - attempt_start
        out_of_data, out_of_time, empty_epoch = sync_flags(
            [
                batch is None,
                elapsed >= cfg.time_budget_s,
                batch is None and batches_this_epoch == 0,
            ],
            device,
        )
        if empty_epoch:
            raise DatasetError(
                f"a worker got no batch in a whole epoch: fewer train clips than {world} workers?"
            )
        if out_of_time:
            break
        if out_of_data:
            # Some worker's shard ran out: all move to the next epoch together. The others drain
            # theirs first, because Ray Data starts an epoch only when every shard has finished one.
            for _ in batches:
                pass
            progress.epoch += 1
            batches, batches_this_epoch = epoch_batches(), 0
            continue
        batches_this_epoch += 1
        last_batch = batch

        lr = learning_rate(progress.step, cfg, elapsed / cfg.time_budget_s)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = batch.to(device, dtype)
        with autocast:
            output = net(batch.video_BTHW, batch.lengths_B, batch.speaker_BD)
        loss, parts = lip2speech_loss(
            output, batch.mel_BMF, batch.targets_BL, batch.target_lengths_B, cfg.loss
        )
        if "ctc" not in parts:
            # No transcript in this batch: the CTC head still joins the graph (zero gradient),
            # because DDP and ZeRO expect a gradient for every parameter on every rank.
            loss = loss + 0.0 * output.ctc_logits_BTV.sum()
        if use_deepspeed:
            net.backward(loss)
            net.step()
            grad_norm = net.get_global_grad_norm()
        else:
            loss.backward()
            clip = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        progress.step += 1
        losses = {"loss": float(loss), **{k: float(v) for k, v in parts.items()}}
        interval.add(
            losses, len(batch), int(batch.lengths_B.sum()), time.perf_counter() - step_start
        )

        if w.log is not None and progress.step % cfg.log_every == 0:
            grad = {} if grad_norm is None else {"grad_norm": float(grad_norm)}
            w.log.scalars(progress.step, {**losses, "lr": lr, **grad}, "train_step")
        last = progress.step == cfg.steps
        validate_now = progress.step % cfg.val_every == 0 or last
        save_now = progress.step % cfg.ckpt_every == 0 or last
        if validate_now or save_now:
            progress.train_seconds = seconds_before + time.perf_counter() - attempt_start
            val = validation_set() if validate_now else None
            report(w, progress, interval, val, last_batch, save_now, lr, "steps" if last else None)
            interval = Interval()
            saved_step = progress.step if save_now else saved_step

    # ---- the time budget ran out: validate and save where training stopped --------------------
    if out_of_time and progress.step > saved_step and last_batch is not None:
        progress.train_seconds = seconds_before + time.perf_counter() - attempt_start
        lr = learning_rate(progress.step, cfg, 1.0)
        report(w, progress, interval, validation_set(), last_batch, True, lr, "time budget")
    if w.log is not None:
        w.log.close()
        reason = "time budget" if out_of_time else "steps"
        print(f"[l2s.train] stopped at step {progress.step} ({reason})")


def _adamw(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    # No weight decay on biases and norm gains (nanoGPT's split): shrinking those only hurts.
    groups = [
        {
            "params": [p for p in model.parameters() if p.dim() >= 2],
            "weight_decay": cfg.weight_decay,
        },
        {"params": [p for p in model.parameters() if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98), fused=device.type == "cuda")


def _check_resumable(saved: dict, cfg: TrainConfig, rank: int) -> None:
    if saved["model_config"] != cfg.model_config.to_dict():
        raise ValueError(
            f"{cfg.out} holds a model of another shape ({saved['model_config']}): "
            "give another out, or the same model settings"
        )
    if rank == 0:
        before = saved["train_config"]
        changed = {k: (before.get(k), v) for k, v in cfg.to_dict().items() if before.get(k) != v}
        note = f"; settings changed since: {changed}" if changed else ""
        print(f"[l2s.train] resuming from step {saved['progress']['step']}{note}")


def report(
    w: Worker,
    progress: ckpt.Progress,
    interval: Interval,
    val_set: list[Batch] | None,
    template: Batch | None,
    save: bool,
    lr: float,
    stopped: str | None,
) -> None:
    """Validate (when `val_set` is given), checkpoint (when `save`), and report to Ray Train.

    Every rank calls this at the same steps: it holds collectives (metric sums, DeepSpeed's
    checkpoint and weight gathering), and Ray Train expects one report from every rank.
    """
    metrics: dict = {
        "step": progress.step,
        "epoch": progress.epoch,
        "lr": lr,
        "resumed_from": w.resumed_from,  # the step this attempt started at (0: a fresh run)
    }
    train_metrics, samples = interval.reduce(w.device)
    progress.samples += samples
    metrics.update(train_metrics)
    examples = []
    if val_set is not None and template is not None:
        val_metrics, examples = validate(
            w.module, val_set, w.audio_ids, w.device, w.dtype, w.autocast, template
        )
        metrics.update(val_metrics)
    metrics.update(samples=progress.samples, train_seconds=progress.train_seconds)
    if stopped:
        metrics["stopped"] = stopped

    folder = Path(tempfile.mkdtemp(prefix="l2s-checkpoint-")) if save else None
    try:
        if folder is not None:
            save_checkpoint(w, progress, metrics, folder)
        if w.log is not None:
            w.log.report_scalars(progress.step, metrics)
            for example in examples[:1]:
                w.log.mel(
                    progress.step, f"val_mel/{example.id}", example.predicted_MF, example.target_MF
                )
                w.log.audio(progress.step, f"val_audio/{example.id}/predicted", example.predicted_S)
                w.log.audio(progress.step, f"val_audio/{example.id}/target_gl", example.reference_S)
            w.log.record(metrics)
            print(f"[l2s.train] step {progress.step}  {summary_line(metrics)}", flush=True)
        # DDP: rank 0 holds everything. DeepSpeed: every rank holds its optimizer partition.
        writes = folder is not None and (w.rank == 0 or w.deepspeed)
        ray.train.report(
            metrics,
            checkpoint=ray.train.Checkpoint.from_directory(str(folder)) if writes else None,
            checkpoint_dir_name=ckpt.checkpoint_name(progress.step) if folder is not None else None,
        )
    finally:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


def save_checkpoint(w: Worker, progress: ckpt.Progress, metrics: dict, folder: Path) -> None:
    """This rank's part of a checkpoint, into a local folder (Ray Train merges the ranks' folders)."""
    if w.deepspeed:
        from l2s.train import deepspeed as ds

        w.net.save_checkpoint(str(folder / ckpt.DEEPSPEED_DIR), tag=ckpt.DEEPSPEED_TAG)
        state_dict = ds.full_state_dict(w.net)  # a collective: every rank takes part
    else:
        state_dict = {k: v.detach().cpu() for k, v in w.module.state_dict().items()}
        if w.rank == 0:
            torch.save(w.optimizer.state_dict(), folder / ckpt.TRAIN_STATE_FILE)
    if w.rank == 0:
        ckpt.write_model(
            folder, state_dict, w.cfg, w.speakers, progress, metrics, w.dataset_metadata
        )


def summary_line(metrics: dict) -> str:
    keys = ("train/loss", "train/steps_per_s", "val/post_l1", "val/stoi_gl", "val/estoi_gl")
    return "  ".join(f"{k} {metrics[k]:.4g}" for k in keys if k in metrics)
