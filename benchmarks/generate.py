"""Generation speed: real-time factor of batch generation and of `l2s speak`, per vocoder, on CPU.

    python benchmarks/generate.py [--dataset FEATURES] [--checkpoint RUN] [--split test]
                                  [--cpus 2] [--vocoder griffin-lim ...]

Real-time factor (RTF) = seconds of computing per second of speech produced; below 1 is faster
than real time. Measured in the same run, each variant in a fresh process:
  serial   one process, one clip after another: model (one clip per forward pass) + vocoder +
           wav write — the loop peers ship
  ray      `l2s.pipeline.generate.generate_split` on `ray.init(num_cpus=--cpus)`: model actors
           with padded batches, vocoding in the actors; `ray.init` is shown apart (a cluster
           pays it once); "job" counts everything else, Ray Data planning and actor start included
  speak    `l2s speak` on each real fixture clip (decode, face tracking, mouth ROIs, model,
           vocoder, wav write): the end-to-end RTF a user sees for one video
Without `--dataset`, a small synthetic corpus (4 speakers × 20 utterances) is made and preprocessed
first; without `--checkpoint`, an untrained tiny model is used (speed does not depend on weights).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "real"


def serial(dataset: str, split: str, checkpoint: str, out: str, vocoder: str) -> dict:
    """One clip after another in this process (the baseline)."""

    from l2s.audio import write_wav
    from l2s.infer.model import SpeechModel
    from l2s.infer.vocoder import load_vocoder
    from l2s.infer.voice import split_speakers
    from l2s.pipeline import shards

    start = time.perf_counter()
    model, vocode = SpeechModel.load(checkpoint), load_vocoder(vocoder)
    rows = shards.read_features(dataset, split=split)
    voices = split_speakers([vars(r) for r in rows], model.speakers)
    samples = 0
    for row in rows:
        wav_S = vocode(model.mel(row.roi_THW(), voices[row.id][0]))
        write_wav(Path(out) / f"{row.id}.wav", wav_S)
        samples += len(wav_S)
    seconds = time.perf_counter() - start
    speech = samples / 16000
    return {"clips": len(rows), "speech_s": speech, "job_s": seconds, "init_s": 0.0,
            "rtf": seconds / speech}  # fmt: skip


def on_ray(dataset: str, split: str, checkpoint: str, out: str, vocoder: str, cpus: int) -> dict:
    import ray

    from l2s.pipeline.generate import generate_split

    start = time.perf_counter()
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    init = time.perf_counter() - start
    summary = generate_split(dataset, split, checkpoint, out, vocoder=vocoder, progress=False)
    return {"clips": summary.clips, "speech_s": summary.speech_seconds, "job_s": summary.seconds,
            "init_s": init, "rtf": summary.real_time_factor}  # fmt: skip


def speak_fixtures(checkpoint: str, out: str, vocoder: str) -> dict:
    from l2s.infer.speak import speak

    clips = sorted(FIXTURES.glob("*.mp4"))
    if not clips:
        return {}
    speak(str(clips[0]), checkpoint, str(Path(out) / "warm.wav"), vocoder=vocoder)  # imports, dlib
    compute = speech = 0.0
    for clip in clips:
        spoken = speak(str(clip), checkpoint, str(Path(out) / f"{clip.stem}.wav"), vocoder=vocoder)
        compute += spoken.compute_seconds
        speech += spoken.seconds
    return {"clips": len(clips), "speech_s": speech, "job_s": compute, "init_s": 0.0,
            "rtf": compute / speech}  # fmt: skip


def _in_fresh_process(variant: str, args: argparse.Namespace, vocoder: str, out: str) -> dict:
    """Run one variant in a new interpreter, so no variant inherits another's warm caches."""
    command = [sys.executable, __file__, "--one", variant, "--dataset", args.dataset,
               "--checkpoint", args.checkpoint, "--split", args.split, "--cpus", str(args.cpus),
               "--vocoder", vocoder, "--out", out]  # fmt: skip
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _prepare(args: argparse.Namespace, tmp: Path) -> None:
    if args.dataset is None:
        from l2s.corpora import scan, write_manifest
        from l2s.pipeline.preprocess import PreprocessConfig, serial_preprocess
        from l2s.synth.corpus import SynthConfig, generate

        print("making a synthetic corpus (4 speakers × 20 utterances) and its features …")
        list(generate(SynthConfig(speakers=4, utterances=20), tmp / "corpus"))
        rows, _ = scan("synthetic", str(tmp / "corpus"))
        write_manifest(rows, str(tmp / "manifest.parquet"))
        serial_preprocess(str(tmp / "manifest.parquet"), str(tmp / "features"), PreprocessConfig())
        args.dataset = str(tmp / "features")
    if args.checkpoint is None:
        from l2s.train import initial_checkpoint

        args.checkpoint = initial_checkpoint(args.dataset, str(tmp / "run"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset")
    parser.add_argument("--checkpoint")
    parser.add_argument("--split", default="test")
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--vocoder", nargs="+", default=["griffin-lim"])
    parser.add_argument("--one", choices=("serial", "ray", "speak"), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        vocoder = args.vocoder[0]
        if args.one == "serial":
            result = serial(args.dataset, args.split, args.checkpoint, args.out, vocoder)
        elif args.one == "ray":
            result = on_ray(args.dataset, args.split, args.checkpoint, args.out, vocoder, args.cpus)
        else:
            result = speak_fixtures(args.checkpoint, args.out, vocoder)
        print(json.dumps(result))
        return

    with tempfile.TemporaryDirectory(prefix="l2s-bench-generate-") as folder:
        tmp = Path(folder)
        _prepare(args, tmp)
        print(f"dataset {args.dataset} split {args.split}; checkpoint {args.checkpoint}; "
              f"{args.cpus} CPUs")  # fmt: skip
        header = f"{'vocoder':<24}{'variant':<8}{'clips':>6}{'speech s':>10}{'init s':>8}"
        print(header + f"{'job s':>8}{'RTF':>8}{'vs serial':>11}")
        for vocoder in args.vocoder:
            results = {}
            for variant in ("serial", "ray", "speak"):
                out = tmp / f"{variant}-{len(results)}-{abs(hash(vocoder))}"
                out.mkdir()
                results[variant] = _in_fresh_process(variant, args, vocoder, str(out))
            for variant, r in results.items():
                if not r:
                    print(f"{vocoder:<24}{variant:<8}  (no fixture clips at {FIXTURES})")
                    continue
                # speak runs other clips (videos, end to end): no ratio against serial.
                ratio = f"{results['serial']['rtf'] / r['rtf']:.2f}×" if variant != "speak" else "–"
                print(f"{Path(vocoder).name[-23:]:<24}{variant:<8}{r['clips']:>6}"
                      f"{r['speech_s']:>10.1f}{r['init_s']:>8.1f}{r['job_s']:>8.1f}"
                      f"{r['rtf']:>8.3f}{ratio:>11}")  # fmt: skip


if __name__ == "__main__":
    main()
