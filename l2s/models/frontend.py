"""Visual front-end: a 3-D convolution stem over time and space, then a 2-D ResNet-18 trunk applied
to each frame and pooled to one feature vector per frame (the front-end of Kim et al. 2023 and of
auto-AVSR). It sees 88×88 crops of the 96×96 mouth ROIs (`crop`: random with flips in training,
centred otherwise), normalised (`normalize_video`).

Letters in shape names: B batch, T video frames, H×W pixels, C channels, N valid frames in a batch.

The ResNet trunk is written out here because torchvision cannot be used on these machines (it pulls
a CUDA build of torch; see ENVIRONMENT.md). With `width=64` and blocks (2, 2, 2, 2) its layers are
those of torchvision's resnet18 without the first convolution, pooling and classifier.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from l2s.config import VIDEO

# Mean and standard deviation of LRS3 mouth crops scaled to [0, 1], as auto-AVSR normalises them.
VIDEO_MEAN = 0.421
VIDEO_STD = 0.165


def normalize_video(roi_BTHW: torch.Tensor) -> torch.Tensor:
    """uint8 mouth crops → float32 input for the front-end (scaled to [0, 1], then standardised)."""
    return (roi_BTHW.float() / 255.0 - VIDEO_MEAN) / VIDEO_STD


def crop(
    roi_THW: np.ndarray, rng: np.random.Generator | None, size: int = VIDEO.crop_size
) -> np.ndarray:
    """A size×size window of every frame: at one random offset for the clip (and a horizontal
    flip half the time) when `rng` is given, else the centre."""
    height, width = roi_THW.shape[1:]
    if rng is None:
        top, left = (height - size) // 2, (width - size) // 2
        return roi_THW[:, top : top + size, left : left + size]
    top, left = int(rng.integers(height - size + 1)), int(rng.integers(width - size + 1))
    out_THW = roi_THW[:, top : top + size, left : left + size]
    return out_THW[:, :, ::-1] if rng.random() < 0.5 else out_THW


class BasicBlock(nn.Module):
    """ResNet basic block: two 3×3 convolutions with a residual path (projected when shapes change)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x_NCHW: torch.Tensor) -> torch.Tensor:
        y_NCHW = self.relu(self.bn1(self.conv1(x_NCHW)))
        y_NCHW = self.bn2(self.conv2(y_NCHW))
        return self.relu(y_NCHW + self.shortcut(x_NCHW))


class VisualFrontend(nn.Module):
    """Grayscale mouth video (B×T×H×W or B×1×T×H×W, normalised) → one feature per frame, B×T×C."""

    def __init__(
        self,
        *,
        width: int,
        blocks: tuple[int, ...] = (2, 2, 2, 2),
        stem_time_kernel: int = 5,
        stem_stride: int = 2,
    ) -> None:
        super().__init__()
        # The stem is the only layer that sees neighbouring frames; everything after it is per frame.
        self.stem = nn.Conv3d(
            1,
            width,
            kernel_size=(stem_time_kernel, 7, 7),
            stride=(1, stem_stride, stem_stride),
            padding=(stem_time_kernel // 2, 3, 3),
            bias=False,
        )
        # The stem's norm and pooling act per frame, so they run after padding frames are dropped:
        # batch statistics then come from real frames only.
        self.stem_norm = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        layers: list[nn.Module] = []
        in_channels = width
        for i, n_blocks in enumerate(blocks):
            out_channels = width * 2**i
            for j in range(n_blocks):
                stride = 2 if i > 0 and j == 0 else 1
                layers.append(BasicBlock(in_channels, out_channels, stride))
                in_channels = out_channels
        self.trunk = nn.Sequential(*layers)
        self.out_channels = in_channels
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # Each block starts as the identity, which lets a deep trunk trained from scratch start stable.
        for m in self.modules():
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def forward(
        self, video_BTHW: torch.Tensor, mask_BT: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Features B×T×C; frames where mask_BT is False are not computed and come back as zeros."""
        video_B1THW = _with_channel(video_BTHW)
        B, _, T, _, _ = video_B1THW.shape
        if mask_BT is not None:
            # Zeroed padding makes a clip's last frames see exactly what the stem's own zero
            # padding shows them when the clip is alone in its batch.
            video_B1THW = video_B1THW * mask_BT[:, None, :, None, None].to(video_B1THW.dtype)
        stem_BCTHW = self.stem(video_B1THW)
        stem_BTCHW = stem_BCTHW.transpose(1, 2)
        if mask_BT is None:
            frames_NCHW = stem_BTCHW.reshape(B * T, *stem_BTCHW.shape[2:])
        else:
            frames_NCHW = stem_BTCHW[mask_BT]
        # Channels-last frames: oneDNN's kernels for these small per-frame convolutions run ~30 %
        # faster on NHWC (the tiny trunk's forward + backward, one CPU thread: 72 → 51 ms for 248
        # frames); the weights keep their layout, so checkpoints are unchanged.
        frames_NCHW = frames_NCHW.contiguous(memory_format=torch.channels_last)
        frames_NCHW = self.pool(self.relu(self.stem_norm(frames_NCHW)))
        feats_NC = self.trunk(frames_NCHW).mean(dim=(2, 3))
        if mask_BT is None:
            return feats_NC.view(B, T, -1)
        feats_BTC = feats_NC.new_zeros(B, T, feats_NC.shape[1])
        feats_BTC[mask_BT] = feats_NC
        return feats_BTC


def _with_channel(video: torch.Tensor) -> torch.Tensor:
    if video.dim() == 4:
        return video.unsqueeze(1)
    if video.dim() == 5 and video.shape[1] == 1:
        return video
    raise ValueError(f"expected video B×T×H×W or B×1×T×H×W, got shape {tuple(video.shape)}")
