"""Validation during training: masked mel errors on a fixed val subset, and STOI / ESTOI on a few
of its clips vocoded with Griffin-Lim.

The quick audio scores compare Griffin-Lim of the predicted mel with Griffin-Lim of the
ground-truth mel, not with the recording: the feature dataset holds no waveforms, and the same
vocoder on both sides isolates what the model got wrong. The full scoring of a test split against
the real recordings is the evaluation stage's job (l2s.evaluate).

Every rank scores its own share; the sums are all-reduced, so the numbers cover the whole subset.

Letters in shape names: B batch, M mel bands, F mel frames, S samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from l2s.audio import griffin_lim
from l2s.evaluate.metrics import MetricUnavailable, estoi, stoi
from l2s.models.losses import masked_l1_l2
from l2s.models.masking import lengths_to_mask
from l2s.train.data import Batch

SUMS = (
    "mel_l1",
    "post_l1",
    "post_l2",
    "elements",
    "stoi",
    "estoi",
    "audio_scored",
    "audio_skipped",
)


@dataclass
class Example:
    """One vocoded val clip, for TensorBoard."""

    id: str
    predicted_MF: np.ndarray
    target_MF: np.ndarray
    predicted_S: np.ndarray
    reference_S: np.ndarray


def _dummy_like(batch: Batch) -> Batch:
    """A one-frame, one-clip batch: ranks with fewer val batches run it so that every rank makes
    the same number of forward passes (ZeRO-3 gathers parameters collectively in each one)."""
    return Batch(
        ids=[],
        video_BTHW=batch.video_BTHW[:1, :1].clone(),
        lengths_B=torch.ones(1, dtype=torch.long, device=batch.lengths_B.device),
        mel_BMF=batch.mel_BMF[:1, :, :4].clone(),
        speaker_BD=batch.speaker_BD[:1].clone(),
        targets_BL=batch.targets_BL[:1].clone(),
        target_lengths_B=torch.zeros(1, dtype=torch.long, device=batch.lengths_B.device),
    )


@torch.no_grad()
def validate(
    module: nn.Module,
    batches: Sequence[Batch],
    audio_ids: set[str],
    device: torch.device,
    dtype: torch.dtype,
    autocast: AbstractContextManager,
    template: Batch,
) -> tuple[dict[str, float], list[Example]]:
    """Metrics over all ranks' val batches (`val/...` names), and this rank's vocoded examples.

    `module` is the bare network (never the DDP wrapper, whose forward would synchronise buffers
    with the other ranks); `template` is any batch, for the shape of the balancing dummy.
    """
    was_training = module.training
    module.eval()
    sums = dict.fromkeys(SUMS, 0.0)
    examples: list[Example] = []
    n_batches = torch.tensor([len(batches)], device=device)
    dist.all_reduce(n_batches, op=dist.ReduceOp.MAX)
    dummy = _dummy_like(template.to(device, dtype))
    for i in range(int(n_batches.item())):
        if i >= len(batches):
            with autocast:
                module(dummy.video_BTHW, dummy.lengths_B, dummy.speaker_BD)
            continue
        batch = batches[i].to(device, dtype)
        with autocast:
            output = module(batch.video_BTHW, batch.lengths_B, batch.speaker_BD)
        mask_BF = lengths_to_mask(output.mel_lengths_B, output.mel_BMF.shape[-1])
        elements = float(mask_BF.sum()) * output.mel_BMF.shape[1]
        mel_l1, _ = masked_l1_l2(output.mel_BMF, batch.mel_BMF, mask_BF)
        post_l1, post_l2 = masked_l1_l2(output.mel_post_BMF, batch.mel_BMF, mask_BF)
        sums["mel_l1"] += float(mel_l1) * elements
        sums["post_l1"] += float(post_l1) * elements
        sums["post_l2"] += float(post_l2) * elements
        sums["elements"] += elements
        for b, clip_id in enumerate(batch.ids):
            if clip_id not in audio_ids:
                continue
            n_mel = int(output.mel_lengths_B[b])
            predicted_MF = output.mel_post_BMF[b, :, :n_mel].float().cpu().numpy()
            target_MF = batch.mel_BMF[b, :, :n_mel].float().cpu().numpy()
            predicted_S, reference_S = griffin_lim(predicted_MF), griffin_lim(target_MF)
            try:
                scores = stoi(reference_S, predicted_S), estoi(reference_S, predicted_S)
            except MetricUnavailable:
                # Too little speech left after STOI's silence removal: counted, not averaged.
                sums["audio_skipped"] += 1
                continue
            sums["stoi"] += scores[0]
            sums["estoi"] += scores[1]
            sums["audio_scored"] += 1
            examples.append(Example(clip_id, predicted_MF, target_MF, predicted_S, reference_S))
    totals_K = torch.tensor([sums[k] for k in SUMS], dtype=torch.float64, device=device)
    dist.all_reduce(totals_K)
    totals = dict(zip(SUMS, totals_K.tolist(), strict=True))
    module.train(was_training)
    metrics: dict[str, float] = {}
    if totals["elements"]:
        for name in ("mel_l1", "post_l1", "post_l2"):
            metrics[f"val/{name}"] = totals[name] / totals["elements"]
    if totals["audio_scored"]:
        metrics["val/stoi_gl"] = totals["stoi"] / totals["audio_scored"]
        metrics["val/estoi_gl"] = totals["estoi"] / totals["audio_scored"]
    metrics["val/audio_scored"] = totals["audio_scored"]
    metrics["val/audio_skipped"] = totals["audio_skipped"]
    return metrics, examples
