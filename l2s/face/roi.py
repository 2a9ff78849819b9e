"""Landmark-aligned mouth regions of interest: 96×96 grayscale uint8, one per frame.

Letters in shape names: T frames, H×W pixels, C colour channels (RGB), K landmarks (68, iBUG
order); a transform_T23 holds one 2×3 affine matrix per frame mapping source pixels to ROI
pixels (OpenCV's warpAffine layout, pixel centres at integer coordinates).

The recipe of auto-AVSR and LipVoicer:
1. each frame's eyes and nose are fitted to the mean face (`l2s.face.template`) by a
   similarity transform whose parameters are averaged over a few frames, so head motion and
   pose are removed but landmark jitter does not shake the crop;
2. the mouth centre (mean of points 48-67), measured in the face's own aligned frame and
   averaged over the same window, is placed at the ROI centre: the mouth sits centred at a fixed
   scale whatever the speaker's proportions, and does not bob when the jaw opens.
Where it departs from auto-AVSR: the mouth corners are not among the fitted points (they move
with speech, so a smile would rescale the crop), and the warp goes straight to the 96×96 patch
(no full-frame warp), from a pyramid level that avoids aliasing when the face is large.
"""

from __future__ import annotations

import cv2
import numpy as np

from l2s.config import VIDEO
from l2s.face.template import MEAN_FACE_K2, apply_affine, params_to_matrix, similarity_fit

# Nose bridge and base (27-35) and the four eye corners: the points that move least with speech.
STABLE_K = np.array([*range(27, 36), 36, 39, 42, 45])
MOUTH = slice(48, 68)
# Eye-centre distance as a fraction of the ROI side. With the mean face's proportions the mouth
# then spans ~47 % of the width, the nose tip sits in the top quarter and the chin near the
# bottom edge: the framing of auto-AVSR's LRS3 mouth crops.
EYE_DISTANCE = 0.56
# Frames the transform and the mouth position are averaged over. auto-AVSR averages raw landmarks
# over 13; ours are already Savitzky-Golay smoothed, and on the real fixtures 13 frames lagged head
# motion (nose and eye points drifted 0.5-1.4 px/frame inside the ROI, against 0.5-0.9 with 5).
SMOOTH_FRAMES = 5


def mouth_transforms(
    landmarks_TK2: np.ndarray, size: int = VIDEO.roi_size, window: int = SMOOTH_FRAMES
) -> np.ndarray:
    """Per-frame source → ROI affine matrices (transform_T23, float64) for `crop_mouth`."""
    landmarks_TK2 = np.asarray(landmarks_TK2, dtype=np.float64)
    if landmarks_TK2.ndim != 3 or landmarks_TK2.shape[1:] != (68, 2) or not len(landmarks_TK2):
        raise ValueError(f"expected landmarks_TK2 of shape T×68×2, got {landmarks_TK2.shape}")
    if not np.isfinite(landmarks_TK2).all():
        raise ValueError("landmarks contain NaN or infinity")
    reference_K2 = MEAN_FACE_K2 * (EYE_DISTANCE * size)
    params_T4 = similarity_fit(landmarks_TK2[:, STABLE_K], reference_K2[STABLE_K])
    mouth_T12 = landmarks_TK2[:, MOUTH].mean(axis=1, keepdims=True)
    mouth_in_face_T2 = apply_affine(params_to_matrix(params_T4), mouth_T12)[:, 0]
    transform_T23 = params_to_matrix(moving_average(params_T4, window))
    transform_T23[:, :, 2] += (size - 1) / 2 - moving_average(mouth_in_face_T2, window)
    return transform_T23


def crop_mouth(
    frames_THWC: np.ndarray,
    landmarks_TK2: np.ndarray,
    size: int = VIDEO.roi_size,
    transform_T23: np.ndarray | None = None,
) -> np.ndarray:
    """Mouth ROIs roi_THW (uint8 grayscale, size×size) aligned to the mean face.

    Pass `transform_T23` from `mouth_transforms` when the caller also needs the mapping
    (e.g. to put landmarks into ROI coordinates with `roi_landmarks`).
    """
    frames_THWC = np.asarray(frames_THWC)
    if frames_THWC.ndim != 4 or frames_THWC.shape[-1] != 3 or frames_THWC.dtype != np.uint8:
        raise ValueError(
            f"expected RGB uint8 frames_THWC, got shape {frames_THWC.shape} {frames_THWC.dtype}"
        )
    if transform_T23 is None:
        transform_T23 = mouth_transforms(landmarks_TK2, size)
    if len(transform_T23) != len(frames_THWC):
        raise ValueError(f"{len(frames_THWC)} frames but {len(transform_T23)} transforms")
    # Shrinking by more than 2× with bilinear sampling aliases (skipped pixels): warp from the
    # Gaussian-pyramid level that keeps the remaining shrink within 2×. One level per clip, so
    # sharpness does not flicker between frames.
    scale = float(np.median(np.hypot(transform_T23[:, 0, 0], transform_T23[:, 1, 0])))
    level = max(0, int(np.floor(np.log2(1.0 / scale)))) if scale > 0 else 0
    factor = 2.0**level
    roi_THW = np.empty((len(frames_THWC), size, size), dtype=np.uint8)
    for t, (frame_HWC, matrix_23) in enumerate(zip(frames_THWC, transform_T23, strict=True)):
        image = cv2.cvtColor(np.ascontiguousarray(frame_HWC), cv2.COLOR_RGB2GRAY)
        for _ in range(level):
            image = cv2.pyrDown(image)
        # Level-l pixel x_l covers source pixel x = 2^l·x_l + (2^l − 1)/2.
        linear_22 = matrix_23[:, :2] * factor
        offset_2 = matrix_23[:, 2] + matrix_23[:, :2] @ np.full(2, (factor - 1) / 2)
        roi_THW[t] = cv2.warpAffine(
            image,
            np.concatenate([linear_22, offset_2[:, None]], axis=1),
            (size, size),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0,
        )
    return roi_THW


def roi_landmarks(landmarks_TK2: np.ndarray, transform_T23: np.ndarray) -> np.ndarray:
    """Landmarks in ROI pixel coordinates (float32 TK2), through the crop's own transforms."""
    return apply_affine(
        np.asarray(transform_T23, dtype=np.float64), np.asarray(landmarks_TK2, dtype=np.float64)
    ).astype(np.float32)


def moving_average(values_TX: np.ndarray, window: int) -> np.ndarray:
    """Centred mean over `window` frames, the window shrinking symmetrically at the clip ends
    (so the first and last frames are not pulled towards their neighbours' side)."""
    values_TX = np.asarray(values_TX, dtype=np.float64)
    n = len(values_TX)
    t = np.arange(n)
    margin = np.minimum(np.minimum(window // 2, t), n - 1 - t)
    cumsum = np.concatenate([np.zeros_like(values_TX[:1]), np.cumsum(values_TX, axis=0)])
    return (cumsum[t + margin + 1] - cumsum[t - margin]) / (2 * margin + 1)[:, None]
