"""Characters for the CTC head: the vocabulary, text → label ids, and greedy CTC decoding.

Letters in shape names: B batch, T frames, V vocabulary size, L label positions (padded).
The vocabulary is what LRS3 transcripts use: upper-case letters, space and apostrophe.
"""

from __future__ import annotations

import re

import torch

BLANK = "<blank>"
VOCAB: tuple[str, ...] = (BLANK, " ", "'", *(chr(c) for c in range(ord("A"), ord("Z") + 1)))
BLANK_ID = 0
_ID = {ch: i for i, ch in enumerate(VOCAB) if i != BLANK_ID}


def normalize_text(text: str) -> str:
    """Upper-case, turn every character outside the vocabulary into a space, collapse spaces.

    For transcripts from corpora that carry punctuation or digits; `encode_text` itself refuses
    such characters rather than dropping them unseen.
    """
    cleaned = "".join(ch if ch in _ID else " " for ch in text.upper())
    return re.sub(r" +", " ", cleaned).strip()


def encode_text(text: str) -> list[int]:
    """Transcript → label ids (case and runs of whitespace are normalised; blank is never emitted)."""
    text = re.sub(r"\s+", " ", text.upper()).strip()
    unknown = sorted({ch for ch in text if ch not in _ID})
    if unknown:
        raise ValueError(f"characters outside the CTC vocabulary: {unknown} in {text!r}")
    return [_ID[ch] for ch in text]


def encode_batch(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Transcripts → (targets_BL int64 padded with blanks, target_lengths_B int64)."""
    ids = [encode_text(t) for t in texts]
    target_lengths_B = torch.tensor([len(i) for i in ids], dtype=torch.long)
    # At least one column, so a batch of empty transcripts still has a valid 2-D target tensor.
    width = max([1, *(len(i) for i in ids)])
    targets_BL = torch.full((len(ids), width), BLANK_ID, dtype=torch.long)
    for b, seq in enumerate(ids):
        targets_BL[b, : len(seq)] = torch.tensor(seq, dtype=torch.long)
    return targets_BL, target_lengths_B


def decode_ids(ids: list[int]) -> str:
    """Label ids (no blanks) → text."""
    return "".join(VOCAB[i] for i in ids)


def decode_ctc(ctc_logits_BTV: torch.Tensor, lengths_B: torch.Tensor | None = None) -> list[str]:
    """Greedy CTC decoding: best class per frame, merge repeats, drop blanks, within each length."""
    best_BT = ctc_logits_BTV.argmax(dim=-1).cpu()
    lengths = [best_BT.shape[1]] * best_BT.shape[0] if lengths_B is None else lengths_B.tolist()
    texts = []
    for best_T, length in zip(best_BT, lengths, strict=True):
        merged = torch.unique_consecutive(best_T[:length])
        texts.append(decode_ids([i for i in merged.tolist() if i != BLANK_ID]))
    return texts


def greedy_ids(
    ctc_logits_BTV: torch.Tensor, lengths_B: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy CTC decoding on the device: (ids_BL blank-padded, text_lengths_B), repeats merged and
    blanks dropped within each clip's length. At least one column, as `encode_batch`."""
    best_BT = ctc_logits_BTV.argmax(dim=-1)
    T = best_BT.shape[1]
    valid_BT = torch.arange(T, device=best_BT.device)[None] < lengths_B[:, None]
    new_BT = torch.ones_like(valid_BT)
    new_BT[:, 1:] = best_BT[:, 1:] != best_BT[:, :-1]
    keep_BT = valid_BT & new_BT & (best_BT != BLANK_ID)
    text_lengths_B = keep_BT.sum(dim=1)
    # Kept characters move to the front of their row, in order (a stable sort on "not kept").
    order_BT = torch.sort((~keep_BT).to(torch.int8), dim=1, stable=True).indices
    ids_BT = torch.gather(best_BT.masked_fill(~keep_BT, BLANK_ID), 1, order_BT)
    width = max(1, int(text_lengths_B.max()) if len(text_lengths_B) else 1)
    return ids_BT[:, :width].contiguous(), text_lengths_B
