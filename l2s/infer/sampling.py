"""Sampling a flow-matching mel head (`l2s.models.flow`) at inference: classifier-free guidance on
video and text, and a speech recognizer's pull toward the lip-read text (LipVoicer's guidance, with
the recognizer `l2s train-asr` trains).

Letters in shape names: B batch, F mel frames, M mel bands, C channels, L characters, T frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from l2s.config import MELS_PER_FRAME
from l2s.models.asr import SpeechRecognizer
from l2s.models.flow import Steer, sample
from l2s.models.lip2speech import Encoded, Lip2Speech, Lip2SpeechOutput
from l2s.models.losses import ctc_loss
from l2s.models.text import encode_batch


@dataclass(frozen=True, kw_only=True)
class FlowSampling:
    """How a model with a flow head samples its mel (`l2s.models.flow.sample`).

    Guidance weights are classifier-free: 1 is the plain conditional velocity, above 1 pushes away
    from the unconditional one; `video_guidance` contrasts the clip's features with none,
    `text_guidance` (text-conditioned models) the clip with its reading against the clip without
    text. `asr_scale` > 0 steers every step toward the lip-read text with the gradient of a speech
    recognizer's CTC loss (`SpeechModel.guide`), normalised per clip.
    """

    steps: int = 16
    video_guidance: float = 1.0
    text_guidance: float = 1.0
    asr_scale: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.steps <= 64:
            raise ValueError(f"steps must lie in [1, 64], got {self.steps}")
        if self.asr_scale < 0:
            raise ValueError(f"asr_scale must be >= 0, got {self.asr_scale}")


def flow_mel(
    network: Lip2Speech,
    encoded: Encoded,
    output: Lip2SpeechOutput,
    texts: list[str],
    cfg: FlowSampling,
    guide: SpeechRecognizer | None = None,
) -> torch.Tensor:
    """The flow head's sample B×M×F for encoded clips (`output`: their decoder pass, with the text
    `texts` for a text-conditioned model), guided as `cfg` says; `guide` steers (asr_scale)."""
    full_BFC = output.flow_cond_BFC
    mask_BF = None
    if encoded.mask_BT is not None:
        mask_BF = encoded.mask_BT.repeat_interleave(MELS_PER_FRAME, dim=1)
    # v = v(∅) + w_v (v(V) − v(∅)) + w_t (v(V, T) − v(V, ∅)), as a weighted sum of velocities.
    conds = [(torch.zeros_like(full_BFC), 1.0 - cfg.video_guidance)]
    if network.cfg.text_conditioning:
        no_text = tuple(t.to(full_BFC.device) for t in encode_batch([""] * len(texts)))
        no_text_BFC = network.decode(encoded, *no_text).flow_cond_BFC
        conds.append((no_text_BFC, cfg.video_guidance - cfg.text_guidance))
        conds.append((full_BFC, cfg.text_guidance))
    else:
        conds.append((full_BFC, cfg.video_guidance))
    conds = [c for c in conds if c[1] != 0.0]
    steer = None
    if cfg.asr_scale > 0:
        if guide is None:
            raise ValueError("sampling.asr_scale > 0 needs a recognizer in SpeechModel.guide")
        mel_lengths_B = encoded.lengths_B * MELS_PER_FRAME
        steer = toward_text(network, guide, texts, mel_lengths_B, cfg.asr_scale)
    generator = torch.Generator(full_BFC.device).manual_seed(cfg.seed)
    n_mels = network.cfg.n_mels
    z_BFM = sample(network.flow, conds, mask_BF, cfg.steps, n_mels, generator, steer)
    return network.standardized_to_mel(z_BFM)


def toward_text(
    network: Lip2Speech,
    guide: SpeechRecognizer,
    texts: list[str],
    mel_lengths_B: torch.Tensor,
    scale: float,
) -> Steer:
    """A velocity toward `texts`: minus the recognizer's CTC-loss gradient at the current estimate
    of the clean mel, scaled to `scale` standard deviations per clip."""
    targets_BL, target_lengths_B = (t.to(mel_lengths_B.device) for t in encode_batch(texts))

    def steer(z_BFM: torch.Tensor, z1_BFM: torch.Tensor, t: float) -> torch.Tensor:
        with torch.enable_grad():
            z1 = z1_BFM.detach().requires_grad_(True)
            logits_BTV, lengths_B = guide(network.standardized_to_mel(z1), mel_lengths_B)
            loss = ctc_loss(logits_BTV, lengths_B, targets_BL, target_lengths_B)
            if loss is None:
                return torch.zeros_like(z_BFM)
            (grad_BFM,) = torch.autograd.grad(loss, z1)
        rms_B11 = grad_BFM.square().mean(dim=(1, 2), keepdim=True).sqrt()
        return -scale * grad_BFM / (rms_B11 + 1e-8)

    return steer
