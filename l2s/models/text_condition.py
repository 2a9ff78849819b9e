"""Text conditioning (Hegde et al. 2023's idea inside one network): the visual features attend to
an encoding of the characters lip-read from the same clip (or, in training, of the transcript with
errors injected), so the mel decoder hears what the lips were read to say.

    TextEncoder        characters → a learned null token followed by the encoded characters
    TextConditioning   cross-attention blocks: video-rate features (queries) × text (keys)

The null token is always there to attend to: a clip with no text (the unconditional input that
text dropout trains, and classifier-free guidance uses) attends to it alone. Queries and keys also
carry where they sit in their sequence as a fraction of its length, the prior that the n-th
character is spoken about n/L of the way through the clip.

Letters in shape names: B batch, T video frames, L characters (+1 with the null token), C channels,
V vocabulary, K fraction features.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from l2s.models.conformer import ConformerEncoder, FeedForward
from l2s.models.masking import lengths_to_mask

FRACTION_FEATURES = 16


def fraction_features(lengths_B: torch.Tensor, length: int, n: int) -> torch.Tensor:
    """B×length×n: cos(π k f) for k = 1..n, f = (i + ½) / length_b the step's place in its clip
    (zeros on padding)."""
    steps_L = torch.arange(length, device=lengths_B.device, dtype=torch.float32)
    frac_BL = (steps_L[None] + 0.5) / lengths_B.clamp_min(1)[:, None].float()
    k_K = torch.arange(1, n + 1, device=lengths_B.device, dtype=torch.float32)
    features_BLK = torch.cos(math.pi * frac_BL[..., None] * k_K)
    return features_BLK * lengths_to_mask(lengths_B, length)[..., None]


class TextEncoder(nn.Module):
    """Character ids B×L (blank-padded) → B×(1+L)×C and its key mask, the null token first."""

    def __init__(
        self,
        vocab: int,
        dim: int,
        *,
        layers: int,
        heads: int,
        ffn_mult: int,
        kernel: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.null = nn.Parameter(torch.zeros(dim))
        self.encoder = ConformerEncoder(
            dim=dim,
            layers=layers,
            heads=heads,
            ffn_mult=ffn_mult,
            kernel_size=kernel,
            dropout=dropout,
        )

    def forward(
        self, text_BL: torch.Tensor, text_lengths_B: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(text_BLC with the null token first, its mask_BL, the characters' fraction features)."""
        B, L = text_BL.shape
        mask_BL = lengths_to_mask(text_lengths_B, L)
        x_BLC = self.embed(text_BL)
        if L:
            x_BLC = self.encoder(x_BLC, mask_BL).masked_fill(~mask_BL[..., None], 0.0)
        null_B1C = self.null.to(x_BLC.dtype).expand(B, 1, -1)
        keep_B1 = torch.ones(B, 1, dtype=torch.bool, device=text_BL.device)
        place_BLK = fraction_features(text_lengths_B, L, FRACTION_FEATURES)
        place_BLK = torch.cat([place_BLK.new_zeros(B, 1, FRACTION_FEATURES), place_BLK], dim=1)
        return torch.cat([null_B1C, x_BLC], 1), torch.cat([keep_B1, mask_BL], 1), place_BLK


class CrossAttentionBlock(nn.Module):
    """Pre-norm multi-head attention from video-rate features to text, then a feed-forward; both
    residual. Where each side sits in its sequence enters queries and keys (not values)."""

    def __init__(self, dim: int, heads: int, ffn_mult: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.norm = nn.LayerNorm(dim)
        self.text_norm = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.q_place = nn.Linear(FRACTION_FEATURES, dim, bias=False)
        self.k_place = nn.Linear(FRACTION_FEATURES, dim, bias=False)
        self.out = nn.Linear(dim, dim)
        self.ffn = FeedForward(dim, ffn_mult, dropout)

    def forward(
        self,
        x_BTC: torch.Tensor,
        place_BTK: torch.Tensor,
        text_BLC: torch.Tensor,
        text_mask_BL: torch.Tensor,
        text_place_BLK: torch.Tensor,
    ) -> torch.Tensor:
        B, T, C = x_BTC.shape
        L, H = text_BLC.shape[1], self.heads
        q_BTC = self.q(self.norm(x_BTC)) + self.q_place(place_BTK.to(x_BTC.dtype))
        k_BLC, v_BLC = self.kv(self.text_norm(text_BLC)).chunk(2, dim=-1)
        k_BLC = k_BLC + self.k_place(text_place_BLK.to(k_BLC.dtype))
        y_BHTK = F.scaled_dot_product_attention(
            q_BTC.view(B, T, H, C // H).transpose(1, 2),
            k_BLC.view(B, L, H, C // H).transpose(1, 2),
            v_BLC.view(B, L, H, C // H).transpose(1, 2),
            attn_mask=text_mask_BL[:, None, None, :],
            dropout_p=self.dropout if self.training else 0.0,
        )
        x_BTC = x_BTC + self.out(y_BHTK.transpose(1, 2).reshape(B, T, C))
        return x_BTC + self.ffn(x_BTC)


class TextConditioning(nn.Module):
    """Video-rate features + characters → the same features, having attended to the text."""

    def __init__(
        self,
        vocab: int,
        dim: int,
        *,
        text_layers: int,
        attention_layers: int,
        heads: int,
        ffn_mult: int,
        kernel: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.text = TextEncoder(
            vocab,
            dim,
            layers=text_layers,
            heads=heads,
            ffn_mult=ffn_mult,
            kernel=kernel,
            dropout=dropout,
        )
        self.blocks = nn.ModuleList(
            CrossAttentionBlock(dim, heads, ffn_mult, dropout) for _ in range(attention_layers)
        )

    def forward(
        self,
        x_BTC: torch.Tensor,
        lengths_B: torch.Tensor,
        text_BL: torch.Tensor,
        text_lengths_B: torch.Tensor,
    ) -> torch.Tensor:
        text_BLC, text_mask_BL, text_place_BLK = self.text(text_BL, text_lengths_B)
        place_BTK = fraction_features(lengths_B, x_BTC.shape[1], FRACTION_FEATURES)
        for block in self.blocks:
            x_BTC = block(x_BTC, place_BTK, text_BLC, text_mask_BL, text_place_BLK)
        return x_BTC
