"""Mel-rate parts of the network: the video→mel upsampler and the Tacotron 2 style postnet.

Letters in shape names: B batch, T video frames, F mel frames, C channels, M mel bands.
Masks are bools, True on valid steps. Every convolution here sees zeros beyond a clip's end, so a
clip's output does not depend on what else is in its batch; normalisation is LayerNorm over
channels (per step) for the same reason, where Tacotron 2 used BatchNorm.
"""

from __future__ import annotations

import torch
from torch import nn


class ConvLayer(nn.Module):
    """Masked 1-D convolution over time on channel-last input; norm, activation and dropout unless `last`."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        dropout: float,
        activation: type[nn.Module] = nn.SiLU,
        last: bool = False,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        self.post: nn.Module = (
            nn.Identity()
            if last
            else nn.Sequential(nn.LayerNorm(out_channels), activation(), nn.Dropout(dropout))
        )

    def forward(self, x_BFC: torch.Tensor, mask_BF: torch.Tensor | None) -> torch.Tensor:
        if mask_BF is not None:
            x_BFC = x_BFC.masked_fill(~mask_BF[..., None], 0.0)
        return self.post(self.conv(x_BFC.transpose(1, 2)).transpose(1, 2))


class Upsampler(nn.Module):
    """B×T×C video-rate features → B×(factor·T)×C' mel-rate features, exactly `factor` per frame.

    A transposed convolution with kernel = stride = factor gives each of a frame's mel frames its own
    learned projection of that frame (no overlap, so no frame leaks into another clip's padding);
    the residual convolutions after it smooth across frame boundaries.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        factor: int,
        *,
        convs: int,
        kernel_size: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.expand = nn.ConvTranspose1d(in_channels, out_channels, factor, stride=factor)
        self.convs = nn.ModuleList(
            ConvLayer(out_channels, out_channels, kernel_size, dropout=dropout)
            for _ in range(convs)
        )

    def forward(self, x_BTC: torch.Tensor, mask_BF: torch.Tensor | None) -> torch.Tensor:
        y_BFC = self.expand(x_BTC.transpose(1, 2)).transpose(1, 2)
        for conv in self.convs:
            y_BFC = y_BFC + conv(y_BFC, mask_BF)
        return y_BFC


class Postnet(nn.Module):
    """Residual refinement of a mel (Tacotron 2): `layers` convolutions, tanh between them."""

    def __init__(
        self, n_mels: int, channels: int, *, layers: int, kernel_size: int, dropout: float
    ) -> None:
        super().__init__()
        widths = [n_mels, *([channels] * (layers - 1)), n_mels]
        self.convs = nn.ModuleList(
            ConvLayer(
                widths[i],
                widths[i + 1],
                kernel_size,
                dropout=dropout,
                activation=nn.Tanh,
                last=i == layers - 1,
            )
            for i in range(layers)
        )

    def forward(self, mel_BFM: torch.Tensor, mask_BF: torch.Tensor | None) -> torch.Tensor:
        """The residual to add to mel_BFM."""
        y_BFC = mel_BFM
        for conv in self.convs:
            y_BFC = conv(y_BFC, mask_BF)
        return y_BFC
