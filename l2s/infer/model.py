"""`SpeechModel`: a trained checkpoint's network, its speaker table and its URI; mouth ROIs → log-mel.

    model = SpeechModel.load("out/runs/tiny")            # a run directory or one checkpoint
    mel_MF = model.mel(roi_THW, model.speaker("s01"))    # a named training speaker's voice
    mels = model.mels([roi_a, roi_b], [voice_a, None])   # a padded batch in one forward pass

Letters in shape names: T video frames, H×W pixels, M mel bands, F mel frames, D embedding size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from l2s.config import MELS_PER_FRAME, VIDEO
from l2s.infer.checkpoint import load_model, resolve
from l2s.infer.speakers import SpeakerTable
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

    @torch.inference_mode()
    def mels(
        self, rois: Sequence[np.ndarray], speakers: Sequence[np.ndarray | None]
    ) -> list[np.ndarray]:
        """Several clips in one forward pass (the server's dynamic batches): the ROIs are padded
        to the longest clip, the model masks the padding, and each mel is cut back to 4·T.
        A missing speaker is the zero vector, the model's "no speaker" input."""
        if len(rois) != len(speakers):
            raise ValueError(f"{len(rois)} clips but {len(speakers)} speaker embeddings")
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
