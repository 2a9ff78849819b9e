"""How close re-drawn mouths come to real ones: mouth-landmark distance (LMD), and PSNR / SSIM of
the mouth region of the ROI.

LMD follows Chen et al. (2018): the mean Euclidean distance between the 20 mouth landmarks
(iBUG 48-67) of two clips, frame by frame, here in ROI pixels (both clips' landmarks mapped
through their own ROI alignment, so head pose and position drop out: what is left is the shape
of the mouth). The landmarks of re-drawn frames come from the same detector as preprocessing,
run on the frames with the ROI pasted back (`roi_mouth_landmarks`).

Letters in shape names: T frames, H×W pixels, C colours, K landmarks (68).
"""

from __future__ import annotations

import cv2
import numpy as np

from l2s.face import detect_landmarks, roi_landmarks

MOUTH = slice(48, 68)


def lmd(a_TK2: np.ndarray, b_TK2: np.ndarray) -> float:
    """Mean distance between the mouth landmarks of two clips (ROI pixels), over the frames both
    have."""
    n = min(len(a_TK2), len(b_TK2))
    return float(np.linalg.norm(a_TK2[:n, MOUTH] - b_TK2[:n, MOUTH], axis=-1).mean())


def roi_mouth_landmarks(frames_THWC: np.ndarray, transform_T23: np.ndarray) -> np.ndarray:
    """68 landmarks of the face in each frame (the preprocessing detector), in the ROI pixels of
    `transform_T23` (the clip's own alignment)."""
    return roi_landmarks(detect_landmarks(frames_THWC).landmarks_TK2, transform_T23)


def psnr(a_THW: np.ndarray, b_THW: np.ndarray) -> float:
    """Peak signal-to-noise ratio of uint8 images, in dB, over all their pixels."""
    mse = float(np.mean((a_THW.astype(np.float64) - b_THW.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def ssim(a_THW: np.ndarray, b_THW: np.ndarray) -> float:
    """Mean structural similarity (Wang et al. 2004: Gaussian window σ 1.5, K1 0.01, K2 0.03) of
    uint8 grayscale frames, averaged over frames."""
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    scores = []
    for a_HW, b_HW in zip(a_THW.astype(np.float64), b_THW.astype(np.float64), strict=True):

        def blur(x: np.ndarray) -> np.ndarray:
            return cv2.GaussianBlur(x, (11, 11), 1.5)

        mu_a, mu_b = blur(a_HW), blur(b_HW)
        var_a = blur(a_HW * a_HW) - mu_a**2
        var_b = blur(b_HW * b_HW) - mu_b**2
        cov = blur(a_HW * b_HW) - mu_a * mu_b
        ssim_HW = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
            (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
        )
        scores.append(float(ssim_HW.mean()))
    return float(np.mean(scores))
