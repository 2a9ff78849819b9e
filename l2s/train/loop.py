"""The one training loop every l2s model runs (nanoGPT's shape: build, then step), on any session.

A model brings a `Task` (torchtitan's TrainSpec): how it builds itself on a worker (resuming from a
checkpoint), its batches of one epoch, one optimizer step, validation and its part of a checkpoint.
`fit(task, session)` does the rest, the same for every model: epochs, the learning rate, the step
and time budgets, validation and checkpoint cadence, throughput, logs and reports.

Workers stay in lockstep: each step starts with a tiny all-reduce of flags (a worker's epoch ran
out, the time budget is spent), so that all of them take the same branch; reports happen on every
rank at the same steps. `ray_worker` is the `train_loop_per_worker` of every TorchTrainer l2s builds.
"""

from __future__ import annotations

import abc
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from l2s.train import checkpoint as ckpt
from l2s.train.data import DatasetError
from l2s.train.logs import RunLog
from l2s.train.session import RaySession, Session


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
        # A loss a step may lack (CTC without transcripts) is a mean over all steps: a lower bound.
        metrics = {f"train/{n}": s / max(steps, 1) for n, s in zip(names, sums, strict=True)}
        metrics["train/steps_per_s"] = self.steps / seconds_
        metrics["train/samples_per_s"] = samples / seconds_
        metrics["train/frames_per_s"] = frames / seconds_
        return metrics, int(samples)


@dataclass(frozen=True)
class Step:
    """What one optimizer step did: its losses, and how much data it saw."""

    losses: dict[str, float]
    samples: int
    frames: int


class Task(abc.ABC):
    """The per-model part of training. A subclass is built on each worker from the driver's loop
    config and the session (resuming its weights and optimizer state from `session.restored()`),
    and sets `cfg` (a `RunBase` config with the budget and cadence fields), `progress`, `log`."""

    name: str  # log prefix, e.g. "l2s.train"
    checkpoint_file: str  # the file a complete checkpoint of this model holds
    cfg: object
    progress: ckpt.Progress
    log: RunLog | None  # rank 0 only
    resumed_from: int

    @abc.abstractmethod
    def batches(self, epoch: int) -> Iterator:
        """This rank's batches of one epoch (a seeded, reproducible order)."""

    @abc.abstractmethod
    def learning_rate(self, step: int, time_fraction: float) -> float:
        """The schedule; `time_fraction` is the part of the time budget already spent."""

    @abc.abstractmethod
    def step(self, batch, lr: float) -> Step:
        """One optimizer step on `batch` at learning rate `lr`."""

    @abc.abstractmethod
    def validate(self, step: int, template) -> dict[str, float]:
        """Validation metrics (`val/…`), called on every rank at once; `template` is a recent
        training batch (for ranks with fewer val batches than others)."""

    @abc.abstractmethod
    def save(self, folder: Path, metrics: dict, rank: int) -> bool:
        """This rank's part of a checkpoint into a local folder; whether it wrote anything."""

    def extra_metrics(self) -> dict:
        """Anything else a report of this model carries."""
        return {}

    @abc.abstractmethod
    def summary_line(self, metrics: dict) -> str:
        """The few numbers printed at each report."""


def fit(task: Task, session: Session) -> None:
    """Train `task` until its step budget or time budget is spent, reporting to `session`."""
    cfg, progress = task.cfg, task.progress
    device, world = session.device, session.world
    batches, batches_this_epoch = iter(task.batches(progress.epoch)), 0
    seconds_before, attempt_start = progress.train_seconds, time.perf_counter()
    saved_step = progress.step
    last_batch = None
    interval = Interval()
    out_of_time = False
    lr = task.learning_rate(progress.step, 0.0)
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
                f"a worker got no batch in a whole epoch: fewer train clips than {world} workers "
                f"× batch size {cfg.batch_size}?"
            )
        if out_of_time:
            break
        if out_of_data:
            # Some worker's shard ran out: all move to the next epoch together. The others drain
            # theirs first, because Ray Data starts an epoch only when every shard has finished one.
            for _ in batches:
                pass
            progress.epoch += 1
            batches, batches_this_epoch = iter(task.batches(progress.epoch)), 0
            continue
        batches_this_epoch += 1
        last_batch = batch

        lr = task.learning_rate(progress.step, elapsed / cfg.time_budget_s)
        done = task.step(batch, lr)
        progress.step += 1
        interval.add(done.losses, done.samples, done.frames, time.perf_counter() - step_start)
        if task.log is not None and progress.step % cfg.log_every == 0:
            task.log.scalars(progress.step, {**done.losses, "lr": lr}, "train_step")
        last = progress.step == cfg.steps
        validate_now = progress.step % cfg.val_every == 0 or last
        save_now = progress.step % cfg.ckpt_every == 0 or last
        if validate_now or save_now:
            progress.train_seconds = seconds_before + time.perf_counter() - attempt_start
            stopped = "steps" if last else None
            report(task, session, interval, lr, validate_now, last_batch, save_now, stopped)
            interval = Interval()
            saved_step = progress.step if save_now else saved_step

    # ---- the time budget ran out: validate and save where training stopped --------------------
    if out_of_time and progress.step > saved_step and last_batch is not None:
        progress.train_seconds = seconds_before + time.perf_counter() - attempt_start
        lr = task.learning_rate(progress.step, 1.0)
        report(task, session, interval, lr, True, last_batch, True, "time budget")
    if task.log is not None:
        task.log.close()
        reason = "time budget" if out_of_time else "steps"
        print(f"[{task.name}] stopped at step {progress.step} ({reason})", flush=True)


def report(
    task: Task,
    session: Session,
    interval: Interval,
    lr: float,
    validate: bool,
    template,
    save: bool,
    stopped: str | None,
) -> None:
    """Validate, checkpoint (when `save`), and report to the session.

    Every rank calls this at the same steps: it holds collectives (metric sums, validation,
    DeepSpeed's checkpoint), and Ray Train expects one report from every rank.
    """
    progress = task.progress
    train_metrics, samples = interval.reduce(session.device)
    progress.samples += samples
    metrics: dict = {
        "step": progress.step,
        "epoch": progress.epoch,
        "lr": lr,
        "resumed_from": task.resumed_from,  # the step this attempt started at (0: a fresh run)
        **task.extra_metrics(),
        **train_metrics,
    }
    if validate and template is not None:
        metrics.update(task.validate(progress.step, template))
    metrics.update(samples=progress.samples, train_seconds=progress.train_seconds)
    if stopped:
        metrics["stopped"] = stopped

    folder = Path(tempfile.mkdtemp(prefix="l2s-checkpoint-")) if save else None
    try:
        wrote = folder is not None and task.save(folder, metrics, session.rank)
        if task.log is not None:
            task.log.report_scalars(progress.step, metrics)
            task.log.record(metrics)
            print(f"[{task.name}] step {progress.step}  {task.summary_line(metrics)}", flush=True)
        name = ckpt.checkpoint_name(progress.step) if save else None
        session.report(metrics, folder if wrote else None, name)
    finally:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


def ray_worker(config: dict) -> None:
    """The `train_loop_per_worker` of every TorchTrainer l2s builds: `config["task"]` names the
    model's Task (l2s.train.tasks.TASKS), the rest is that task's loop config."""
    from l2s.train.tasks import TASKS

    session = RaySession()
    fit(TASKS[config["task"]](config, session), session)
