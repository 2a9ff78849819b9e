"""Lip-generator training data: windows of frames to re-draw, each with a reference frame of the
same clip, the audio that drives each frame, and the audio around the window for the sync loss.

From each clip, `spans_per_clip` random windows of WINDOW_FRAMES consecutive frames per epoch.
The reference is a frame outside the window (at least REFERENCE_GAP frames away when the clip
allows), as Wav2Lip draws it: its mouth is some other mouth, so the shape must come from the
audio. Each frame is driven by the 0.2 s of log-mel centred on it (`mel_windows_at`); the sync
expert compares the whole window with its own audio and the audio shifted up to `sync_shift`
frames (`sync_data.span`).

Letters in shape names: C clips, K frames in a window, H×W pixels, M mel bands, W mel frames in a
window, P sync audio windows (1 + 2·sync_shift), T video frames.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from l2s.config import VIDEO
from l2s.models.lipgen import mel_windows_at
from l2s.models.syncnet import WINDOW_FRAMES, normalize_clip_mel
from l2s.train.data import Utterance
from l2s.train.sync_data import min_frames, shuffled_batches, span

REFERENCE_GAP = 5


@dataclass(frozen=True)
class LipBatch:
    target_CKHW: torch.Tensor  # float32 in [0, 1]: the frames to re-draw (and their truth)
    reference_CHW: torch.Tensor  # float32 in [0, 1]
    mel_CKMW: torch.Tensor  # the clip-normalised log-mel centred on each frame
    sync_mel_CPMW: torch.Tensor  # the window's audio and its shifts, for the sync expert

    def __len__(self) -> int:
        return self.target_CKHW.shape[0]

    def to(self, device: torch.device) -> LipBatch:
        return LipBatch(*(t.to(device, non_blocking=True) for t in self.tensors()))

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return self.target_CKHW, self.reference_CHW, self.mel_CKMW, self.sync_mel_CPMW

    def visible_CKHW(self, share: float) -> torch.Tensor:
        """The frames whose rows above the mask the generator sees: the window's own, or, for
        each window with probability `share`, its reference frame's in every frame. A frame's
        own cheeks and nostrils move with its clip's speech and show the mouth without the
        audio; re-drawing a clip to other speech, they show the wrong one."""
        if share <= 0:
            return self.target_CKHW
        borrowed_C111 = torch.rand(len(self), 1, 1, 1, device=self.target_CKHW.device) < share
        return torch.where(borrowed_C111, self.reference_CHW[:, None], self.target_CKHW)


def reference_frame(n_frames: int, start: int, rng: np.random.Generator) -> int:
    """A random frame at least REFERENCE_GAP frames from the window starting at `start` (the
    farthest frame from it when the clip is too short for that)."""
    far = [
        t
        for t in range(n_frames)
        if t <= start - REFERENCE_GAP or t >= start + WINDOW_FRAMES - 1 + REFERENCE_GAP
    ]
    if far:
        return int(far[rng.integers(len(far))])
    centre = start + WINDOW_FRAMES // 2
    return 0 if centre >= n_frames - 1 - centre else n_frames - 1


def lip_window(
    utt: Utterance, mel_MF: np.ndarray, start: int, reference: int, sync_shift: int
) -> tuple[np.ndarray, ...]:
    """One training example: target_KHW, reference_HW (uint8), mel_KMW and sync_mel_PMW; `mel_MF`
    is the clip's normalised log-mel."""
    _, sync_mel_PMW = span(utt.roi_THW, mel_MF, start, 1, sync_shift)
    times_K = (start + np.arange(WINDOW_FRAMES) + 0.5) / VIDEO.fps
    return (
        utt.roi_THW[start : start + WINDOW_FRAMES],
        utt.roi_THW[reference],
        mel_windows_at(mel_MF, times_K),
        sync_mel_PMW,
    )


def collate(examples: list[tuple[np.ndarray, ...]]) -> LipBatch:
    target, reference, mel, sync_mel = (np.stack(column) for column in zip(*examples, strict=True))
    return LipBatch(
        torch.from_numpy(target).float() / 255.0,
        torch.from_numpy(reference).float() / 255.0,
        torch.from_numpy(mel),
        torch.from_numpy(sync_mel),
    )


def lip_batches(
    clips: Iterable[Utterance],
    batch_size: int,
    sync_shift: int,
    spans_per_clip: int,
    rng: np.random.Generator,
) -> Iterator[LipBatch]:
    """One epoch of windows from every clip long enough, shuffled and batched."""

    def windows() -> Iterator[tuple[np.ndarray, ...]]:
        for utt in clips:
            if utt.n_frames < min_frames(sync_shift):
                continue
            mel_MF = normalize_clip_mel(utt.mel_MF)
            last = utt.n_frames - WINDOW_FRAMES - sync_shift
            for start in rng.integers(sync_shift, last + 1, spans_per_clip):
                reference = reference_frame(utt.n_frames, int(start), rng)
                yield lip_window(utt, mel_MF, int(start), reference, sync_shift)

    return shuffled_batches(windows(), batch_size, rng, collate)
