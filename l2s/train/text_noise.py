"""The text a text-conditioned model trains on: the transcript with errors like a lip reader's.

At inference the model hears the lips' own reading, never the transcript, and that reading is
wrong now and then: trained on clean transcripts alone, the model would trust a wrong word as much
as a right one. Each word is wrong with probability `rate`: under a grammar (GRID) the reader's
errors are other words the grammar allows in that place (a grammar-constrained beam search only
reads those), so the word becomes another of its slot; without one, a character of it is
substituted, dropped or doubled by a random letter. With probability `dropout` a clip gets no text
at all: the unconditional input the model falls back on (and classifier-free guidance uses).
"""

from __future__ import annotations

import numpy as np

from l2s.models.grammar import Grammar

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _misread_word(word: str, slot: tuple[str, ...] | None, rng: np.random.Generator) -> str:
    if slot is not None and len(slot) > 1:
        others = [w for w in slot if w != word]
        return others[int(rng.integers(len(others)))]
    i = int(rng.integers(len(word)))
    letter = LETTERS[int(rng.integers(len(LETTERS)))]
    edit = int(rng.integers(3))
    if edit == 0:
        return word[:i] + letter + word[i + 1 :]
    if edit == 1 and len(word) > 1:
        return word[:i] + word[i + 1 :]
    return word[:i] + letter + word[i:]


def _slot_of(grammar: Grammar | None, position: int, word: str) -> tuple[str, ...] | None:
    if grammar is None:
        return None
    slot = grammar.slots[0] if grammar.repeat else grammar.slots[position % len(grammar.slots)]
    return slot if word in slot else None


def noisy_text(
    text: str, rate: float, dropout: float, grammar: Grammar | None, rng: np.random.Generator
) -> str:
    """`text` with each word misread with probability `rate`; "" with probability `dropout`."""
    if not text or rng.random() < dropout:
        return ""
    words = text.split(" ")
    return " ".join(
        _misread_word(word, _slot_of(grammar, n, word), rng) if rng.random() < rate else word
        for n, word in enumerate(words)
    )
