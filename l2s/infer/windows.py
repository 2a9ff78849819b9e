"""The model windows over a clip, the same for every caller: batch generation (what `l2s score`
scores), `l2s speak`, dubbing (all through `SpeechModel.mels`) and the endpoint (which batches the
windows of concurrent requests) cut a clip at the same frames and cross-fade the same way.

The model runs over overlapping windows of a clip rather than the whole clip: its attention grows
with the square of the length, and a clip of any length (an hour of video) must fit. The mels of
the windows are cross-faded linearly where they overlap.

Letters in shape names: T video frames, M mel bands, F mel frames (4·T).
"""

from __future__ import annotations

import numpy as np

from l2s.config import MELS_PER_FRAME

# Model windows: 10 s, overlapping by 1 s; mels are cross-faded linearly over the overlap.
WINDOW = 250
WINDOW_OVERLAP = 25
# Windows per forward pass when the caller does not say (tiny preset, one CPU thread: one pass
# over 8 windows took 2.2 s, over one 0.7 s; peak resident memory 490 MiB against 370).
WINDOWS_PER_PASS = 8


def window_starts(n_frames: int) -> list[int]:
    """First frames of the model windows over a clip of `n_frames` (one window if it fits)."""
    if n_frames <= WINDOW:
        return [0]
    return [*range(0, n_frames - WINDOW, WINDOW - WINDOW_OVERLAP), n_frames - WINDOW]


def blend_windows(
    mels: list[np.ndarray], starts: list[int], n_frames: int, per_frame: int = MELS_PER_FRAME
) -> np.ndarray:
    """Mels of the windows at `starts`, cross-faded linearly where they overlap: M×(4·T). Any
    C×(per_frame·T) arrays blend alike (the CTC log-probabilities V×T, with `per_frame` 1)."""
    if len(mels) == 1:
        return mels[0]
    total_MF = np.zeros((mels[0].shape[0], n_frames * per_frame), np.float32)
    weight_F = np.zeros(n_frames * per_frame, np.float32)
    ramp = WINDOW_OVERLAP * per_frame
    for mel_MF, start in zip(mels, starts, strict=True):
        w_F = np.ones(mel_MF.shape[1], np.float32)
        w_F[:ramp] = np.minimum(w_F[:ramp], np.linspace(0.01, 1, ramp)) if start else 1.0
        if start + WINDOW < n_frames:
            w_F[-ramp:] = np.minimum(w_F[-ramp:], np.linspace(1, 0.01, ramp))
        f0 = start * per_frame
        total_MF[:, f0 : f0 + mel_MF.shape[1]] += mel_MF * w_F
        weight_F[f0 : f0 + mel_MF.shape[1]] += w_F
    return total_MF / weight_F
