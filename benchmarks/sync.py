"""Does the sync expert find how far audio is off the lips? Offset recovery on shifted clips.

    python benchmarks/sync.py --expert out/runs/sync --dataset /work/data/grid_s1/features \\
        --fixtures ../shared/fixtures/real

Every clip's audio is shifted by each of -10 … +10 frames (`l2s.sync.expert.shift_mel`: the
sound comes that much late or early, the gap quiet) and the expert searches offsets -15 … +15; a
shift is recovered when the best offset lies within one frame of it. Two sets of clips: the test
split of a feature dataset (its stored ROIs and mels), and real videos the expert never saw
(mouth ROIs through the same per-clip functions as preprocessing, `l2s.infer.speak.mouth_rois`;
the log-mel of their own audio). Baselines in the same table: an untrained expert of the same
shape (seed 0) and chance (a uniform guess over the 31 offsets searched: 3/31). Also printed: the
unshifted clips' mean confidence and best offset (a clip's own AV offset shows there), and the
compute time.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

SHIFTS = list(range(-10, 11))


def feature_clips(
    dataset: str, split: str, limit: int | None
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    from l2s.pipeline import shards

    rows = sorted(shards.read_features(dataset, split=split), key=lambda r: r.id)[:limit]
    if not rows:
        raise SystemExit(f"{dataset}: no clips in split {split!r}")
    return [(r.id, r.roi_THW(), r.mel_MF()) for r in rows]


def video_clips(folder: str) -> list[tuple[str, np.ndarray, np.ndarray]]:
    from l2s.audio import load_audio, log_mel
    from l2s.features import FeatureConfig
    from l2s.infer.speak import mouth_rois

    clips = []
    for video in sorted(Path(folder).glob("*.mp4")):
        roi_THW, _ = mouth_rois(str(video), FeatureConfig())
        mel_MF = log_mel(load_audio(str(video)))
        clips.append((video.name, roi_THW, mel_MF[:, : 4 * len(roi_THW)]))
    if not clips:
        raise SystemExit(f"{folder}: no .mp4 clips")
    return clips


def recovery(network, clips, device) -> dict:
    """Recovered fraction over every clip and shift, and the unshifted clips' scores."""
    from l2s.sync.expert import recover_offsets

    hits, errors, confidence, own = [], [], [], []
    for _, roi_THW, mel_MF in clips:
        scores = recover_offsets(network, roi_THW, mel_MF, SHIFTS, device)
        for shift, score in zip(SHIFTS, scores, strict=True):
            hits.append(abs(score.offset - shift) <= 1)
            errors.append(abs(score.offset - shift))
        unshifted = scores[SHIFTS.index(0)]
        confidence.append(unshifted.confidence)
        own.append(unshifted.offset)
    return {
        "rate": float(np.mean(hits)),
        "exact": float(np.mean(np.array(errors) == 0)),
        "error": float(np.mean(errors)),
        "confidence": float(np.mean(confidence)),
        "own_offsets": own,
        "n": len(hits),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--expert", required=True, help="sync expert checkpoint or run")
    parser.add_argument(
        "--dataset", action="append", default=[], help="feature dataset whose split is shifted"
    )
    parser.add_argument("--split", default="test")
    parser.add_argument("--fixtures", help="a folder of real .mp4 clips (with their speech)")
    parser.add_argument("--limit", type=int, default=None, help="first N clips of the split")
    args = parser.parse_args()

    from l2s.models.syncnet import SyncConfig, SyncNet
    from l2s.sync.expert import SyncExpert

    console = Console(width=120)
    expert = SyncExpert.load(args.expert)
    torch.manual_seed(0)
    untrained = SyncNet(SyncConfig.from_dict(expert.network.cfg.to_dict())).eval()
    sets = []
    start = time.perf_counter()
    for dataset in args.dataset:
        clips = feature_clips(dataset, args.split, args.limit)
        sets.append((f"{Path(dataset).parent.name} {args.split}", clips))
    if args.fixtures:
        sets.append((f"real fixtures ({Path(args.fixtures).name})", video_clips(args.fixtures)))
    read_s = time.perf_counter() - start
    table = Table(
        title=f"offset recovery, shifts {SHIFTS[0]}…+{SHIFTS[-1]} frames (within ±1 frame)"
    )
    for column in (
        "clips",
        "system",
        "clips × shifts",
        "within ±1",
        "exact",
        "mean |error|",
        "confidence (unshifted)",
    ):
        table.add_column(column, justify="left" if column in ("clips", "system") else "right")
    owns = []
    compute_s = 0.0
    for name, clips in sets:
        for system, network in (
            ("l2s sync expert", expert.network),
            ("untrained expert", untrained),
        ):
            t0 = time.perf_counter()
            found = recovery(network, clips, expert.device)
            compute_s += time.perf_counter() - t0
            table.add_row(
                name, system, str(found["n"]), f"{found['rate']:.1%}", f"{found['exact']:.1%}",
                f"{found['error']:.2f}", f"{found['confidence']:.3f}",
            )  # fmt: skip
            if system == "l2s sync expert":
                owns.append((name, found["own_offsets"]))
        table.add_row(
            name, "chance (uniform over ±15)", "", f"{3 / 31:.1%}", f"{1 / 31:.1%}", "", ""
        )
    console.print(table)
    for name, offsets in owns:
        values, counts = np.unique(offsets, return_counts=True)
        spread = ", ".join(f"{v:+d}: {c}" for v, c in zip(values, counts, strict=True))
        console.print(f"{name}: best offset of the unshifted clips (frames: clips) {spread}")
    console.print(
        f"expert {expert.checkpoint}; reading clips {read_s:.0f} s, scoring {compute_s:.0f} s "
        f"({torch.get_num_threads()} torch threads)"
    )


if __name__ == "__main__":
    main()
