"""The model windows over a clip: every caller runs the model on the same windows and cross-fades
them the same way, so what is scored is what is spoken.

The model runs over overlapping windows of a clip rather than the whole clip: its attention grows
with the square of the length, and a clip of any length (an hour of video) must fit. The mels of
the windows are cross-faded linearly where they overlap.

Letters in shape names: T video frames, H×W pixels, M mel bands, F mel frames (4·T), D embedding size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from l2s.config import AUDIO, MELS_PER_FRAME

if TYPE_CHECKING:
    from l2s.infer.model import SpeechModel

# Model windows: 10 s, overlapping by 1 s; mels are cross-faded linearly over the overlap.
WINDOW = 250
WINDOW_OVERLAP = 25


def window_starts(n_frames: int) -> list[int]:
    """First frames of the model windows over a clip of `n_frames` (one window if it fits)."""
    if n_frames <= WINDOW:
        return [0]
    return [*range(0, n_frames - WINDOW, WINDOW - WINDOW_OVERLAP), n_frames - WINDOW]


def blend_windows(mels: list[np.ndarray], starts: list[int], n_frames: int) -> np.ndarray:
    """Mels of the windows at `starts`, cross-faded linearly where they overlap: M×(4·T)."""
    if len(mels) == 1:
        return mels[0]
    total_MF = np.zeros((AUDIO.n_mels, n_frames * MELS_PER_FRAME), np.float32)
    weight_F = np.zeros(n_frames * MELS_PER_FRAME, np.float32)
    ramp = WINDOW_OVERLAP * MELS_PER_FRAME
    for mel_MF, start in zip(mels, starts, strict=True):
        w_F = np.ones(mel_MF.shape[1], np.float32)
        w_F[:ramp] = np.minimum(w_F[:ramp], np.linspace(0.01, 1, ramp)) if start else 1.0
        if start + WINDOW < n_frames:
            w_F[-ramp:] = np.minimum(w_F[-ramp:], np.linspace(1, 0.01, ramp))
        f0 = start * MELS_PER_FRAME
        total_MF[:, f0 : f0 + mel_MF.shape[1]] += mel_MF * w_F
        weight_F[f0 : f0 + mel_MF.shape[1]] += w_F
    return total_MF / weight_F


def windowed_mel(
    model: SpeechModel, roi_THW: np.ndarray, speaker_D: np.ndarray | None
) -> np.ndarray:
    """The model over overlapping windows of the clip, cross-faded into one mel of 4·T frames."""
    starts = window_starts(len(roi_THW))
    mels = [
        model.mel(roi_THW[start : start + WINDOW], speaker_D)
        for start in tqdm(starts, desc="speak", unit="window", leave=False, disable=len(starts) < 2)
    ]
    return blend_windows(mels, starts, len(roi_THW))
