"""`LipSyncModel`: a trained lip generator re-drawing the mouth of aligned ROIs to new speech.

    model = LipSyncModel.load("out/runs/lipsync")        # a run directory or one checkpoint
    drawn_THW = model.redraw(roi_THW, mel_MF)            # 25 fps ROIs, THE log-mel of the speech

Every frame keeps what lies above the mask (the nose and cheeks) and gets its mouth region drawn
from one reference frame of the same clip (`pick_reference`: the frame closest to the clip's
median face, a typical mouth) and the 0.2 s of speech centred on the frame's time.

Letters in shape names: T frames, H×W pixels, M mel bands, F mel frames, W mel frames in a window.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from l2s.config import VIDEO
from l2s.infer.checkpoint import LIPSYNC_FILE, read_model, resolve
from l2s.lipsync import LipSyncError
from l2s.models.lipgen import LipGenConfig, LipGenerator, mask_mouth, mel_windows_at
from l2s.models.syncnet import normalize_clip_mel

FRAMES_PER_PASS = 64


def pick_reference(roi_THW: np.ndarray, top: int) -> int:
    """The frame whose region below `top` is closest to the clip's median there: a typical mouth,
    neither the widest nor a blink of motion blur."""
    lower_THW = roi_THW[:, top:].astype(np.float32)
    median_HW = np.median(lower_THW, axis=0)
    return int(np.argmin(((lower_THW - median_HW) ** 2).mean(axis=(1, 2))))


@torch.no_grad()
def redraw(
    generator: LipGenerator,
    roi_THW: np.ndarray,
    mel_MF: np.ndarray,
    reference_HW: np.ndarray | None = None,
    times_T: np.ndarray | None = None,
) -> np.ndarray:
    """The ROIs (uint8) with their mouths re-drawn to `mel_MF` (THE log-mel of the new speech):
    frame t to the speech around `times_T[t]` seconds (default: 25 fps from 0). `generator` must
    be in eval mode; the reference defaults to `pick_reference`."""
    if roi_THW.ndim != 3 or roi_THW.shape[1:] != (VIDEO.roi_size, VIDEO.roi_size):
        raise LipSyncError(
            f"expected T×{VIDEO.roi_size}×{VIDEO.roi_size} ROIs, got {roi_THW.shape}"
        )
    top = generator.cfg.mask_top
    if reference_HW is None:
        reference_HW = roi_THW[pick_reference(roi_THW, top)]
    if times_T is None:
        times_T = (np.arange(len(roi_THW)) + 0.5) / VIDEO.fps
    device = next(generator.parameters()).device
    mel_TMW = mel_windows_at(normalize_clip_mel(np.asarray(mel_MF, np.float32)), times_T)
    reference = torch.from_numpy(np.asarray(reference_HW, np.float32) / 255.0).to(device)
    drawn = []
    for t in range(0, len(roi_THW), FRAMES_PER_PASS):
        frames_BHW = torch.from_numpy(roi_THW[t : t + FRAMES_PER_PASS].astype(np.float32) / 255.0)
        frames_BHW = frames_BHW.to(device)
        mel_BMW = torch.from_numpy(mel_TMW[t : t + FRAMES_PER_PASS]).to(device)
        out_BHW = generator(mask_mouth(frames_BHW, top), reference.expand_as(frames_BHW), mel_BMW)
        drawn.append((out_BHW * 255.0).round().clamp(0, 255).to(torch.uint8).cpu().numpy())
    return np.concatenate(drawn)


@dataclass
class LipSyncModel:
    generator: LipGenerator
    checkpoint: str  # the URI it was loaded from

    @classmethod
    def load(cls, checkpoint: str, device: str | torch.device = "cpu") -> LipSyncModel:
        uri = resolve(checkpoint, LIPSYNC_FILE)
        saved = read_model(uri, LIPSYNC_FILE)
        generator = LipGenerator(LipGenConfig.from_dict(saved["model_config"]))
        generator.load_state_dict(saved["model"])
        return cls(generator.to(device).eval(), uri)

    @property
    def mask_top(self) -> int:
        return self.generator.cfg.mask_top

    def redraw(
        self,
        roi_THW: np.ndarray,
        mel_MF: np.ndarray,
        reference_HW: np.ndarray | None = None,
        times_T: np.ndarray | None = None,
    ) -> np.ndarray:
        return redraw(self.generator, roi_THW, mel_MF, reference_HW, times_T)
