"""One table of l2s's GPU paths on one NVIDIA GPU (written for an H100 / H200): what
`benchmarks/gpu.sh` prints after the `gpu`-marked tests.

    python benchmarks/gpu.py [--minutes 0.5] [--work DIR] [--dry-run]

Rows, each in this process's local Ray on the one GPU:
  base ddp bf16, base zero-2 bf16   the base preset on the toy dataset (`l2s.train.toy`): samples/s,
                                    TFLOP/s (model FLOPs per clip, counted as benchmarks/train.py
                                    does), MFU against the GPU's dense bf16 peak, peak memory
  large zero-2, large zero-3        the large preset, the same. One GPU is one rank: ZeRO has
                                    nothing to partition over, so the rows show what each stage
                                    costs on one GPU, not what it saves across several
  hifigan v1                        HiFi-GAN v1 training on the synthetic corpus's recordings:
                                    steps/s, peak memory
  generate hifigan v1 / griffin-lim `l2s generate` of the synthetic features with an untrained base
                                    model and that HiFi-GAN (or Griffin-Lim): real-time factor,
                                    wall seconds per second of speech, actor start-up included
  face_alignment                    S3FD + 2D-FAN-4 with staged weights of the right architecture
                                    and random values (`l2s.face.fan.stage_random_weights`) on a
                                    synthetic clip's frames, detection every 5th frame and
                                    landmarks on every frame as preprocessing runs it: frames/s
Training rows run for --minutes each (the first report is dropped as warm-up). Peak memory is
nvidia-smi's memory.used at its highest during the row, less its value before the row: CUDA
context and PyTorch's cached blocks included.

--dry-run checks the arguments and that every module the rows use imports, prints the plan and
runs nothing (what benchmarks/gpu.sh --dry-run and tests/test_gpu_script.py run on a CPU).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# Modules the rows import; --dry-run checks each (deepspeed and face_alignment are the ones a
# wrong install leaves out; "train" is benchmarks/train.py, beside this file).
NEEDS = (
    "torch", "ray.train", "deepspeed", "face_alignment", "l2s.train", "l2s.train.vocoder",
    "l2s.pipeline.generate", "l2s.pipeline.preprocess", "l2s.face.fan", "l2s.synth.corpus",
    "train",
)  # fmt: skip
PLAN = (
    ("base ddp bf16", "train", "preset=base strategy=ddp precision=bf16"),
    ("base zero-2 bf16", "train", "preset=base strategy=deepspeed zero_stage=2 (bf16)"),
    ("large zero-2 bf16", "train", "preset=large strategy=deepspeed zero_stage=2 (bf16)"),
    ("large zero-3 bf16", "train", "preset=large strategy=deepspeed zero_stage=3 (bf16)"),
    ("hifigan v1", "vocoder", "train-vocoder preset=v1 on the synthetic features"),
    ("generate hifigan v1", "generate", "generate_split, base model (untrained), HiFi-GAN v1"),
    ("generate griffin-lim", "generate", "generate_split, base model (untrained), Griffin-Lim"),
    ("face_alignment", "face", "S3FD + 2D-FAN-4, random staged weights, detect every 5th frame"),
)


@dataclass
class Row:
    name: str
    rate: float  # samples/s, steps/s, 1/RTF or frames/s, as `unit` says
    unit: str
    tflops: float | None = None
    mfu: float | None = None
    peak_gib: float | None = None
    note: str = ""


class GpuMemory:
    """nvidia-smi's memory.used, sampled every 200 ms: its peak between start and stop, less
    the value at start."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [
                "nvidia-smi",
                "--query-gpu=memory.used",
                "--format=csv,noheader,nounits",
                "-lms",
                "200",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.current = self.peak = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            if line.strip().isdigit():
                self.current = int(line.split()[0])
                self.peak = max(self.peak, self.current)

    @contextlib.contextmanager
    def row(self) -> Iterator[list[float]]:
        """Inside: the peak GiB above the value at entry, as a list that gets it at exit."""
        time.sleep(0.5)  # a sample from before the row
        start = self.peak = self.current
        result: list[float] = []
        yield result
        time.sleep(0.5)
        result.append(max(0, self.peak - start) / 1024)

    def close(self) -> None:
        self.process.terminate()


