"""`SyncExpert`: a trained sync expert scoring how well a clip's audio matches its lips.

    expert = SyncExpert.load("out/runs/sync")           # a run directory or one checkpoint
    score = expert.score(roi_THW, mel_MF)                # 25 fps ROIs, THE log-mel (4 per frame)
    score.offset, score.confidence, score.distance

The scores follow SyncNet's evaluation (syncnet_python, as Wav2Lip's LSE-D / LSE-C): every
5-frame window of the video is embedded, and so is the audio window at every whole-frame offset
from −max_offset to +max_offset; the mean distance between the two over the clip is computed for
each offset (over the windows where both exist). The best offset is the one at the least mean
distance, `distance` is that least distance (LSE-D-like: lower is better) and `confidence` the
median distance over all offsets minus it (LSE-C-like: higher is better). Embeddings are unit
vectors, so distances lie in [0, 2]: the numbers are this expert's, not comparable with SyncNet's.

`offset` is in video frames, positive when the audio comes late (a sound is heard `offset`
frames after the lips make it): delay the video, or advance the audio, by that much to fix it.

Letters in shape names: T video frames, H×W pixels, M mel bands, F mel frames, E embedding size,
P audio window positions, D offsets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from l2s.config import MELS_PER_FRAME, VIDEO
from l2s.infer.checkpoint import SYNC_FILE, read_model, resolve
from l2s.models.syncnet import (
    WINDOW_FRAMES,
    WINDOW_MELS,
    SyncConfig,
    SyncNet,
    normalize_clip_mel,
)
from l2s.sync import SyncError

MAX_OFFSET = 15  # frames each way, as syncnet_python's default search
# An offset is compared over at least this many windows; fewer would make its mean a guess.
MIN_OVERLAP = 5
WINDOWS_PER_PASS = 256


@dataclass(frozen=True)
class SyncScore:
    offset: int  # video frames; positive: the audio comes late
    confidence: float  # median minus least mean distance over the offsets (higher: surer)
    distance: float  # the least mean distance (lower: closer)
    distances_D: np.ndarray  # the mean distance at each offset, -max_offset … +max_offset
    windows: int  # 5-frame windows compared at the best offset


def video_windows(roi_THW: np.ndarray) -> np.ndarray:
    """Every window of WINDOW_FRAMES consecutive ROIs: windows_PKHW (a view, no copy)."""
    if len(roi_THW) < WINDOW_FRAMES:
        raise SyncError(f"need at least {WINDOW_FRAMES} frames, got {len(roi_THW)}")
    view = np.lib.stride_tricks.sliding_window_view(roi_THW, WINDOW_FRAMES, axis=0)
    return np.moveaxis(view, -1, 1)


def audio_windows(mel_MF: np.ndarray) -> np.ndarray:
    """The WINDOW_MELS-frame window starting at every whole video frame: windows_PMW."""
    if mel_MF.ndim != 2 or mel_MF.shape[1] < WINDOW_MELS:
        raise SyncError(f"need at least {WINDOW_MELS} mel frames (0.2 s), got {mel_MF.shape}")
    starts = range(0, mel_MF.shape[1] - WINDOW_MELS + 1, MELS_PER_FRAME)
    return np.stack([mel_MF[:, s : s + WINDOW_MELS] for s in starts])


def shift_mel(mel_MF: np.ndarray, frames: int) -> np.ndarray:
    """The clip's audio `frames` video frames late (early when negative), at the same length: what
    an AV offset does to a recording. The gap is filled with the clip's quietest level per band."""
    n = abs(frames) * MELS_PER_FRAME
    if n == 0:
        return mel_MF.copy()
    if n >= mel_MF.shape[1]:
        raise SyncError(f"a shift of {frames} frames is longer than the clip")
    quiet_MN = np.repeat(mel_MF.min(axis=1, keepdims=True), n, axis=1)
    if frames > 0:
        return np.concatenate([quiet_MN, mel_MF[:, :-n]], axis=1)
    return np.concatenate([mel_MF[:, n:], quiet_MN], axis=1)


def offset_distances(video_TE: np.ndarray, audio_PE: np.ndarray, max_offset: int) -> np.ndarray:
    """Mean distance between video window t and audio window t + d, over the t where both exist,
    for d = -max_offset … +max_offset (NaN where they share fewer than MIN_OVERLAP windows)."""
    distances_D = np.full(2 * max_offset + 1, np.nan)
    for i, d in enumerate(range(-max_offset, max_offset + 1)):
        first, last = max(0, -d), min(len(video_TE), len(audio_PE) - d)
        if last - first >= MIN_OVERLAP:
            gap_TE = video_TE[first:last] - audio_PE[first + d : last + d]
            distances_D[i] = float(np.linalg.norm(gap_TE, axis=1).mean())
    return distances_D


