"""Track one face through a clip: 68 landmarks per frame, whichever backend finds the face.

Letters in shape names: T frames, H×W pixels, C colour channels (RGB), K landmarks (68, iBUG
order), N faces or items, F frames where the detector found a face. A box is (x0, y0, x1, y1) in
source pixels.

The detector runs on every `detect_every`-th frame only; between two detections the box is
interpolated and the landmark fit runs on every frame at native resolution. Where a search fails
next to one that succeeds, or the kept box jumps between searches, every frame in that gap is
searched, so face-less stretches and cuts are located to the frame. Frames with no face nearby
get landmarks interpolated (or held) from their neighbours and are marked not detected.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from l2s.face.backend import FaceConfig, FaceDetector, FaceError, load_detector

FACE = FaceConfig()
# Kept boxes of two consecutive searches overlapping less than this are a jump (a cut, another
# face taking over as the largest, a fast move): interpolating across it would be wrong.
JUMP_IOU = 0.3


@dataclass(frozen=True, kw_only=True)
class LandmarkTrack:
    """The landmarks of the largest face in every frame of a clip."""

    landmarks_TK2: np.ndarray  # float32, source pixels, smoothed over time
    detected_T: np.ndarray  # bool: False where landmarks were interpolated from neighbours
    boxes_T4: np.ndarray  # float32: the box the landmarks were fitted in (NaN if not detected)
    n_faces: int  # most large faces seen together in the clip (we keep the largest)
    backend: str

    @property
    def face_ratio(self) -> float:
        """Fraction of frames with a detected face (FeatureRow.face_ratio)."""
        return float(self.detected_T.mean())


def detect_landmarks(
    frames_THWC: np.ndarray, config: FaceConfig = FACE, detector: FaceDetector | None = None
) -> LandmarkTrack:
    """68 landmarks of the largest face in every frame; raises FaceError if no frame has a face.

    `detector` lets a stage pass a backend it loaded once in its setup; by default the backend
    `config` names is loaded (and cached per process).
    """
    frames_THWC = np.asarray(frames_THWC)
    if frames_THWC.ndim != 4 or frames_THWC.shape[-1] != 3 or frames_THWC.dtype != np.uint8:
        raise ValueError(
            f"expected RGB uint8 frames_THWC, got shape {frames_THWC.shape} {frames_THWC.dtype}"
        )
    n_frames = len(frames_THWC)
    if n_frames == 0:
        raise FaceError("clip has no frames")
    detector = detector or load_detector(config)
    every = config.detect_every

    searched: dict[int, np.ndarray] = {}
    sampled = sorted({*range(0, n_frames, every), n_frames - 1})
    _search(detector, frames_THWC, sampled, searched)
    kept = {t: _largest(boxes_N4) for t, boxes_N4 in searched.items() if len(boxes_N4)}
    unsure = [
        t
        for a, b in pairwise(sampled)
        if (a in kept) != (b in kept) or (a in kept and _iou(kept[a], kept[b]) < JUMP_IOU)
        for t in range(a + 1, b)
    ]
    _search(detector, frames_THWC, unsure, searched)
    kept = {t: _largest(boxes_N4) for t, boxes_N4 in sorted(searched.items()) if len(boxes_N4)}
    if not kept:
        raise FaceError(
            f"no face found in any frame: searched {len(searched)} of {n_frames} frames with the "
            f"{detector.name} detector"
        )

    found_F = np.array(list(kept))
    boxes_F4 = np.stack(list(kept.values()))
    detected_T = np.zeros(n_frames, dtype=bool)
    detected_T[found_F] = True
    for a, b in pairwise(found_F):
        if b - a <= every:
            detected_T[a:b] = True
    tracked = np.flatnonzero(detected_T)
    boxes_T4 = np.full((n_frames, 4), np.nan, dtype=np.float32)
    boxes_T4[tracked] = _interp_rows(tracked, found_F, boxes_F4)

    fitted_NK2 = detector.fit_landmarks([frames_THWC[t] for t in tracked], boxes_T4[tracked])
    landmarks_TK2 = _interp_rows(np.arange(n_frames), tracked, fitted_NK2.reshape(len(tracked), -1))
    landmarks_TK2 = savgol(landmarks_TK2, config.smooth_window).reshape(n_frames, -1, 2)
    return LandmarkTrack(
        landmarks_TK2=landmarks_TK2.astype(np.float32),
        detected_T=detected_T,
        boxes_T4=boxes_T4,
        n_faces=count_faces([searched[t] for t in sampled], config.large_face_ratio),
        backend=detector.name,
    )


def count_faces(boxes_per_frame: list[np.ndarray], large_face_ratio: float) -> int:
    """Most large faces seen together on at least two searched frames (one if only one had any).

    Two frames, so that a single spurious box does not make a clip "multi-speaker".
    """
    counts = sorted(
        (
            int((_side(boxes_N4) >= large_face_ratio * _side(boxes_N4).max()).sum())
            for boxes_N4 in boxes_per_frame
            if len(boxes_N4)
        ),
        reverse=True,
    )
    if not counts:
        return 0
    return counts[min(2, len(counts)) - 1]


def savgol(values_TX: np.ndarray, window: int, order: int = 2) -> np.ndarray:
    """Savitzky-Golay smoothing along time of each column of values_TX.

    Why this filter: landmark fits jitter by 1-2 px from frame to frame, which would shake the
    mouth crop; a moving average removes the jitter but also flattens fast lip closures
    (a /p/ lasts 2-3 frames at 25 fps), which a local quadratic fit keeps.
    Edges are padded by point reflection, which keeps a linear trend going at the ends.
    """
    n = len(values_TX)
    window = min(window, n if n % 2 else n - 1)
    if window <= order + 1:
        return values_TX.astype(np.float64)
    half = window // 2
    offsets = np.arange(-half, half + 1, dtype=np.float64)
    # Row 0 of the pseudo-inverse of the Vandermonde matrix evaluates the fitted polynomial at 0.
    weights_W = np.linalg.pinv(np.vander(offsets, order + 1, increasing=True))[0]
    values_TX = values_TX.astype(np.float64)
    padded = np.concatenate(
        [
            2 * values_TX[:1] - values_TX[half:0:-1],
            values_TX,
            2 * values_TX[-1:] - values_TX[-2 : -half - 2 : -1],
        ]
    )
    windows_TXW = np.lib.stride_tricks.sliding_window_view(padded, window, axis=0)
    return windows_TXW @ weights_W


def _search(
    detector: FaceDetector, frames_THWC: np.ndarray, indices: list[int], into: dict
) -> None:
    todo = [t for t in indices if t not in into]
    if todo:
        into.update(zip(todo, detector.find_faces([frames_THWC[t] for t in todo]), strict=True))


def _side(boxes_N4: np.ndarray) -> np.ndarray:
    return np.sqrt(
        np.clip(boxes_N4[:, 2] - boxes_N4[:, 0], 0, None)
        * np.clip(boxes_N4[:, 3] - boxes_N4[:, 1], 0, None)
    )


def _largest(boxes_N4: np.ndarray) -> np.ndarray:
    return boxes_N4[int(np.argmax(_side(boxes_N4)))].astype(np.float32)


def _iou(a_4: np.ndarray, b_4: np.ndarray) -> float:
    width = min(a_4[2], b_4[2]) - max(a_4[0], b_4[0])
    height = min(a_4[3], b_4[3]) - max(a_4[1], b_4[1])
    inter = max(width, 0.0) * max(height, 0.0)
    union = _side(a_4[None])[0] ** 2 + _side(b_4[None])[0] ** 2 - inter
    return float(inter / union) if union > 0 else 0.0


def _interp_rows(t_new: np.ndarray, t_known: np.ndarray, values_NX: np.ndarray) -> np.ndarray:
    """Linear interpolation of each column over time; held constant beyond the known ends."""
    return np.stack([np.interp(t_new, t_known, column) for column in values_NX.T], axis=1).astype(
        np.float32
    )
