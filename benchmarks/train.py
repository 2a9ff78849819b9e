"""Training throughput, memory and model FLOP utilisation on Ray Train.

    python benchmarks/train.py                       # CPU: tiny preset; the plain loop vs Ray Train
    python benchmarks/train.py --gpu --preset base   # GPU: DeepSpeed ZeRO-2 bf16, one worker per GPU
    python benchmarks/train.py --profile             # where one step's time goes, in this process

Each variant trains the same toy feature dataset (`l2s.train.toy`, clips of 50–100 frames) for a
fixed time in a fresh run directory. On CPU the first variant is the same loop in this process
without Ray (`train(..., local=True)`): the ratios of the Ray Train variants against it are what
Ray costs on this machine. Reported per variant, from the run's own reports (warm-up excluded: the
first report is dropped):
  samples/s    clips per second over all workers; frames/s: video frames (25 fps) per second
  TFLOP/s      model FLOPs (forward + backward, counted once by torch's FlopCounterMode on a
               typical batch) times samples/s
  MFU          that over the accelerator's dense bf16 peak (GPU only; no CPU peak is asserted)
  peak GiB     GPU: torch.cuda.max_memory_allocated on rank 0. CPU: peak RSS of the worker processes
  CPU-s        CPU seconds of every process of the run by name over the variant (Ray's own actors
               beside the training worker): what Ray costs a small machine
The baseline is the first variant; ratios are against it, in the same run.

`--profile` times the phases of training steps in this process (building the batch, forward,
backward, optimizer) and the forward pass of each part of the model, on the same toy data.
"""

from __future__ import annotations

import l2s  # noqa: F401  first: it sets OMP_WAIT_POLICY before torch loads OpenMP

# isort: split

import argparse
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch

# Dense bf16 tensor-core peaks (NVIDIA datasheets, SXM parts), FLOP/s.
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def flops_per_sample(preset: str, frames: int = 75, batch: int = 4) -> float:
    """Forward + backward FLOPs of one clip of `frames` video frames."""
    from torch.utils.flop_counter import FlopCounterMode

    from l2s.models.lip2speech import PRESETS, Lip2Speech

    model = Lip2Speech(PRESETS[preset]())
    video_BTHW = torch.randn(batch, frames, 88, 88)
    speaker_BD = torch.randn(batch, 256)
    counter = FlopCounterMode(display=False)
    with counter:
        out = model(video_BTHW, None, speaker_BD)
        (out.mel_post_BMF.square().mean() + out.mel_BMF.square().mean()).backward()
    return counter.get_total_flops() / batch


class WorkerMemory(threading.Thread):
    """Peak summed RSS of this process's Ray worker children (CPU runs); of this process itself
    when it trains without Ray (`local`)."""

    def __init__(self, local: bool) -> None:
        super().__init__(daemon=True)
        self.local = local
        self.peak = 0
        self.done = threading.Event()

    def run(self) -> None:
        me = psutil.Process()
        while not self.done.wait(0.5):
            total = me.memory_info().rss if self.local else 0
            for child in [] if self.local else me.children(recursive=True):
                try:
                    if child.cmdline()[:1] and "RayTrainWorker" in child.cmdline()[0]:
                        total += child.memory_info().rss
                except psutil.Error:
                    continue
            self.peak = max(self.peak, total)


def cpu_by_process() -> dict[str, float]:
    """CPU seconds so far of this process and its descendants, summed by name (ray::Actor names
    for Ray's processes)."""
    me = psutil.Process()
    totals: dict[str, float] = {}
    for process in [me, *me.children(recursive=True)]:
        try:
            cmdline = process.cmdline()
            times = process.cpu_times()
        except psutil.Error:
            continue
        name = cmdline[0] if cmdline and cmdline[0].startswith("ray::") else process.name()
        if process.pid == me.pid:
            name = "driver (this process)"
        name = name.split(".")[0].removesuffix(":")
        totals[name] = totals.get(name, 0.0) + times.user + times.system
    return totals


