"""What per-person fine-tuning adds (Speech2Lip's setting): a lip generator trained on other people,
fine-tuned on the first part of one new person's short video, scored on the rest.

    python benchmarks/lipsync_person.py ../shared/fixtures/real/video-retalking__face_2.mp4 \\
        --generator out/runs/lipsync --expert out/runs/sync_eval --minutes 10 --work out/person

The video goes through the per-clip functions of preprocessing (25 fps, face tracking, aligned
96×96 ROIs, THE log-mel) and is cut into pieces of `--piece` frames: the first `--train`
fraction of them becomes the train split of a small feature dataset in `--work`, the rest the
held-out test split. `l2s.train.lipsync.train_lipsync(init=generator)` fine-tunes on the train
pieces for `--minutes`. Then both generators re-draw each held-out piece to its own recorded
speech (the truth exists), from the same reference frame (picked in the train part), and are
scored as `benchmarks/lipsync.py` scores: LMD to the real mouth (re-drawn ROIs pasted into the
frames and the preprocessing detector run on them), PSNR / SSIM of the mouth region, and the
sync expert's confidence beside the real video's. Baseline: the reference frame copied.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table


def person_dataset(video: str, work: Path, piece: int, train_fraction: float) -> list[dict]:
    """Write the person's pieces as a feature dataset in `work`; return the pieces with their
    frames and alignment (held-out ones are scored)."""
    from l2s import __version__
    from l2s.audio import log_mel
    from l2s.config import AUDIO, VIDEO
    from l2s.face import crop_mouth, detect_landmarks, mouth_transforms
    from l2s.features import FeatureConfig, decode_clip
    from l2s.pipeline import shards
    from l2s.schema import SCHEMA_VERSION, FeatureRow, ManifestRow

    cfg = FeatureConfig()
    row = ManifestRow(id="person", speaker="person", split="test", video=video, corpus="folder")
    clip = decode_clip(row, cfg)
    landmarks_TK2 = detect_landmarks(clip.frames_THWC, cfg.face).landmarks_TK2
    transform_T23 = mouth_transforms(landmarks_TK2)
    roi_THW = crop_mouth(clip.frames_THWC, landmarks_TK2, transform_T23=transform_T23)
    mel_MF = log_mel(clip.audio_S, AUDIO)
    n_pieces = len(roi_THW) // piece
    n_train = max(1, round(train_fraction * n_pieces))
    if n_pieces - n_train < 1:
        raise SystemExit(f"{video}: {len(roi_THW)} frames make too few pieces of {piece}")
    pieces, rows = [], []
    for p in range(n_pieces):
        t = slice(p * piece, (p + 1) * piece)
        f = slice(4 * p * piece, 4 * (p + 1) * piece)
        split = "train" if p < n_train else "test"
        rows.append(
            FeatureRow(
                id=f"person/{p:03d}", speaker="person", split=split, corpus="folder",
                transcript=None, n_frames=piece, roi=roi_THW[t].tobytes(),
                mel=np.ascontiguousarray(mel_MF[:, f]).tobytes(),
                landmarks=landmarks_TK2[t].astype(np.float32).tobytes(),
                speaker_embedding=[], face_ratio=1.0, n_faces=1,
            )
        )  # fmt: skip
        pieces.append(
            {
                "id": f"piece {p}",
                "split": split,
                "frames_THWC": clip.frames_THWC[t],
                "roi_THW": roi_THW[t],
                "mel_MF": mel_MF[:, f],
                "transform_T23": transform_T23[t],
                "landmarks_TK2": landmarks_TK2[t],
            }
        )
    shards.write_shard(str(work), rows, [])
    shards.write_metadata(
        str(work),
        {
            "l2s_version": __version__,
            "schema_version": SCHEMA_VERSION,
            "source_manifest": None,
            "audio": AUDIO.to_dict(),
            "video": VIDEO.to_dict(),
            "features": cfg.to_dict(),
            "counts": {"features": len(rows), "errors": 0},
        },
    )
    return pieces


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("video", help="one person's video, with their speech")
    parser.add_argument("--generator", required=True, help="lip generator trained on others")
    parser.add_argument("--expert", required=True, help="sync expert for the train loss")
    parser.add_argument(
        "--eval-expert", default=None, help="sync expert that scores (default: --expert)"
    )
    parser.add_argument("--work", required=True, help="folder for the dataset and the run")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--piece", type=int, default=25, help="frames per piece")
    parser.add_argument("--train", type=float, default=0.6, help="fraction of pieces to train on")
    args = parser.parse_args()

    from l2s.face import roi_landmarks
    from l2s.lipsync.model import LipSyncModel, pick_reference
    from l2s.lipsync.paste import paste_clip
    from l2s.lipsync.scores import lmd, psnr, roi_mouth_landmarks, ssim
    from l2s.sync.expert import SyncExpert
    from l2s.train.lipsync import LipSyncTrainConfig, train_lipsync

    console = Console(width=120)
    work = Path(args.work)
    start = time.perf_counter()
    pieces = person_dataset(args.video, work / "features", args.piece, args.train)
    train = [p for p in pieces if p["split"] == "train"]
    held_out = [p for p in pieces if p["split"] == "test"]
    console.print(
        f"{args.video}: {len(pieces)} pieces of {args.piece} frames: {len(train)} to train on, "
        f"{len(held_out)} held out ({time.perf_counter() - start:.0f} s)"
    )
    summary = train_lipsync(
        LipSyncTrainConfig(
            dataset=str(work / "features"), out=str(work / "run"), sync_expert=args.expert,
            init=args.generator, steps=100_000, time_budget_min=args.minutes, batch_size=4,
            warmup_steps=10, lr=3e-4, val_every=100_000, ckpt_every=100_000, n_val=0,
        ),
        local=True,
    )  # fmt: skip
    console.print(
        f"fine-tuned {summary.step} steps in {summary.train_seconds / 60:.1f} min → "
        f"{summary.checkpoint}"
    )
    expert = SyncExpert.load(args.eval_expert or args.expert)
    before, after = LipSyncModel.load(args.generator), LipSyncModel.load(summary.checkpoint)
    all_train_roi = np.concatenate([p["roi_THW"] for p in train])
    reference_HW = all_train_roi[pick_reference(all_train_roi, before.mask_top)]
    top = before.mask_top
    systems = {
        "real (bound)": lambda p: p["roi_THW"],
        "reference copy": lambda p: np.repeat(reference_HW[None], len(p["roi_THW"]), axis=0),
        "generator, not fine-tuned": lambda p: before.redraw(
            p["roi_THW"], p["mel_MF"], reference_HW
        ),
        "fine-tuned on this person": lambda p: after.redraw(
            p["roi_THW"], p["mel_MF"], reference_HW
        ),
    }
    table = Table(title=f"held-out pieces of {Path(args.video).name}, re-drawn to their own speech")
    for column in ("system", "LMD ↓", "PSNR ↑", "SSIM ↑", "sync conf ↑"):
        table.add_column(column, justify="left" if column == "system" else "right")
    # All pieces scored together as one clip for sync (a piece alone is short for the expert).
    mel_MF = np.concatenate([p["mel_MF"] for p in held_out], axis=1)
    for name, draw in systems.items():
        drawn = [draw(p) for p in held_out]
        real_shapes = [roi_landmarks(p["landmarks_TK2"], p["transform_T23"]) for p in held_out]
        shapes = real_shapes
        if name != "real (bound)":
            shapes = [
                roi_mouth_landmarks(
                    paste_clip(p["frames_THWC"], d, p["transform_T23"], top), p["transform_T23"]
                )
                for p, d in zip(held_out, drawn, strict=True)
            ]
        table.add_row(
            name,
            f"{np.mean([lmd(a, b) for a, b in zip(shapes, real_shapes, strict=True)]):.2f}",
            "" if name == "real (bound)" else f"{np.mean([psnr(d[:, top:], p['roi_THW'][:, top:]) for d, p in zip(drawn, held_out, strict=True)]):.2f}",
            "" if name == "real (bound)" else f"{np.mean([ssim(d[:, top:], p['roi_THW'][:, top:]) for d, p in zip(drawn, held_out, strict=True)]):.3f}",
            f"{expert.score(np.concatenate(drawn), mel_MF).confidence:.3f}",
        )  # fmt: skip
    console.print(table)
    console.print(
        f"generator {before.checkpoint}; fine-tuned {after.checkpoint}; scoring expert "
        f"{expert.checkpoint}; {time.perf_counter() - start:.0f} s in all"
    )


if __name__ == "__main__":
    main()
