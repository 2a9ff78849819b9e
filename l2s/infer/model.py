"""`SpeechModel`: a trained checkpoint's network, its speaker table and its URI; mouth ROIs → log-mel.

    model = SpeechModel.load("out/runs/tiny")            # a run directory or one checkpoint
    mel_MF = model.mel(roi_THW, model.speaker("s01"))    # a named training speaker's voice
    mels = model.mels([roi_a, roi_b], [voice_a, None])   # clips of any length, windows batched

Every clip runs over the model windows of `l2s.infer.windows`, whoever calls.

Letters in shape names: T video frames, H×W pixels, M mel bands, F mel frames, D embedding size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from l2s.config import MELS_PER_FRAME, VIDEO
from l2s.infer.checkpoint import load_model, resolve
from l2s.infer.speakers import SpeakerTable
from l2s.infer.windows import WINDOW, WINDOWS_PER_PASS, blend_windows, window_starts
from l2s.models.frontend import crop, normalize_video
from l2s.models.lip2speech import Lip2Speech


@dataclass
class SpeechModel:
    network: Lip2Speech
    speakers: SpeakerTable
    checkpoint: str  # the URI it was loaded from (a run directory's latest, when loaded)

    @classmethod
    def load(cls, checkpoint: str, device: str = "cpu") -> SpeechModel:
        uri = resolve(checkpoint)
        network, speakers = load_model(uri, device)
        return cls(network, speakers, uri)

    def speaker(self, name: str) -> np.ndarray | None:
        """The train-split mean embedding of a speaker the model was trained on (None otherwise)."""
        return self.speakers.embedding(name)

    def mel(self, roi_THW: np.ndarray, speaker_D: np.ndarray | None) -> np.ndarray:
        """96×96 uint8 mouth ROIs at 25 fps → log-mel M×(4·T) (centre 88×88 crop, as in validation)."""
        return self.mels([roi_THW], [speaker_D])[0]

    def mels(
        self,
        rois: Sequence[np.ndarray],
        speakers: Sequence[np.ndarray | None],
        per_pass: int = WINDOWS_PER_PASS,
        progress: bool = False,
    ) -> list[np.ndarray]:
        """Clips of any length → one mel each: every clip is cut into its model windows, the
        windows of all clips run in padded forward passes of up to `per_pass` windows
        (`window_mels`), and each clip's windows are cross-faded back into one mel of 4·T frames."""
        if len(rois) != len(speakers):
            raise ValueError(f"{len(rois)} clips but {len(speakers)} speaker embeddings")
        starts = [window_starts(len(roi_THW)) for roi_THW in rois]
        windows = [
            (roi_THW[start : start + WINDOW], speaker_D)
            for roi_THW, speaker_D, clip_starts in zip(rois, speakers, starts, strict=True)
            for start in clip_starts
        ]
        passes = range(0, len(windows), per_pass)
        window_mels: list[np.ndarray] = []
        for first in tqdm(passes, desc="model", unit="pass", leave=False, disable=not progress):
            batch = windows[first : first + per_pass]
            window_mels += self.window_mels([w for w, _ in batch], [s for _, s in batch])
        in_order = iter(window_mels)
        return [
            blend_windows([next(in_order) for _ in clip_starts], clip_starts, len(roi_THW))
            for roi_THW, clip_starts in zip(rois, starts, strict=True)
        ]

    @torch.inference_mode()
    def window_mels(
        self, rois: Sequence[np.ndarray], speakers: Sequence[np.ndarray | None]
    ) -> list[np.ndarray]:
        """Clips of at most one window each in one forward pass (the endpoint's batches of the
        windows of concurrent requests): the ROIs are padded to the longest clip, the model masks
        the padding, and each mel is cut back to 4·T. A missing speaker is the zero vector, the
        model's "no speaker" input."""
        if len(rois) != len(speakers):
            raise ValueError(f"{len(rois)} clips but {len(speakers)} speaker embeddings")
        if max(len(roi_THW) for roi_THW in rois) > WINDOW:
            raise ValueError(f"a clip over one model window ({WINDOW} frames): use `mels`")
        device = self.network.mel_mean_M.device
        lengths = [len(roi_THW) for roi_THW in rois]
        size = VIDEO.crop_size
        video_BTHW = torch.zeros(len(rois), max(lengths), size, size, dtype=torch.uint8)
        for b, roi_THW in enumerate(rois):
            video_BTHW[b, : lengths[b]] = torch.from_numpy(
                np.ascontiguousarray(crop(roi_THW, None))
            )
        lengths_B = None if len(set(lengths)) == 1 else torch.tensor(lengths, device=device)
        speaker_BD = None
        if any(s is not None for s in speakers):
            zeros_D = np.zeros(self.network.cfg.speaker_dim, np.float32)
            speaker_BD = torch.from_numpy(
                np.stack([zeros_D if s is None else np.asarray(s, np.float32) for s in speakers])
            ).to(device)
        output = self.network(normalize_video(video_BTHW).to(device), lengths_B, speaker_BD)
        mel_BMF = output.mel_post_BMF.float().cpu().numpy()
        return [mel_BMF[b, :, : n * MELS_PER_FRAME] for b, n in enumerate(lengths)]

    def mean_mel(self, n_frames: int) -> np.ndarray:
        """The constant mean-mel predictor (a baseline): the training mel mean at every frame."""
        mean_M = self.network.mel_mean_M.float().cpu().numpy()
        return np.repeat(mean_M[:, None], 4 * n_frames, axis=1)
