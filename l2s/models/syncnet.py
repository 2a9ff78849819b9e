"""The audio-visual sync expert (SyncNet's idea, Chung & Zisserman 2016; Wav2Lip's expert): two
towers that embed a window of `WINDOW_FRAMES` mouth ROIs and the matching 0.2 s of log-mel
(`WINDOW_MELS` mel frames) into one space, where a window and its own audio lie close and the
same audio shifted in time, or another clip's, lie far.

Trained contrastively (`sync_loss`, on the embeddings `forward` returns): each video window
picks its own audio among its clip's audio shifted by up to a few frames and every other clip's.

Inputs are normalised inside the towers, so callers pass what they have: ROIs as float pixel
values at any scale (uint8 values, or a generator's [0, 1] output), each window standardised on
its own (lighting and contrast say nothing about sync); mels as THE log-mel after
`normalize_clip_mel` (per-band mean and deviation of the whole clip removed, so the recording
level and channel do not matter either).

Letters in shape names: B windows, C clips, N video windows of a clip, P audio windows of a clip,
K frames in a window, H×W pixels, M mel bands, W mel frames in a window, F mel frames, E embedding
size, D offsets, X and Y all video and all audio windows of a batch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from l2s.config import AUDIO, MELS_PER_FRAME, VIDEO

WINDOW_FRAMES = 5
WINDOW_MELS = WINDOW_FRAMES * MELS_PER_FRAME  # 20 mel frames: 0.2 s


@dataclass(frozen=True, kw_only=True)
class SyncConfig:
    """Tower sizes; saved with every sync-expert checkpoint."""

    image_size: int = 48  # the 96×96 ROI is average-pooled to this side before the video tower
    width: int = 16  # channels of the first stage; each later stage doubles them, up to 8×
    embedding: int = 128
    init_temperature: float = 0.07  # of the contrastive softmax (learned, as CLIP's)

    def __post_init__(self) -> None:
        if VIDEO.roi_size % self.image_size or self.image_size < 24:
            raise ValueError(
                f"image_size must divide the ROI side {VIDEO.roi_size} and be >= 24, "
                f"got {self.image_size}"
            )
        if self.width < 1 or self.embedding < 1 or not self.init_temperature > 0:
            raise ValueError("width, embedding and init_temperature must be positive")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> SyncConfig:
        return cls(**values)


def tiny() -> SyncConfig:
    return SyncConfig()


def base() -> SyncConfig:
    return SyncConfig(image_size=96, width=32, embedding=256)


PRESETS = {"tiny": tiny, "base": base}


def _conv(c_in: int, c_out: int, stride: int | tuple[int, int]) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


def _stage(c_in: int, c_out: int, stride: int | tuple[int, int]) -> nn.Sequential:
    """A strided convolution, then one at the same size with a residual path."""
    return nn.Sequential(_conv(c_in, c_out, stride), Residual(_conv(c_out, c_out, 1)))


class Residual(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.inner(x)


def normalize_clip_mel(mel_MF: np.ndarray) -> np.ndarray:
    """A clip's log-mel with each band's mean over the clip removed and its deviation set to 1
    (the deviation floored, so a silent band is not blown up)."""
    mean_M1 = mel_MF.mean(axis=-1, keepdims=True)
    std_M1 = np.maximum(mel_MF.std(axis=-1, keepdims=True), 0.5)
    return ((mel_MF - mean_M1) / std_M1).astype(np.float32)


class SyncNet(nn.Module):
    """Video window (B×K×96×96) → unit embedding B×E; mel window (B×M×W) → unit embedding B×E."""

    def __init__(self, cfg: SyncConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        # Video: K frames as channels (SyncNet's early fusion); 48 → 24 → 12 → 6 → 3 → 1.
        stages_v = [_conv(WINDOW_FRAMES, w, 1)]
        side, c = cfg.image_size, w
        while side > 3:
            stages_v.append(_stage(c, min(2 * c, 8 * w), 2))
            side, c = (side + 1) // 2, min(2 * c, 8 * w)
        self.video = nn.Sequential(*stages_v, nn.Conv2d(c, cfg.embedding, side))
        # Audio: the 80×20 mel window as an image; 80×20 → 40×20 → 20×10 → 10×5 → 5×3 → 1. It
        # runs on every audio window of a span (N + 2·max_shift), so it starts narrow.
        self.audio = nn.Sequential(
            _conv(1, w, (2, 1)),
            _stage(w, 2 * w, 2),
            _stage(2 * w, 4 * w, 2),
            _stage(4 * w, 8 * w, 2),
            nn.Conv2d(8 * w, cfg.embedding, (AUDIO.n_mels // 16, (WINDOW_MELS + 7) // 8)),
        )
        self.log_scale = nn.Parameter(torch.tensor(float(np.log(1.0 / cfg.init_temperature))))

    def embed_video(self, video_BKHW: torch.Tensor) -> torch.Tensor:
        x = video_BKHW.float()
        factor = x.shape[-1] // self.cfg.image_size
        if factor > 1:
            x = F.avg_pool2d(x, factor)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = x.std(dim=(1, 2, 3), keepdim=True).clamp(min=1e-5)
        return F.normalize(self.video((x - mean) / std).flatten(1), dim=1)

    def embed_audio(self, mel_BMW: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.audio(mel_BMW.float()[:, None]).flatten(1), dim=1)

    @property
    def scale(self) -> torch.Tensor:
        return self.log_scale.clamp(max=float(np.log(100.0))).exp()

    def forward(
        self, video_CNKHW: torch.Tensor, mel_CPMW: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Both towers in one call (what DDP wraps): video_CNE, audio_CPE and the logit scale."""
        video_CNE = self.embed_video(video_CNKHW.flatten(0, 1)).unflatten(0, video_CNKHW.shape[:2])
        audio_CPE = self.embed_audio(mel_CPMW.flatten(0, 1)).unflatten(0, mel_CPMW.shape[:2])
        return video_CNE, audio_CPE, self.scale


