"""Training throughput, memory and model FLOP utilisation on Ray Train.

    python benchmarks/train.py                       # CPU: tiny preset; the plain loop vs Ray Train
    python benchmarks/train.py --gpu --preset base   # GPU: DeepSpeed ZeRO-2 bf16, one worker per GPU

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
The baseline is the first variant; ratios are against it, in the same run.
"""

from __future__ import annotations

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


def run_variant(
    name: str, dataset: str, out: Path, minutes: float, local: bool = False, **settings
) -> dict:
    from l2s.train import TrainConfig, train

    memory = WorkerMemory(local)
    memory.start()
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
    reports = [m for m in summary.history if "train/samples_per_s" in m][1:] or summary.history
    samples = sum(m["train/samples_per_s"] for m in reports) / len(reports)
    frames = sum(m["train/frames_per_s"] for m in reports) / len(reports)
    return {"name": name, "samples_s": samples, "frames_s": frames, "peak_gib": memory.peak / 2**30}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--minutes", type=float, default=1.5, help="training time per variant")
    parser.add_argument("--gpu", action="store_true", help="train on the GPUs of this machine")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()

    from l2s.pipeline.runtime import connect
    from l2s.train.toy import ToyConfig, write_toy_features

    connect()
    per_sample = flops_per_sample(args.preset)
    with tempfile.TemporaryDirectory() as tmp:
        dataset = str(Path(tmp) / "toy")
        write_toy_features(
            dataset, ToyConfig(speakers=4, utterances=64, min_frames=50, max_frames=100)
        )
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


if __name__ == "__main__":
    main()