def run_variant(
    name: str, dataset: str, out: Path, minutes: float, local: bool = False, **settings
) -> dict:
    from l2s.train import TrainConfig, train

    memory = WorkerMemory(local)
    memory.start()
    cpu_before = cpu_by_process()
    cfg = TrainConfig(
        dataset=dataset,
        out=str(out / name.replace(" ", "_")),
        steps=100_000,
        time_budget_min=minutes,
        warmup_steps=10,
        val_every=20,
        ckpt_every=100_000,
        val_utterances=0,
        n_val_audio=0,
        **settings,
    )
    summary = train(cfg, local=local)
    memory.done.set()
    cpu_after = cpu_by_process()
    cpu = {k: v - cpu_before.get(k, 0.0) for k, v in cpu_after.items()}
    reports = [m for m in summary.history if "train/samples_per_s" in m][1:] or summary.history
    samples = sum(m["train/samples_per_s"] for m in reports) / len(reports)
    frames = sum(m["train/frames_per_s"] for m in reports) / len(reports)
    return {
        "name": name,
        "samples_s": samples,
        "frames_s": frames,
        "peak_gib": memory.peak / 2**30,
        "steps": summary.step,
        "cpu": {k: v for k, v in sorted(cpu.items(), key=lambda kv: -kv[1]) if v >= 0.5},
    }


