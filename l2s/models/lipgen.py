"""The lip generator (Wav2Lip's design, on l2s's aligned mouth ROI): re-draws the mouth of one
96×96 ROI frame to match 0.2 s of speech.

Inputs, per frame: the frame with its mouth region masked (`mask_mouth`: everything below the
nose, where speech moves the face), a reference frame of the same person (identity, teeth, skin:
in training a random other frame of the clip, so the mouth shape can only come from the audio),
and the clip-normalised log-mel window centred on the frame (`normalize_clip_mel`, 20 mel frames).
A U-Net encodes both frames; the audio, encoded to one vector, joins at the bottleneck; the decoder
draws the masked region, and everything above it is the input frame, unchanged.

`MouthDiscriminator` is Wav2Lip's visual-quality discriminator: it scores patches of the drawn
region real or generated. L1 alone regresses to the mean mouth (blurred, half open, no teeth);
the adversarial term asks for mouths that look like real ones.

Pixels are grayscale in [0, 1], as the ROIs are stored (uint8 / 255).

Letters in shape names: B frames, H×W pixels, C channels, M mel bands, W mel frames in a window.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from itertools import pairwise

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from l2s.config import AUDIO, VIDEO
from l2s.models.syncnet import WINDOW_MELS

MELS_PER_SECOND = AUDIO.sample_rate // AUDIO.hop_length

# The ROI is centred on the mouth (l2s.face.roi): with the mean face the nose base sits 26 px
# from the top and the lips span rows ~38-58. Everything from MASK_TOP down is masked and drawn.
MASK_TOP = 28


def mask_mouth(frame_BHW: torch.Tensor, top: int = MASK_TOP) -> torch.Tensor:
    """The frames with rows `top`… set to 0: what the generator may not see."""
    masked_BHW = frame_BHW.clone()
    masked_BHW[..., top:, :] = 0.0
    return masked_BHW


def mel_windows_at(mel_MF: np.ndarray, times_B: np.ndarray) -> np.ndarray:
    """The WINDOW_MELS-frame window of a (clip-normalised) log-mel centred on each time in
    seconds, mel_BMW; past either end the clip's quietest level per band fills in. At 25 fps the
    centre of frame t is mel position 4t + 2, so its window is mel frames 4t-8 … 4t+11."""
    quiet_MW = np.repeat(mel_MF.min(axis=1, keepdims=True), WINDOW_MELS, axis=1)
    padded_MF = np.concatenate([quiet_MW, mel_MF, quiet_MW], axis=1)
    centres_B = np.round(np.asarray(times_B, dtype=np.float64) * MELS_PER_SECOND).astype(int)
    starts_B = np.clip(centres_B - WINDOW_MELS // 2, -WINDOW_MELS, mel_MF.shape[1]) + WINDOW_MELS
    return np.stack([padded_MF[:, s : s + WINDOW_MELS] for s in starts_B])


@dataclass(frozen=True, kw_only=True)
class LipGenConfig:
    """Generator sizes; saved with every lip-generator checkpoint."""

    width: int = 8  # channels at full resolution; each of the 4 halvings doubles them
    audio_width: int = 16  # the audio encoder's first channels (as the sync expert's tower)
    mask_top: int = MASK_TOP

    def __post_init__(self) -> None:
        if self.width < 1 or self.audio_width < 1:
            raise ValueError("width and audio_width must be positive")
        if not 0 < self.mask_top < VIDEO.roi_size:
            raise ValueError(f"mask_top must lie inside the ROI, got {self.mask_top}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> LipGenConfig:
        return cls(**values)


def tiny() -> LipGenConfig:
    return LipGenConfig()


def base() -> LipGenConfig:
    return LipGenConfig(width=32, audio_width=32)


PRESETS = {"tiny": tiny, "base": base}


def _conv(c_in: int, c_out: int, stride: int | tuple[int, int] = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class LipGenerator(nn.Module):
    """(masked frame, reference frame, mel window) → the frame with its mouth re-drawn."""

    def __init__(self, cfg: LipGenConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w, a = cfg.width, cfg.audio_width
        widths = [w, 2 * w, 4 * w, 8 * w, 16 * w]  # at 96, 48, 24, 12, 6 px
        self.encoders = nn.ModuleList(
            [nn.Sequential(_conv(2, w), _conv(w, w))]
            + [
                nn.Sequential(_conv(c_in, c_out, 2), _conv(c_out, c_out))
                for c_in, c_out in pairwise(widths)
            ]
        )
        # 80×20 → 40×20 → 20×10 → 10×5 → 5×3 → one vector.
        self.audio = nn.Sequential(
            _conv(1, a, (2, 1)),
            _conv(a, 2 * a, 2),
            _conv(2 * a, 4 * a, 2),
            _conv(4 * a, 8 * a, 2),
            nn.Conv2d(8 * a, widths[-1], (AUDIO.n_mels // 16, (WINDOW_MELS + 7) // 8)),
            nn.ReLU(inplace=True),
        )
        self.bottleneck = _conv(2 * widths[-1], widths[-1])
        self.decoders = nn.ModuleList(
            [
                _conv(c_up + c_skip, c_skip)
                for c_up, c_skip in zip(widths[:0:-1], widths[-2::-1], strict=True)
            ]
        )
        self.out = nn.Conv2d(w, 1, 3, padding=1)

    def forward(
        self, masked_BHW: torch.Tensor, reference_BHW: torch.Tensor, mel_BMW: torch.Tensor
    ) -> torch.Tensor:
        x = torch.stack([masked_BHW, reference_BHW], dim=1)
        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
        audio_BC11 = self.audio(mel_BMW[:, None])
        x = self.bottleneck(torch.cat([x, audio_BC11.expand_as(x)], dim=1))
        for decoder, skip in zip(self.decoders, skips[-2::-1], strict=True):
            x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
            x = decoder(torch.cat([x, skip], dim=1))
        drawn_BHW = torch.sigmoid(self.out(x))[:, 0]
        top = self.cfg.mask_top
        return torch.cat([masked_BHW[:, :top], drawn_BHW[:, top:]], dim=1)


class MouthDiscriminator(nn.Module):
    """Frames' mouth regions (rows `mask_top`…) → a grid of real/generated scores, one per
    overlapping patch (a PatchGAN: 4 stride-2 convolutions and a 3×3, a 4×6 grid of scores
    over the 68×96 region, each seeing up to 78×78 px).
    No normalisation layers, as Wav2Lip's and HiFi-GAN's discriminators: the real and generated
    halves of a batch must not share statistics."""

    def __init__(self, cfg: LipGenConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w = 2 * cfg.width
        layers: list[nn.Module] = []
        for c_in, c_out in pairwise([1, w, 2 * w, 4 * w, 8 * w]):
            layers += [nn.Conv2d(c_in, c_out, 4, 2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
        self.net = nn.Sequential(*layers, nn.Conv2d(8 * w, 1, 3, padding=1))

    def forward(self, frame_BHW: torch.Tensor) -> torch.Tensor:
        return self.net(2 * frame_BHW[:, None, self.cfg.mask_top :] - 1)[:, 0]


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