def check(modules: tuple[str, ...] = NEEDS) -> list[str]:
    """The modules of `modules` that do not import, with why."""
    missing = []
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as e:  # an import can fail with more than ImportError (a CUDA mismatch)
            missing.append(f"{name}: {type(e).__name__}: {e}")
    return missing


def rate_between(history: list[dict], key: str) -> float:
    """Steps per second of training time between the second report and the last."""
    reports = [m for m in history if key in m][1:]
    if len(reports) < 2:
        raise RuntimeError(f"too few reports to measure a rate ({len(reports)}): raise --minutes")
    first, last = reports[0], reports[-1]
    return (last[key] - first[key]) / (last["train_seconds"] - first["train_seconds"])


def train_rows(work: Path, minutes: float, memory: GpuMemory) -> list[Row]:
    import torch
    from train import PEAK_BF16, flops_per_sample  # benchmarks/train.py, beside this file

    from l2s.train import TrainConfig, train
    from l2s.train.toy import ToyConfig, write_toy_features

    dataset = str(work / "toy")
    write_toy_features(dataset, ToyConfig(speakers=4, utterances=64, min_frames=50, max_frames=100))
    device = torch.cuda.get_device_name(0)
    peak = next((v for k, v in PEAK_BF16.items() if k in device), None)
    rows = []
    for name, preset, settings in (
        ("base ddp bf16", "base", dict(strategy="ddp", precision="bf16")),
        ("base zero-2 bf16", "base", dict(strategy="deepspeed", zero_stage=2)),
        ("large zero-2 bf16", "large", dict(strategy="deepspeed", zero_stage=2)),
        ("large zero-3 bf16", "large", dict(strategy="deepspeed", zero_stage=3)),
    ):
        cfg = TrainConfig(
            dataset=dataset, out=str(work / name.replace(" ", "_")), preset=preset,
            gpus_per_node=1, batch_size=8, steps=100_000, time_budget_min=minutes,
            warmup_steps=10, val_every=100_000, ckpt_every=100_000, val_utterances=0,
            n_val_audio=0, **settings,
        )  # fmt: skip
        with memory.row() as peak_gib:
            summary = train(cfg)
        reports = [m for m in summary.history if "train/samples_per_s" in m][1:] or summary.history
        samples = sum(m["train/samples_per_s"] for m in reports) / len(reports)
        per_sample = flops_per_sample(preset) if preset == "base" else None
        tflops = samples * per_sample / 1e12 if per_sample else None
        mfu = tflops * 1e12 / peak if tflops and peak else None
        rows.append(Row(name, samples, "samples/s", tflops, mfu, peak_gib[0]))
    return rows


def corpus_features(work: Path) -> str:
    """A synthetic corpus (2 speakers × 20 utterances), preprocessed on the local Ray."""
    from l2s.corpora import scan, write_manifest
    from l2s.pipeline.preprocess import preprocess
    from l2s.synth.corpus import SynthConfig, generate

    corpus = work / "corpus"
    list(
        generate(SynthConfig(speakers=2, utterances=20, unseen_speakers=0), corpus, progress=False)
    )
    rows, _ = scan("synthetic", str(corpus))
    write_manifest(rows, str(work / "manifest.parquet"))
    summary = preprocess(str(work / "manifest.parquet"), str(work / "features"))
    if not summary.features:
        raise RuntimeError(f"preprocessing the synthetic corpus made no features: {summary}")
    return str(work / "features")


