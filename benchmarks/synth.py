"""Synthetic corpus speed and detectability.

    python benchmarks/synth.py [--speakers 4] [--utterances 50]

Prints clips/s and seconds of video per second for all cores against one worker (the baseline,
same run, same clips), and the fraction of generated frames on which dlib's HOG detector finds
the face.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import dlib

from l2s.synth.corpus import SynthConfig, generate
from l2s.video import read_frames


def timed(cfg: SynthConfig, out: Path, workers: int) -> float:
    start = time.perf_counter()
    n = len(list(generate(cfg, out, workers=workers, progress=False)))
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--speakers", type=int, default=4)
    parser.add_argument("--utterances", type=int, default=50)
    args = parser.parse_args()
    cfg = SynthConfig(speakers=args.speakers, utterances=args.utterances)
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        parallel = timed(cfg, Path(tmp) / "parallel", cores)
        # The baseline makes a quarter of the corpus: enough for a rate, without doubling the run.
        small = SynthConfig(speakers=args.speakers, utterances=max(3, args.utterances // 4))
        serial = timed(small, Path(tmp) / "serial", 1)
        clips = sorted((Path(tmp) / "parallel").glob("*/*/*.mp4"))
        detector = dlib.get_frontal_face_detector()
        found = total = 0
        for mp4 in clips:
            for frame in read_frames(mp4, gray=True):
                found += bool(detector(frame, 0))
                total += 1
    seconds_per_clip = total / len(clips) / 25
    print(f"clips: {len(clips)}, {total} frames, {seconds_per_clip:.2f} s per clip")
    print(f"{'workers':>8} {'clips/s':>8} {'video s/s':>10}")
    print(f"{1:>8} {serial:>8.2f} {serial * seconds_per_clip:>10.2f}")
    print(f"{cores:>8} {parallel:>8.2f} {parallel * seconds_per_clip:>10.2f}")
    print(f"speed-up with {cores} workers: {parallel / serial:.2f}x")
    print(f"dlib HOG face found on {found}/{total} frames = {found / total:.2%}")


if __name__ == "__main__":
    main()
