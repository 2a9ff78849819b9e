"""A flow-matching mel head on the lip-to-speech encoder (item 4 of issue 14): instead of one
regressed mel, a velocity field that carries Gaussian noise to the mel along straight paths
(conditional flow matching with optimal-transport paths, Lipman et al. 2023), sampled with a few
Euler steps.

It works in the model's standardised log-mel space (per-band mean and deviation of the training
mels, `Lip2Speech.set_mel_stats`) and is conditioned, frame by frame, on the regression decoder's
mel-rate features and its mel (Grad-TTS's idea of a prior mean: the flow adds what regression
averages away instead of learning the mel from nothing). A dropped condition (zeros) is what
classifier-free guidance contrasts with, and what training drops `uncond_prob` of the time.

Letters in shape names: B batch, F mel frames, M mel bands, C channels, K time features.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from l2s.models.conformer import ConformerEncoder

TIME_FEATURES = 32


def time_features(t_B: torch.Tensor, n: int = TIME_FEATURES) -> torch.Tensor:
    """Sinusoidal features B×n of flow times in [0, 1]."""
    freqs_K = torch.exp(torch.linspace(0.0, math.log(1000.0), n // 2, device=t_B.device))
    angles_BK = t_B.float()[:, None] * freqs_K[None]
    return torch.cat([angles_BK.sin(), angles_BK.cos()], dim=-1)


class FlowHead(nn.Module):
    """Velocity of the standardised mel z_BFM at time t_B, given the condition cond_BFC."""

    def __init__(
        self,
        n_mels: int,
        cond_dim: int,
        dim: int,
        *,
        layers: int,
        heads: int,
        ffn_mult: int,
        kernel: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.cond_dim = cond_dim
        self.z_in = nn.Linear(n_mels, dim)
        self.cond_in = nn.Linear(cond_dim, dim)
        self.time_in = nn.Sequential(nn.Linear(TIME_FEATURES, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.net = ConformerEncoder(
            dim=dim,
            layers=layers,
            heads=heads,
            ffn_mult=ffn_mult,
            kernel_size=kernel,
            dropout=dropout,
        )
        self.out = nn.Linear(dim, n_mels)
        # Zero: training starts from "no velocity", so early samples stay at the prior's noise
        # scale instead of whatever a random projection makes of it.
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(
        self,
        z_BFM: torch.Tensor,
        t_B: torch.Tensor,
        cond_BFC: torch.Tensor,
        mask_BF: torch.Tensor | None,
    ) -> torch.Tensor:
        x_BFC = (
            self.z_in(z_BFM) + self.cond_in(cond_BFC) + self.time_in(time_features(t_B))[:, None]
        )
        v_BFM = self.out(self.net(x_BFC, mask_BF))
        return v_BFM if mask_BF is None else v_BFM.masked_fill(~mask_BF[..., None], 0.0)


def flow_matching_loss(
    head: FlowHead,
    z1_BFM: torch.Tensor,
    cond_BFC: torch.Tensor,
    mask_BF: torch.Tensor,
    uncond_prob: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Mean squared error of the predicted velocity against z1 − z0 at a random point of the
    straight path from noise z0 to the target z1, over valid frames; the condition of a clip is
    dropped (zeros) with probability `uncond_prob`."""
    B = z1_BFM.shape[0]
    device = z1_BFM.device
    z0_BFM = torch.randn(z1_BFM.shape, device=device, generator=generator, dtype=z1_BFM.dtype)
    t_B = torch.rand(B, device=device, generator=generator)
    keep_B = torch.rand(B, device=device, generator=generator) >= uncond_prob
    cond_BFC = cond_BFC * keep_B[:, None, None].to(cond_BFC.dtype)
    zt_BFM = (1 - t_B[:, None, None]) * z0_BFM + t_B[:, None, None] * z1_BFM
    v_BFM = head(zt_BFM, t_B, cond_BFC, mask_BF)
    valid_BF1 = mask_BF[..., None]
    diff_BFM = torch.where(valid_BF1, v_BFM.float() - (z1_BFM - z0_BFM).float(), 0.0)
    return diff_BFM.square().sum() / (valid_BF1.sum() * z1_BFM.shape[-1])


Steer = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]


def sample(
    head: FlowHead,
    conds: list[tuple[torch.Tensor, float]],
    mask_BF: torch.Tensor | None,
    steps: int,
    n_mels: int,
    generator: torch.Generator | None = None,
    steer: Steer | None = None,
) -> torch.Tensor:
    """Euler integration from noise (t = 0) to a standardised mel (t = 1) in `steps` steps.

    `conds`: conditions and their guidance weights; the velocity is Σ w_i · v(cond_i), so
    [(full, w), (none, 1 − w)] is classifier-free guidance of strength w, and more terms guide on
    several conditions at once (video, then text). `steer(z_BFM, z1_hat_BFM, t)`: an extra
    velocity, e.g. a recognizer's gradient toward a text (LipVoicer's guidance).
    """
    cond_BFC = conds[0][0]
    B, F = cond_BFC.shape[:2]
    z_BFM = torch.randn(B, F, n_mels, device=cond_BFC.device, generator=generator)
    for i in range(steps):
        t = i / steps
        t_B = torch.full((B,), t, device=cond_BFC.device)
        v_BFM = sum(w * head(z_BFM, t_B, c_BFC, mask_BF) for c_BFC, w in conds)
        if steer is not None:
            v_BFM = v_BFM + steer(z_BFM, z_BFM + (1 - t) * v_BFM, t)
        z_BFM = z_BFM + v_BFM / steps
    return z_BFM if mask_BF is None else z_BFM.masked_fill(~mask_BF[..., None], 0.0)