def vocoder_and_generate_rows(
    work: Path, features: str, minutes: float, memory: GpuMemory
) -> list[Row]:
    from l2s.pipeline.generate import generate_split
    from l2s.train import initial_checkpoint
    from l2s.train.vocoder import VocoderTrainConfig, train_vocoder

    cfg = VocoderTrainConfig(
        dataset=features, out=str(work / "hifigan_v1"), preset="v1", gpus_per_node=1,
        steps=100_000, time_budget_min=minutes, val_every=100_000, ckpt_every=100_000, n_val=1,
    )  # fmt: skip
    with memory.row() as peak_gib:
        summary = train_vocoder(cfg)
    rows = [
        Row("hifigan v1", rate_between(summary.history, "step"), "steps/s", peak_gib=peak_gib[0])
    ]
    checkpoint = initial_checkpoint(features, str(work / "base_init"), preset="base")
    for name, vocoder in (("generate hifigan v1", summary.run), ("generate griffin-lim", None)):
        out = str(work / name.replace(" ", "_"))
        with memory.row() as peak_gib:
            done = generate_split(
                features, "train", checkpoint, out, vocoder=vocoder, progress=False
            )
        rtf = done.real_time_factor
        note = f"RTF {rtf:.4f} over {done.speech_seconds:.0f} s of speech"
        rows.append(Row(name, 1 / rtf, "× real time", peak_gib=peak_gib[0], note=note))
    return rows


def face_row(work: Path, memory: GpuMemory) -> Row:
    import numpy as np

    from l2s.face import FaceConfig, detect_landmarks, load_detector
    from l2s.face.fan import stage_random_weights
    from l2s.video import read_frames

    weights = stage_random_weights(work / "face_weights")
    video = sorted((work / "corpus").rglob("*.mp4"))[0]
    frames_THWC = read_frames(video)
    frames_THWC = np.concatenate([frames_THWC] * (-(-500 // len(frames_THWC))))[:500]
    config = FaceConfig(backend="face_alignment", weights_dir=str(weights), device="cuda")
    detector = load_detector(config)
    detect_landmarks(frames_THWC[:50], config, detector)  # warm-up: cuDNN picks its kernels
    with memory.row() as peak_gib:
        began = time.perf_counter()
        detect_landmarks(frames_THWC, config, detector)
        seconds = time.perf_counter() - began
    h, w = frames_THWC.shape[1:3]
    note = f"{len(frames_THWC)} frames of {w}×{h}"
    return Row(
        "face_alignment", len(frames_THWC) / seconds, "frames/s", peak_gib=peak_gib[0], note=note
    )


def print_table(rows: list[Row], device: str) -> None:
    print(f"\nl2s on {device}")
    print(f"{'row':<22}{'rate':>10} {'unit':<12}{'TFLOP/s':>9}{'MFU':>7}{'peak GiB':>10}  note")
    for r in rows:
        tflops = f"{r.tflops:.1f}" if r.tflops is not None else "-"
        mfu = f"{r.mfu:.1%}" if r.mfu is not None else "-"
        peak = f"{r.peak_gib:.1f}" if r.peak_gib is not None else "-"
        print(f"{r.name:<22}{r.rate:>10.2f} {r.unit:<12}{tflops:>9}{mfu:>7}{peak:>10}  {r.note}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=0.5, help="training time per row")
    parser.add_argument("--work", type=Path, help="keep data and runs here (default: temporary)")
    parser.add_argument("--dry-run", action="store_true", help="check and print the plan only")
    args = parser.parse_args(argv)
    if not 0 < args.minutes <= 10:
        parser.error(f"--minutes must lie in (0, 10], got {args.minutes}")
    missing = check()
    print(f"{len(PLAN)} rows, {args.minutes:g} min per training row:")
    for name, kind, what in PLAN:
        print(f"  {name:<22}{kind:<10}{what}")
    if missing:
        print("cannot import:\n  " + "\n  ".join(missing))
        return 1
    if args.dry_run:
        print("dry run: every module imports; nothing was run")
        return 0
    import torch

    if not torch.cuda.is_available() or shutil.which("nvidia-smi") is None:
        print("no CUDA GPU (or no nvidia-smi) here: use --dry-run")
        return 1
    from l2s.pipeline.runtime import connect

    connect()
    memory = GpuMemory()
    began = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="l2s-gpu-") as tmp:
            work = args.work or Path(tmp)
            rows = train_rows(work, args.minutes, memory)
            print(f"[gpu.py] training rows done at {time.perf_counter() - began:.0f} s", flush=True)
            features = corpus_features(work)
            rows += vocoder_and_generate_rows(work, features, args.minutes, memory)
            rows.append(face_row(work, memory))
    finally:
        memory.close()
    print_table(rows, torch.cuda.get_device_name(0))
    print(f"({time.perf_counter() - began:.0f} s in all)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
