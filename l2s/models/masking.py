"""Padding masks from lengths, shared by the frontend, the Conformer, the decoder and the losses.

Letters in shape names: B batch, T time steps (video or mel frames, whichever the caller means).
A mask is True on valid steps and False on padding.
"""

from __future__ import annotations

import torch


def lengths_to_mask(lengths_B: torch.Tensor, max_len: int) -> torch.Tensor:
    """Lengths → mask_BT (bool), True where t < length."""
    steps_T = torch.arange(max_len, device=lengths_B.device)
    return steps_T.unsqueeze(0) < lengths_B.unsqueeze(1)


def check_lengths(lengths_B: torch.Tensor, batch: int, max_len: int) -> None:
    """Raise a ValueError naming the problem when lengths cannot describe a B×max_len batch."""
    if lengths_B.shape != (batch,):
        raise ValueError(f"lengths must have shape ({batch},), got {tuple(lengths_B.shape)}")
    if lengths_B.dtype.is_floating_point:
        raise ValueError(f"lengths must be integers, got {lengths_B.dtype}")
    low, high = int(lengths_B.min()), int(lengths_B.max())
    if low < 1 or high > max_len:
        raise ValueError(f"lengths must lie in [1, {max_len}], got min {low} and max {high}")
