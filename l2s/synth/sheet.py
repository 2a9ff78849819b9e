"""A contact sheet of the synthetic corpus's mouths across visemes: one row per viseme, one tile
per speaker, each tile the mouth at the centre of a phoneme of that viseme (from the sidecar's
phoneme timeline and landmarks), so a person can see that p/b/m close the lips, /u/ rounds
them, /i/ spreads them, and that speakers differ."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from l2s.face.sheet import contact_sheet
from l2s.synth.visemes import VISEMES, viseme_names
from l2s.video import read_frames

TILE = 96


def mouth_crop(frame_HW: np.ndarray, landmarks_K2: np.ndarray) -> np.ndarray:
    """A TILE×TILE crop centred on the lips, 1.8 mouth-widths across."""
    centre = landmarks_K2[48:68].mean(0)
    side = 1.8 * np.linalg.norm(landmarks_K2[54] - landmarks_K2[48])
    scale = TILE / side
    matrix = np.array(
        [[scale, 0, TILE / 2 - scale * centre[0]], [0, scale, TILE / 2 - scale * centre[1]]]
    )
    return cv2.warpAffine(frame_HW, matrix, (TILE, TILE), flags=cv2.INTER_AREA)


def viseme_sheet(corpus: str | Path, out: str | Path, min_duration: float = 0.06) -> Path:
    """Write the sheet for the corpus at `corpus` to `out` (PNG); return its path."""
    root = Path(corpus)
    sidecars = sorted(root.glob("*/*/*.json"))
    if not sidecars:
        raise FileNotFoundError(f"{root}: no synthetic clips (<split>/<speaker>/<utt>.json) found")
    speakers = sorted({p.parent.name for p in sidecars})
    wanted = [name for name in VISEMES if name != "rest"]
    tiles: dict[tuple[str, str], np.ndarray] = {}
    for sidecar in sidecars:
        speaker = sidecar.parent.name
        meta = json.loads(sidecar.read_text())
        todo = {}
        for label, start, end in meta["phonemes"]:
            names = viseme_names(label)
            if len(names) == 1 and end - start >= min_duration and (names[0], speaker) not in tiles:
                todo.setdefault(names[0], round((start + end) / 2 * meta["fps"]))
        if not todo:
            continue
        frames = read_frames(sidecar.with_suffix(".mp4"), gray=True)
        landmarks = np.array(meta["landmarks"])
        for name, k in todo.items():
            k = min(k, len(frames) - 1)
            tiles[name, speaker] = mouth_crop(frames[k], landmarks[k])
        if len(tiles) == len(wanted) * len(speakers):
            break
    blank = np.full((TILE, TILE), 255, np.uint8)
    rows = [np.stack([tiles.get((name, s), blank) for s in speakers]) for name in wanted]
    return contact_sheet(rows, wanted, out, n_frames=len(speakers), captions=speakers)