def score_embeddings(video_TE: np.ndarray, audio_PE: np.ndarray, max_offset: int) -> SyncScore:
    distances_D = offset_distances(video_TE, audio_PE, max_offset)
    if np.isnan(distances_D).all():
        raise SyncError(
            f"video ({len(video_TE)} windows) and audio ({len(audio_PE)}) overlap too little"
        )
    best = int(np.nanargmin(distances_D))
    offset = best - max_offset
    overlap = min(len(video_TE), len(audio_PE) - offset) - max(0, -offset)
    return SyncScore(
        offset=offset,
        confidence=float(np.nanmedian(distances_D) - distances_D[best]),
        distance=float(distances_D[best]),
        distances_D=distances_D,
        windows=int(overlap),
    )


def recover_offsets(
    network: SyncNet,
    roi_THW: np.ndarray,
    mel_MF: np.ndarray,
    shifts: list[int],
    device: torch.device,
    max_offset: int = MAX_OFFSET,
) -> list[SyncScore]:
    """The score of the clip with its audio shifted by each of `shifts` frames (`shift_mel`): a
    perfect expert finds `offset == shift` (plus the clip's own offset, if it has one). The video
    is embedded once."""
    video_TE = embed_video(network, roi_THW, device)
    return [
        score_embeddings(video_TE, embed_audio(network, shift_mel(mel_MF, s), device), max_offset)
        for s in shifts
    ]


@dataclass
class SyncExpert:
    network: SyncNet
    checkpoint: str  # the URI it was loaded from

    @classmethod
    def load(cls, checkpoint: str, device: str | torch.device = "cpu") -> SyncExpert:
        uri = resolve(checkpoint, SYNC_FILE)
        saved = read_model(uri, SYNC_FILE)
        network = SyncNet(SyncConfig.from_dict(saved["model_config"]))
        network.load_state_dict(saved["model"])
        return cls(network.to(device).eval(), uri)

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    @torch.no_grad()
    def embed(self, roi_THW: np.ndarray, mel_MF: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings of every video window (T − 4) and every audio window at whole frames."""
        return embed_clip(self.network, roi_THW, mel_MF, self.device)

    def score(self, roi_THW: np.ndarray, mel_MF: np.ndarray, max_offset: int = MAX_OFFSET):
        """How well the log-mel matches the 25 fps mouth ROIs (`SyncScore`)."""
        return score_embeddings(*self.embed(roi_THW, mel_MF), max_offset)


@torch.no_grad()
def embed_clip(
    network: SyncNet, roi_THW: np.ndarray, mel_MF: np.ndarray, device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """`SyncExpert.embed` for any network in eval mode (training validates with its own)."""
    return embed_video(network, roi_THW, device), embed_audio(network, mel_MF, device)


@torch.no_grad()
def embed_video(network: SyncNet, roi_THW: np.ndarray, device: torch.device) -> np.ndarray:
    """The embedding of every 5-frame window of 96×96 ROIs, video_TE (T − 4 rows)."""
    if roi_THW.ndim != 3 or roi_THW.shape[1:] != (VIDEO.roi_size, VIDEO.roi_size):
        raise SyncError(f"expected T×{VIDEO.roi_size}×{VIDEO.roi_size} ROIs, got {roi_THW.shape}")
    windows_PKHW = video_windows(roi_THW)
    return (
        torch.cat(
            [
                network.embed_video(torch.from_numpy(np.ascontiguousarray(chunk)).to(device))
                for chunk in _chunks(windows_PKHW)
            ]
        )
        .cpu()
        .numpy()
    )


@torch.no_grad()
def embed_audio(network: SyncNet, mel_MF: np.ndarray, device: torch.device) -> np.ndarray:
    """The embedding of the 0.2-s window at every whole video frame of a log-mel, audio_PE."""
    windows_PMW = audio_windows(normalize_clip_mel(np.asarray(mel_MF, np.float32)))
    return (
        torch.cat(
            [
                network.embed_audio(torch.from_numpy(chunk).to(device))
                for chunk in _chunks(windows_PMW)
            ]
        )
        .cpu()
        .numpy()
    )


def _chunks(array: np.ndarray) -> list[np.ndarray]:
    return [array[i : i + WINDOWS_PER_PASS] for i in range(0, len(array), WINDOWS_PER_PASS)]
