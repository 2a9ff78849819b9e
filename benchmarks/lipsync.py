"""Do re-drawn lips follow the speech? Lip re-rendering on held-out clips of a feature dataset.

    python benchmarks/lipsync.py --generator out/runs/lipsync --expert out/runs/sync \\
        --dataset /work/data/grid_s1/features --out out/lipsync_bench

For each clip X of the split (sorted by id) and the next one Y (the same speaker, on GRID):
- own speech: X re-drawn to its own recorded speech, so the truth exists. Mouth-landmark
  distance to the real X (LMD, ROI pixels: `l2s.lipsync.scores`), PSNR / SSIM of the ROI's
  mouth region (the rows the generator draws), the sync expert's confidence and offset.
- another's speech: Y re-drawn to X's speech. LMD to the real X's mouth, the expert's confidence
  with X's speech and its offset.
Baselines in the same tables: the real X (the bound: LMD 0, its own confidence; and its own ROIs
pasted back, whose LMD is the landmark detector's noise through pasting), the unchanged Y (lips of
other words), and a copy of the reference frame (the generator's identity input, pasted into
every frame: a mouth that never moves).

Re-drawn ROIs are pasted back into the source frames (`l2s.lipsync.paste`), and their landmarks
come from the preprocessing detector on those frames. `--out` also receives a contact sheet
(every tenth frame of the first pairs: X, Y, Y re-drawn to X's speech, the reference copy) and a
side-by-side video of the first pair (real X | Y re-drawn to X's speech, with X's audio).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

SHEET_PAIRS = 3


def load_clip(row, source) -> dict:
    """A feature row with its source frames (25 fps, as preprocessing decoded them: the manifest
    row `source`'s video, its segment when it names one) and the alignment that cut its ROIs."""
    from l2s.config import VIDEO
    from l2s.face import mouth_transforms
    from l2s.features import FeatureConfig
    from l2s.lipsync.paste import scale_transform
    from l2s.video import iter_frames

    frames = []
    for frame_HWC, _ in zip(
        iter_frames(
            source.video,
            fps=VIDEO.fps,
            max_side=FeatureConfig().max_side,
            start=source.start,
            duration=source.duration,
        ),
        range(row.n_frames),
        strict=False,
    ):
        frames.append(frame_HWC)
    frames_THWC = np.stack(frames)
    landmarks_TK2 = row.landmarks_TK2()
    # Stored landmarks are in source pixels; the frames here are decoded as preprocessing did.
    scale = frames_THWC.shape[2] / max(frames_THWC.shape[2], _source_width(source.video))
    transform_T23 = np.stack(
        [scale_transform(m, 1 / scale) for m in mouth_transforms(landmarks_TK2)]
    )
    return {
        "id": row.id,
        "frames_THWC": frames_THWC,
        "roi_THW": row.roi_THW(),
        "mel_MF": row.mel_MF(),
        "transform_T23": transform_T23,
        "landmarks_TK2": landmarks_TK2,
    }


def _source_width(video: str) -> int:
    from l2s.video import probe

    return probe(video).width


def pasted(clip: dict, drawn_THW: np.ndarray, mask_top: int) -> np.ndarray:
    from l2s.lipsync.paste import paste_clip

    return paste_clip(clip["frames_THWC"], drawn_THW, clip["transform_T23"], mask_top)


def mouth_shape(clip: dict, frames_THWC: np.ndarray | None = None) -> np.ndarray:
    """The clip's landmarks in its ROI pixels: detected on `frames_THWC` (re-drawn frames), or
    the stored ones (what preprocessing's detector found on the real frames)."""
    from l2s.face import roi_landmarks
    from l2s.lipsync.scores import roi_mouth_landmarks

    if frames_THWC is None:
        return roi_landmarks(clip["landmarks_TK2"], clip["transform_T23"])
    return roi_mouth_landmarks(frames_THWC, clip["transform_T23"])


def score_pair(x: dict, y: dict, model, expert) -> tuple[dict, dict]:
    """Rows of both tables for one pair, and what the sheet and video show."""
    from l2s.lipsync.model import pick_reference
    from l2s.lipsync.scores import lmd, psnr, ssim

    top = model.mask_top
    n = min(len(x["roi_THW"]), len(y["roi_THW"]))
    x_shape, y_shape = mouth_shape(x), mouth_shape(y)
    ref_x = x["roi_THW"][pick_reference(x["roi_THW"], top)]
    ref_y = y["roi_THW"][pick_reference(y["roi_THW"], top)]
    drawn_x = model.redraw(x["roi_THW"], x["mel_MF"], ref_x)
    drawn_yx = model.redraw(y["roi_THW"], x["mel_MF"], ref_y)
    copy_x = np.repeat(ref_x[None], len(x["roi_THW"]), axis=0)
    copy_y = np.repeat(ref_y[None], len(y["roi_THW"]), axis=0)
    rows = {}

    def sync(roi_THW: np.ndarray) -> tuple[float, int]:
        score = expert.score(roi_THW[:n], x["mel_MF"][:, : 4 * n])
        return score.confidence, score.offset

    real_conf, real_offset = sync(x["roi_THW"])
    rows[("own", "real X (bound)")] = {"lmd": 0.0, "conf": real_conf, "offset": real_offset}
    # The detector's own noise: the real ROIs pasted back and their landmarks found again.
    again = mouth_shape(x, pasted(x, x["roi_THW"], top))
    rows[("own", "real X pasted back")] = {
        "lmd": lmd(again, x_shape),
        "conf": real_conf,
        "offset": real_offset,
    }
    for name, roi_THW in (("l2s", drawn_x), ("reference copy", copy_x)):
        shape = mouth_shape(x, pasted(x, roi_THW, top))
        conf, offset = sync(roi_THW)
        rows[("own", name)] = {
            "lmd": lmd(shape, x_shape),
            "psnr": psnr(roi_THW[:, top:], x["roi_THW"][:, top:]),
            "ssim": ssim(roi_THW[:, top:], x["roi_THW"][:, top:]),
            "conf": conf,
            "offset": offset,
        }
    rows[("cross", "real X (bound)")] = dict(rows[("own", "real X (bound)")])
    conf, offset = sync(y["roi_THW"])
    rows[("cross", "unchanged Y")] = {"lmd": lmd(y_shape, x_shape), "conf": conf, "offset": offset}
    re_rendered = pasted(y, drawn_yx, top)
    for name, roi_THW, frames in (
        ("l2s", drawn_yx, re_rendered),
        ("reference copy", copy_y, pasted(y, copy_y, top)),
    ):
        conf, offset = sync(roi_THW)
        rows[("cross", name)] = {
            "lmd": lmd(mouth_shape(y, frames), x_shape),
            "conf": conf,
            "offset": offset,
        }
    shown = {"x": x, "y": y, "drawn_yx": drawn_yx, "copy_y": copy_y, "re_rendered": re_rendered}
    return rows, shown


def print_tables(results: list[dict], console: Console) -> dict:
    means: dict = {}
    for key in results[0]:
        values = [r[key] for r in results]
        means[key] = {m: float(np.mean([v[m] for v in values])) for m in values[0]}
        means[key]["abs_offset"] = float(np.mean([abs(v["offset"]) for v in values]))
    titles = {
        "own": "X re-drawn to its own speech (the truth exists)",
        "cross": "Y re-drawn to X's speech (scored against X)",
    }
    for task, title in titles.items():
        table = Table(title=f"{title}: mean over {len(results)} pairs")
        for column in ("system", "LMD ↓", "PSNR ↑", "SSIM ↑", "sync conf ↑", "|offset| ↓"):
            table.add_column(column, justify="left" if column == "system" else "right")
        for (t, system), m in means.items():
            if t != task:
                continue
            table.add_row(
                system,
                f"{m['lmd']:.2f}",
                f"{m['psnr']:.2f}" if "psnr" in m else "",
                f"{m['ssim']:.3f}" if "ssim" in m else "",
                f"{m['conf']:.3f}",
                f"{m['abs_offset']:.2f}",
            )
        console.print(table)
    return means


def write_sheet(shown: list[dict], path: Path) -> Path:
    from l2s.face.sheet import contact_sheet

    rois, labels = [], []
    for s in shown:
        x, y = s["x"], s["y"]
        n = min(len(x["roi_THW"]), len(y["roi_THW"]))
        for label, roi_THW in (
            (f"X {x['id'].split('/')[-1]} (speech)", x["roi_THW"]),
            (f"Y {y['id'].split('/')[-1]} as it was", y["roi_THW"]),
            ("Y re-drawn to X (l2s)", s["drawn_yx"]),
            ("Y reference copy", s["copy_y"]),
        ):
            rois.append(roi_THW[:n:10])
            labels.append(label)
    return contact_sheet(rois, labels, path, n_frames=min(len(r) for r in rois))


def write_side_by_side(s: dict, source_x, path: Path) -> Path:
    from l2s.audio import load_audio
    from l2s.config import AUDIO, VIDEO
    from l2s.video import write_video

    x = s["x"]
    n = min(len(x["frames_THWC"]), len(s["re_rendered"]))
    height = min(x["frames_THWC"].shape[1], s["re_rendered"].shape[1])
    frames_THWC = np.concatenate(
        [x["frames_THWC"][:n, :height], s["re_rendered"][:n, :height]], axis=2
    )
    audio_S = load_audio(source_x.video, AUDIO.sample_rate, source_x.start, n / VIDEO.fps)
    write_video(path, frames_THWC, audio_S=audio_S)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--generator", required=True, help="lip generator checkpoint or run")
    parser.add_argument("--expert", required=True, help="sync expert checkpoint or run")
    parser.add_argument(
        "--dataset", required=True, help="feature dataset (its manifest names the videos)"
    )
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=None, help="first N clips only")
    parser.add_argument("--out", default=None, help="folder for the contact sheet and video")
    args = parser.parse_args()

    from l2s.lipsync.model import LipSyncModel
    from l2s.pipeline import shards
    from l2s.pipeline.generate import source_rows
    from l2s.sync.expert import SyncExpert

    console = Console(width=120)
    start = time.perf_counter()
    model, expert = LipSyncModel.load(args.generator), SyncExpert.load(args.expert)
    rows = sorted(shards.read_features(args.dataset, split=args.split), key=lambda r: r.id)
    rows = rows[: args.limit]
    if len(rows) < 2:
        raise SystemExit(f"{args.dataset}: fewer than 2 clips in split {args.split!r}")
    sources = source_rows(args.dataset)
    missing = [row.id for row in rows if row.id not in sources]
    if missing:
        raise SystemExit(
            f"{args.dataset}: its source manifest is gone or lacks {len(missing)} clips "
            f"(first: {missing[0]}); the benchmark pastes into the source frames"
        )
    clips = [load_clip(row, sources[row.id]) for row in rows]
    results, shown = [], []
    for i, x in enumerate(clips):
        pair_rows, pair_shown = score_pair(x, clips[(i + 1) % len(clips)], model, expert)
        results.append(pair_rows)
        if i < SHEET_PAIRS:
            shown.append(pair_shown)
    means = print_tables(results, console)
    cross = {system: m for (task, system), m in means.items() if task == "cross"}
    console.print(
        f"Y re-drawn to X's speech: LMD {cross['l2s']['lmd'] / cross['unchanged Y']['lmd']:.2f}× "
        f"the unchanged Y's (target ≤ 0.6); sync confidence "
        f"{cross['l2s']['conf'] / cross['real X (bound)']['conf']:.2f}× the real X's (target ≥ 0.8)"
    )
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        console.print(f"contact sheet: {write_sheet(shown, out / 'lipsync_sheet.png')}")
        video = write_side_by_side(shown[0], sources[rows[0].id], out / "side_by_side.mp4")
        console.print(f"side by side (real X | Y re-drawn to X's speech, X's audio): {video}")
    console.print(
        f"generator {model.checkpoint}; expert {expert.checkpoint}; {len(clips)} pairs in "
        f"{time.perf_counter() - start:.0f} s ({torch.get_num_threads()} torch threads)"
    )


if __name__ == "__main__":
    main()
