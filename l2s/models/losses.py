"""Training losses for `Lip2Speech`: pure functions that return `(total, parts)`.

Letters in shape names: B batch, T video frames, F mel frames, M mel bands, V CTC vocabulary,
L label positions. Masks are bools, True on valid steps; padding never contributes to a loss.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from l2s.models.asr import SpeechRecognizer
from l2s.models.lip2speech import Lip2SpeechOutput
from l2s.models.masking import lengths_to_mask
from l2s.models.text import BLANK_ID


@dataclass(frozen=True, kw_only=True)
class LossConfig:
    """Weights of the loss terms; the mel terms apply alike before and after the postnet."""

    l1_weight: float = 1.0
    l2_weight: float = 1.0
    # An auxiliary task, kept well below the reconstruction terms.
    ctc_weight: float = 0.1
    flow_weight: float = 1.0  # the flow head's velocity error, when the model has one
    # The frozen speech recognizer's CTC loss on the generated mel (`TrainConfig.recognizer`).
    asr_weight: float = 0.3

    def __post_init__(self) -> None:
        negative = {k: v for k, v in asdict(self).items() if v < 0}
        if negative:
            raise ValueError(f"loss weights must be non-negative, got {negative}")


def masked_l1_l2(
    pred_BMF: torch.Tensor, target_BMF: torch.Tensor, mask_BF: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean absolute and mean squared error over valid mel frames (all bands)."""
    if pred_BMF.shape != target_BMF.shape:
        raise ValueError(
            f"prediction {tuple(pred_BMF.shape)} and target {tuple(target_BMF.shape)} differ in shape"
        )
    valid_B1F = mask_BF[:, None, :]
    # where, not a product: padding in the target may hold anything, NaN included.
    diff_BMF = torch.where(valid_B1F, pred_BMF.float() - target_BMF.float(), 0.0)
    count = valid_B1F.sum() * pred_BMF.shape[1]
    return diff_BMF.abs().sum() / count, diff_BMF.square().sum() / count


def ctc_loss(
    ctc_logits_BTV: torch.Tensor,
    lengths_B: torch.Tensor,
    targets_BL: torch.Tensor,
    target_lengths_B: torch.Tensor,
) -> torch.Tensor | None:
    """CTC loss over the clips that have a transcript (target length > 0); None when none has one.

    A clip with an empty target is one without a transcript: scoring it against an empty string
    would teach the head to emit only blanks.
    """
    has_text_B = target_lengths_B > 0
    if not bool(has_text_B.any()):
        return None
    # float32 log-probabilities: CTC sums over many paths and is unstable in half precision.
    log_probs_TBV = ctc_logits_BTV[has_text_B].float().log_softmax(dim=-1).transpose(0, 1)
    return F.ctc_loss(
        log_probs_TBV,
        targets_BL[has_text_B],
        lengths_B[has_text_B],
        target_lengths_B[has_text_B],
        blank=BLANK_ID,
        reduction="mean",
        zero_infinity=True,
    )


def lip2speech_loss(
    output: Lip2SpeechOutput,
    mel_BMF: torch.Tensor,
    targets_BL: torch.Tensor | None = None,
    target_lengths_B: torch.Tensor | None = None,
    cfg: LossConfig | None = None,
    recognizer: SpeechRecognizer | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted sum of L1 + L2 on the mel before and after the postnet, plus CTC when transcripts exist.

    `recognizer` (frozen; Kim et al. '23's multi-task ASR loss): it reads the generated mel (after
    the postnet) and its CTC loss against the transcript joins the sum, so the mel is pushed toward
    speech whose words can be heard, not only toward the target's average spectrum.

    `parts` holds each unweighted term, detached, under mel_l1, mel_l2, post_l1, post_l2 and, when
    they were computed, ctc, asr and flow.
    """
    cfg = cfg or LossConfig()
    mask_BF = lengths_to_mask(output.mel_lengths_B, output.mel_BMF.shape[-1])
    mel_l1, mel_l2 = masked_l1_l2(output.mel_BMF, mel_BMF, mask_BF)
    post_l1, post_l2 = masked_l1_l2(output.mel_post_BMF, mel_BMF, mask_BF)
    parts = {"mel_l1": mel_l1, "mel_l2": mel_l2, "post_l1": post_l1, "post_l2": post_l2}
    total = cfg.l1_weight * (mel_l1 + post_l1) + cfg.l2_weight * (mel_l2 + post_l2)
    if targets_BL is not None and target_lengths_B is not None:
        ctc = ctc_loss(output.ctc_logits_BTV, output.lengths_B, targets_BL, target_lengths_B)
        if ctc is not None:
            parts["ctc"] = ctc
            total = total + cfg.ctc_weight * ctc
        if recognizer is not None:
            logits_BTV, lengths_B = recognizer(output.mel_post_BMF, output.mel_lengths_B)
            asr = ctc_loss(logits_BTV, lengths_B, targets_BL, target_lengths_B)
            if asr is not None:
                parts["asr"] = asr
                total = total + cfg.asr_weight * asr
    if output.flow_loss is not None:
        parts["flow"] = output.flow_loss
        total = total + cfg.flow_weight * output.flow_loss
    return total, {name: value.detach() for name, value in parts.items()}