def sync_loss(
    video_CNE: torch.Tensor, audio_CPE: torch.Tensor, scale: torch.Tensor, mismatched: bool = True
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Contrastive loss over spans: clip c's video windows n = 0…N-1 start at consecutive frames,
    and its audio windows p = 0…P-1 (P = N + 2·S) start S frames earlier, so window n's own audio
    is p = n + S and its neighbours p = n … n + 2S are the same audio shifted by up to S frames.

    Cross-entropy of each video window picking its own audio among its clip's audio windows and,
    with `mismatched`, every other clip's too. Parts: `offset_acc`, how often the best of its own
    ±S shifts is the unshifted one; `acc`, how often its own audio is best of all candidates."""
    C, N = video_CNE.shape[:2]
    P = audio_CPE.shape[1]
    shift = (P - N) // 2
    if N + 2 * shift != P:
        raise ValueError(f"{N} video windows need N + 2·S audio windows, got {P}")
    device = video_CNE.device
    own_CNP = scale * torch.einsum("cne,cpe->cnp", video_CNE, audio_CPE)
    n_N = torch.arange(N, device=device)
    near_CND = own_CNP[:, n_N[:, None], n_N[:, None] + torch.arange(2 * shift + 1, device=device)]
    offset_acc = (near_CND.argmax(dim=-1) == shift).float().mean()
    target_CN = (n_N + shift).expand(C, N)
    if mismatched:
        logits_XY = scale * video_CNE.flatten(0, 1) @ audio_CPE.flatten(0, 1).T
        target_X = (torch.arange(C, device=device)[:, None] * P + target_CN).flatten()
    else:
        logits_XY, target_X = own_CNP.flatten(0, 1), target_CN.flatten()
    loss = F.cross_entropy(logits_XY, target_X)
    acc = (logits_XY.argmax(dim=1) == target_X).float().mean()
    return loss, {"offset_acc": offset_acc.detach(), "acc": acc.detach()}


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