def profile(dataset: str, preset: str, batch_size: int, steps: int = 30) -> None:
    """Where the time of a training step goes, in this process (no Ray): phases and model parts."""
    import numpy as np

    from l2s.models.lip2speech import PRESETS, Lip2Speech
    from l2s.models.losses import lip2speech_loss
    from l2s.train.config import TrainConfig
    from l2s.train.data import batches_of, index_dataset, source
    from l2s.train.session import LocalShard

    index = index_dataset(dataset, 0, 0)
    cfg = TrainConfig(dataset=dataset, out="-", preset=preset, batch_size=batch_size)
    shard = LocalShard(source(index, "train", shuffle_files=True), seed=0)
    from l2s.train.data import utterances

    clips = [u for b in shard.iter_batches(batch_size=64) for u in utterances(b)]
    model = Lip2Speech(PRESETS[preset]())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    parts = {"frontend": model.frontend, "encoder": model.encoder, "upsample": model.upsample,
             "decoder": model.decoder, "postnet": model.postnet}  # fmt: skip
    forward_s = dict.fromkeys(parts, 0.0)
    started: dict[str, float] = {}
    for name, module in parts.items():
        module.register_forward_pre_hook(
            lambda m, a, n=name: started.__setitem__(n, time.perf_counter())
        )
        module.register_forward_hook(
            lambda m, a, o, n=name: forward_s.__setitem__(n, forward_s[n] + time.perf_counter() - started[n])
        )  # fmt: skip
    phases = dict.fromkeys(("batch", "forward", "backward", "optimizer"), 0.0)
    rng = np.random.default_rng(0)
    batches = batches_of(clips * 100, cfg, index.bank, rng)
    frames = 0
    for step in range(steps + 3):
        if step == 3:  # warm-up steps are not counted
            phases = dict.fromkeys(phases, 0.0)
            forward_s.update(dict.fromkeys(parts, 0.0))
            frames = 0
        t0 = time.perf_counter()
        batch = next(batches)
        t1 = time.perf_counter()
        output = model(batch.video_BTHW, batch.lengths_B, batch.speaker_BD)
        loss, _ = lip2speech_loss(output, batch.mel_BMF, batch.targets_BL, batch.target_lengths_B)
        t2 = time.perf_counter()
        loss.backward()
        t3 = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        t4 = time.perf_counter()
        for phase, seconds in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            phases[phase] += seconds
        frames += int(batch.lengths_B.sum())
    total = sum(phases.values())
    print(f"\n{preset} preset, batch {batch_size}, {torch.get_num_threads()} torch threads: "
          f"{steps / total:.2f} steps/s, {frames / steps:.0f} video frames per step")  # fmt: skip
    for phase, seconds in phases.items():
        print(f"  {phase:<10}{1000 * seconds / steps:8.1f} ms/step  {seconds / total:6.1%}")
    forward = phases["forward"]
    print("  forward pass by part:")
    for name, seconds in forward_s.items():
        print(
            f"    {name:<10}{1000 * seconds / steps:8.1f} ms/step  {seconds / forward:6.1%} of forward"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--minutes", type=float, default=1.5, help="training time per variant")
    parser.add_argument("--gpu", action="store_true", help="train on the GPUs of this machine")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--profile", action="store_true", help="profile steps in this process")
    args = parser.parse_args()

    from l2s.pipeline.runtime import connect
    from l2s.train.toy import ToyConfig, write_toy_features

    per_sample = flops_per_sample(args.preset)
    with tempfile.TemporaryDirectory() as tmp:
        dataset = str(Path(tmp) / "toy")
        write_toy_features(
            dataset, ToyConfig(speakers=4, utterances=64, min_frames=50, max_frames=100)
        )
        if args.profile:
            profile(dataset, args.preset, args.batch_size)
            return
        connect()
        common = dict(preset=args.preset, batch_size=args.batch_size)
        if args.gpu:
            gpus = torch.cuda.device_count()
            variants = [
                ("ddp 1 gpu bf16", dict(gpus_per_node=1, strategy="ddp", precision="bf16")),
                ("zero-2 1 gpu bf16", dict(gpus_per_node=1, strategy="deepspeed", zero_stage=2)),
            ]
            if gpus > 1:
                variants.append(
                    (f"zero-2 {gpus} gpus bf16", dict(gpus_per_node=gpus, strategy="deepspeed"))
                )
        else:
            variants = [
                ("plain process", dict(workers=1, local=True)),
                ("ray train 1 worker", dict(workers=1)),
                ("ddp 2 workers", dict(workers=2)),
                ("zero-2 2 workers", dict(workers=2, strategy="deepspeed", zero_stage=2)),
            ]
        rows = []
        for name, settings in variants:
            start = time.perf_counter()
            row = run_variant(name, dataset, Path(tmp), args.minutes, **common, **settings)
            row["wall_s"] = time.perf_counter() - start
            if args.gpu:
                row["peak_gib"] = (
                    torch.cuda.max_memory_allocated() / 2**30
                )  # driver-side: 0 when unused
            rows.append(row)

    device = torch.cuda.get_device_name(0) if args.gpu else f"CPU ({psutil.cpu_count()} cores)"
    peak = next((v for k, v in PEAK_BF16.items() if k in device), None) if args.gpu else None
    print(f"\n{args.preset} preset, batch {args.batch_size} per worker, on {device}")
    print(f"model FLOPs per 75-frame clip (fwd + bwd): {per_sample / 1e9:.2f} GFLOP")
    print(
        f"{'variant':<22}{'samples/s':>10}{'frames/s':>10}{'TFLOP/s':>9}{'MFU':>7}{'peak GiB':>9}{'vs first':>9}"
    )
    for row in rows:
        tflops = row["samples_s"] * per_sample / 1e12
        mfu = f"{tflops * 1e12 / peak:.1%}" if peak else "-"
        ratio = row["samples_s"] / rows[0]["samples_s"]
        print(
            f"{row['name']:<22}{row['samples_s']:>10.1f}{row['frames_s']:>10.0f}{tflops:>9.3f}"
            f"{mfu:>7}{row['peak_gib']:>9.2f}{ratio:>8.2f}x"
        )
    print("\nCPU seconds by process over each variant (≥ 0.5 s):")
    for row in rows:
        spent = ", ".join(f"{name} {seconds:.1f}" for name, seconds in row["cpu"].items())
        print(f"  {row['name']}: {row['steps']} steps; {spent}")


if __name__ == "__main__":
    main()
