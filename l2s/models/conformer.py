"""Conformer blocks (Gulati et al. 2020) with rotary relative positions and key-padding masks.

Letters in shape names: B batch, T time steps (video or mel frames), C model width, H attention
heads, K channels per head. Masks are B×T bools, True on valid steps.

Positions enter only through rotary embeddings (Su et al. 2021) in attention, so attention scores
depend on relative offsets, and the same block works at any sequence length and at both the video
and the mel rate. The convolution module normalises with LayerNorm rather than BatchNorm: it acts
per time step, so padding never leaks into valid steps through batch statistics, and a batch of one
(inference) behaves like a batch of many.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def rotary_tables(length: int, dim: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables, each T×(K/2), for rotating K-wide query/key vectors by position."""
    inv_freq = 1.0 / (
        10000.0 ** (torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim)
    )
    angles = torch.arange(length, device=device, dtype=torch.float32)[:, None] * inv_freq[None, :]
    return angles.cos(), angles.sin()


def apply_rotary(x_BHTK: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each (first half, second half) channel pair by its position's angle."""
    half = x_BHTK.shape[-1] // 2
    x1, x2 = x_BHTK[..., :half].float(), x_BHTK[..., half:].float()
    rotated = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return rotated.to(x_BHTK.dtype)


class FeedForward(nn.Module):
    """Pre-norm position-wise feed-forward with Swish (SiLU), as in the Conformer's macaron halves."""

    def __init__(self, dim: int, mult: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(dim),
            nn.Linear(dim, dim * mult),
            nn.SiLU(),
            nn.Dropout(dropout),
            nn.Linear(dim * mult, dim),
            nn.Dropout(dropout),
        )

    def forward(self, x_BTC: torch.Tensor) -> torch.Tensor:
        return self.net(x_BTC)


class SelfAttention(nn.Module):
    """Pre-norm multi-head self-attention with rotary positions; padded keys are never attended to."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.out_dropout = nn.Dropout(dropout)

    def forward(self, x_BTC: torch.Tensor, mask_BT: torch.Tensor | None) -> torch.Tensor:
        B, T, C = x_BTC.shape
        qkv = self.qkv(self.norm(x_BTC)).view(B, T, 3, self.heads, C // self.heads)
        q_BHTK, k_BHTK, v_BHTK = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        cos, sin = rotary_tables(T, C // self.heads, x_BTC.device)
        q_BHTK, k_BHTK = apply_rotary(q_BHTK, cos, sin), apply_rotary(k_BHTK, cos, sin)
        # Only keys are masked: every query row keeps at least one valid key, so no row is all -inf.
        attn_mask = None if mask_BT is None else mask_BT[:, None, None, :]
        y_BHTK = F.scaled_dot_product_attention(
            q_BHTK,
            k_BHTK,
            v_BHTK,
            attn_mask=attn_mask,
            dropout_p=self.dropout if self.training else 0.0,
        )
        y_BTC = y_BHTK.transpose(1, 2).reshape(B, T, C)
        return self.out_dropout(self.out(y_BTC))


class ConvModule(nn.Module):
    """Pointwise conv + GLU, depthwise conv over time, norm, Swish, pointwise conv."""

    def __init__(self, dim: int, kernel_size: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.pointwise_in = nn.Linear(dim, 2 * dim)
        self.depthwise = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.depthwise_norm = nn.LayerNorm(dim)
        self.pointwise_out = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x_BTC: torch.Tensor, mask_BT: torch.Tensor | None) -> torch.Tensor:
        y_BTC = F.glu(self.pointwise_in(self.norm(x_BTC)), dim=-1)
        if mask_BT is not None:
            # The depthwise kernel reaches past a clip's end: it must see zeros there, as it would
            # with the clip alone, not whatever the padding steps hold.
            y_BTC = y_BTC.masked_fill(~mask_BT[..., None], 0.0)
        y_BTC = self.depthwise(y_BTC.transpose(1, 2)).transpose(1, 2)
        y_BTC = F.silu(self.depthwise_norm(y_BTC))
        return self.dropout(self.pointwise_out(y_BTC))


class ConformerBlock(nn.Module):
    """½·FFN → self-attention → convolution → ½·FFN → LayerNorm, each with a residual path."""

    def __init__(
        self, dim: int, heads: int, ffn_mult: int, kernel_size: int, dropout: float
    ) -> None:
        super().__init__()
        self.ffn1 = FeedForward(dim, ffn_mult, dropout)
        self.attn = SelfAttention(dim, heads, dropout)
        self.conv = ConvModule(dim, kernel_size, dropout)
        self.ffn2 = FeedForward(dim, ffn_mult, dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x_BTC: torch.Tensor, mask_BT: torch.Tensor | None = None) -> torch.Tensor:
        x_BTC = x_BTC + 0.5 * self.ffn1(x_BTC)
        x_BTC = x_BTC + self.attn(x_BTC, mask_BT)
        x_BTC = x_BTC + self.conv(x_BTC, mask_BT)
        x_BTC = x_BTC + 0.5 * self.ffn2(x_BTC)
        return self.norm(x_BTC)


class ConformerEncoder(nn.Module):
    """A stack of Conformer blocks over B×T×C with a shared padding mask."""

    def __init__(
        self,
        *,
        dim: int,
        layers: int,
        heads: int,
        ffn_mult: int = 4,
        kernel_size: int = 31,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if dim % heads or (dim // heads) % 2:
            raise ValueError(f"width {dim} must split into {heads} heads of even size")
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd to keep time aligned, got {kernel_size}")
        self.blocks = nn.ModuleList(
            ConformerBlock(dim, heads, ffn_mult, kernel_size, dropout) for _ in range(layers)
        )

    def forward(self, x_BTC: torch.Tensor, mask_BT: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.blocks:
            x_BTC = block(x_BTC, mask_BT)
        return x_BTC
