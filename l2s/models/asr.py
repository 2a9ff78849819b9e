"""A CTC speech recognizer on THE log-mel (`l2s.audio.log_mel`): what `l2s train-asr` trains on a
corpus's own recordings and transcripts, to score WER on any corpus with transcripts and to steer
generated speech toward a text.

    log-mel (per-band standardised) → strided 1-D convolutions (×`subsample` fewer frames)
    → Conformer encoder → linear → CTC characters (`l2s.models.text.VOCAB`)

Letters in shape names: B batch, M mel bands, F mel frames, T encoder frames (F / subsample,
rounded up), C channels, V vocabulary.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from l2s.config import AUDIO
from l2s.models.conformer import ConformerEncoder
from l2s.models.masking import lengths_to_mask
from l2s.models.text import VOCAB


@dataclass(frozen=True, kw_only=True)
class AsrConfig:
    """Sizes of `SpeechRecognizer`; the defaults are the `base` preset."""

    n_mels: int = AUDIO.n_mels
    dim: int = 256
    layers: int = 8
    heads: int = 4
    conv_kernel: int = 15
    ffn_mult: int = 4
    subsample: int = 4  # mel frames per encoder frame: 100 Hz → 25 Hz, the video rate
    dropout: float = 0.1

    def __post_init__(self) -> None:
        small = [k for k, v in asdict(self).items() if type(v) is int and v < 1]
        if small:
            raise ValueError(f"these sizes must be at least 1: {small}")
        if self.subsample not in (1, 2, 4, 8):
            raise ValueError(f"subsample must be 1, 2, 4 or 8, got {self.subsample}")
        if self.dim % self.heads or (self.dim // self.heads) % 2:
            raise ValueError(f"dim {self.dim} must split into {self.heads} heads of even size")
        if self.conv_kernel % 2 == 0:
            raise ValueError(f"conv_kernel must be odd, got {self.conv_kernel}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> AsrConfig:
        return cls(**values)


def tiny() -> AsrConfig:
    """About 0.5 M parameters: trains on 2 CPU cores in minutes."""
    return AsrConfig(dim=96, layers=3, heads=2, ffn_mult=2, dropout=0.0)


def base() -> AsrConfig:
    return AsrConfig()


PRESETS = {"tiny": tiny, "base": base}


class SpeechRecognizer(nn.Module):
    """Log-mel B×M×F (+ valid frames per clip) → CTC logits B×T×V and valid encoder frames."""

    def __init__(self, cfg: AsrConfig) -> None:
        super().__init__()
        self.cfg = cfg
        strides = cfg.subsample.bit_length() - 1  # stride-2 convolutions
        widths = [cfg.n_mels, *([cfg.dim] * max(1, strides))]
        self.subsample = nn.ModuleList(
            nn.Conv1d(widths[i], widths[i + 1], 5, stride=2 if i < strides else 1, padding=2)
            for i in range(len(widths) - 1)
        )
        self.encoder = ConformerEncoder(
            dim=cfg.dim,
            layers=cfg.layers,
            heads=cfg.heads,
            ffn_mult=cfg.ffn_mult,
            kernel_size=cfg.conv_kernel,
            dropout=cfg.dropout,
        )
        self.head = nn.Linear(cfg.dim, len(VOCAB))
        # Per-band statistics of the training log-mels (saved with the weights), as Lip2Speech.
        self.register_buffer("mel_mean_M", torch.zeros(cfg.n_mels))
        self.register_buffer("mel_std_M", torch.ones(cfg.n_mels))

    @torch.no_grad()
    def set_mel_stats(self, mean_M: torch.Tensor, std_M: torch.Tensor) -> None:
        self.mel_mean_M.copy_(torch.as_tensor(mean_M, dtype=self.mel_mean_M.dtype))
        self.mel_std_M.copy_(torch.as_tensor(std_M, dtype=self.mel_std_M.dtype).clamp_min(1e-3))

    def normalize(self, mel_BMF: torch.Tensor) -> torch.Tensor:
        return (mel_BMF - self.mel_mean_M[:, None]) / self.mel_std_M[:, None]

    def forward(
        self,
        mel_BMF: torch.Tensor,
        mel_lengths_B: torch.Tensor | None = None,
        *,
        normalized: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """CTC logits (zero on padding) and encoder lengths. `normalized`: the mel is already
        standardised (`normalize`; training's augmentations work there)."""
        B, _, F = mel_BMF.shape
        if mel_lengths_B is None:
            mel_lengths_B = torch.full((B,), F, dtype=torch.long, device=mel_BMF.device)
        x_BCF = mel_BMF if normalized else self.normalize(mel_BMF)
        lengths_B = mel_lengths_B
        for conv in self.subsample:
            # Zeros past each clip's end, as it would see alone.
            x_BCF = x_BCF.masked_fill(~lengths_to_mask(lengths_B, x_BCF.shape[-1])[:, None], 0.0)
            x_BCF = nn.functional.silu(conv(x_BCF))
            if conv.stride[0] == 2:
                lengths_B = (lengths_B + 1) // 2
        mask_BT = lengths_to_mask(lengths_B, x_BCF.shape[-1])
        x_BTC = self.encoder(x_BCF.transpose(1, 2), mask_BT)
        logits_BTV = self.head(x_BTC).masked_fill(~mask_BT[..., None], 0.0)
        return logits_BTV, lengths_B
